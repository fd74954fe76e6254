package paths

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

var base = time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)

// key writes the attribute name of flow/metric at base+sec seconds.
func key(flow, metric string, sec float64) string {
	at := base.Add(time.Duration(sec * float64(time.Second)))
	return fmt.Sprintf("%sMetric_%s(%s)", flow, metric, at.Format(time.RFC3339Nano))
}

// show renders points in a stable, readable form.
func show(ps []flowmetrics.PathPoint) string {
	var out []string
	for _, p := range ps {
		s := p.Kind.String() + " "
		switch p.Kind {
		case flowmetrics.PathExit:
			s += p.Flow + "/" + p.Metric
		case flowmetrics.PathStep:
			s += fmt.Sprintf("%s/%s %gs", p.Flow, p.Metric, p.Seconds)
		case flowmetrics.PathTiming:
			s += fmt.Sprintf("%s %gs", p.Name, p.Seconds)
		case flowmetrics.PathFunnel:
			s += p.Name + " " + p.Step
		case flowmetrics.PathExperiment:
			s += p.Name + " " + p.Variant + " " + p.Step
		}
		s += fmt.Sprintf(" @%g", p.Time.Sub(base).Seconds())
		if p.Conversation != "c" {
			s += " conv=" + p.Conversation
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

type upper struct{}

func (upper) Map(f, m string) (string, string) {
	if f == "Big" {
		return "overflow", "overflow"
	}
	return f, m
}

func TestDerive(t *testing.T) {
	cfg := Config{
		Timings: []Timing{{Name: "ivr_to_agent", From: "IVR/Start", To: "Agent/Connected"}, {Name: "never", From: "IVR/Menu", To: "IVR/Start"}},
		Funnels: []Funnel{{Name: "main", Steps: []Step{"IVR/Start", "IVR/Menu", "Agent/Connected"}}},
		Experiments: []Experiment{{Name: "offer", Variants: []Variant{
			{Name: "A", Steps: []Step{"IVR/OfferA", "IVR/Yes"}},
			{Name: "B", Steps: []Step{"IVR/OfferB", "IVR/Yes"}},
		}}},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := New(cfg, upper{})
	tests := []struct {
		name string
		keys []string
		want []string
	}{
		{"no keys", nil, nil},
		{"not metric keys are ignored", []string{"AccountID", "XMetric_(bad)"}, nil},
		{"one metric: an exit, no timing",
			[]string{key("IVR", "Start", 0)},
			[]string{"exit IVR/Start @0", "funnel main IVR/Start @0"}},
		{"order is attribute time, not key order; repeats time from the first",
			[]string{key("IVR", "Menu", 30), key("IVR", "Start", 0), key("IVR", "Menu", 50), key("Agent", "Connected", 90.5)},
			[]string{
				"exit Agent/Connected @90.5", "exit IVR/Menu @50",
				"funnel main Agent/Connected @90.5", "funnel main IVR/Menu @30", "funnel main IVR/Start @0",
				"step IVR/Menu 30s @30",
				"timing ivr_to_agent 90.5s @90.5",
			}},
		{"a funnel step before the previous one does not count",
			[]string{key("IVR", "Menu", 0), key("IVR", "Start", 10)},
			[]string{"exit IVR/Start @10", "funnel main IVR/Start @10", "step IVR/Start 10s @10", "timing never 10s @10"}},
		{"variants",
			[]string{key("IVR", "OfferB", 0), key("IVR", "Yes", 5), key("IVR", "OfferA", 7)},
			[]string{"exit IVR/OfferA @7", "experiment offer A IVR/OfferA @7", "experiment offer B IVR/OfferB @0", "experiment offer B IVR/Yes @5",
				"step IVR/OfferA 7s @7", "step IVR/Yes 5s @5"}},
		{"folded pairs go to the overflow series",
			[]string{key("Big", "A", 0), key("Big", "B", 2)},
			[]string{"exit overflow/overflow @2", "step overflow/overflow 2s @2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := show(d.Derive(flowmetrics.ClosedPath{ConversationID: "c", Keys: tt.keys}))
			if want := strings.Join(tt.want, "\n"); got != want {
				t.Errorf("got\n%s\nwant\n%s", got, want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // "" valid, else a substring of the error
	}{
		{"defaults", Config{}, ""},
		{"idle not above grace", Config{Grace: time.Hour, IdleTimeout: time.Hour}, "idle_timeout (1h0m0s) must be longer than grace"},
		{"step without slash", Config{Funnels: []Funnel{{Name: "f", Steps: []Step{"IVRStart"}}}}, `funnels[0].steps[0]: step "IVRStart"`},
		{"duplicate names", Config{Funnels: []Funnel{{Name: "f", Steps: []Step{"A/B"}}, {Name: "f", Steps: []Step{"A/B"}}}}, `funnels[1].name "f": used twice`},
		{"one variant", Config{Experiments: []Experiment{{Name: "x", Variants: []Variant{{Name: "A", Steps: []Step{"A/B"}}}}}}, "experiments[0].variants: 1, want 2 to 10"},
		{"bad timing", Config{Timings: []Timing{{Name: "t", From: "A/B", To: "/B"}}}, "timings[0].to"},
		{"region with scheme", Config{GenesysRegion: "https://apps.mypurecloud.com"}, `genesys_region "https://apps.mypurecloud.com"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want valid", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// TestDeriveExitsAndStepsAtRandom compares the exits and step timings of
// random paths (few flows and metrics, so repeats and equal times are
// common; and one long path) with a truth computed here by the rules'
// plain reading, in the documented order: step timings in path order,
// then exits in the order their flows first appear.
func TestDeriveExitsAndStepsAtRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(14, 7))
	d := New(Config{}, nil)
	for n := range 500 {
		k := 1 + rng.IntN(12)
		if n == 0 {
			k = 3000
		}
		var keys []string
		for range k {
			keys = append(keys, key(fmt.Sprintf("F%d", rng.IntN(4)), fmt.Sprintf("M%d", rng.IntN(5)), float64(rng.IntN(20))/2))
		}
		got := d.Derive(flowmetrics.ClosedPath{ConversationID: "c", Keys: keys})
		want := exitsAndSteps(t, keys)
		if g, w := fmt.Sprint(got), fmt.Sprint(want); g != w {
			t.Fatalf("keys %q:\n got %s\nwant %s", keys, g, w)
		}
	}
}

// exitsAndSteps is the truth for TestDeriveExitsAndStepsAtRandom.
func exitsAndSteps(t *testing.T, keys []string) []flowmetrics.PathPoint {
	sorted := slices.Clone(keys)
	at := func(k string) time.Time {
		a, ok, err := genesys.ParseAttribute(k)
		if !ok || err != nil {
			t.Fatalf("key %q: %v", k, err)
		}
		return a.Time
	}
	sort.SliceStable(sorted, func(i, j int) bool {
		ti, tj := at(sorted[i]), at(sorted[j])
		return ti.Before(tj) || ti.Equal(tj) && sorted[i] < sorted[j]
	})
	var steps, exits []flowmetrics.PathPoint
	var flows []string
	first, last := map[string]genesys.Attribute{}, map[string]genesys.Attribute{}
	seen := map[[2]string]bool{}
	for _, k := range sorted {
		a, _, _ := genesys.ParseAttribute(k)
		f, ok := first[a.Flow]
		if !ok {
			first[a.Flow] = a
			flows = append(flows, a.Flow)
			f = a
		} else if !seen[[2]string{a.Flow, a.Metric}] {
			steps = append(steps, flowmetrics.PathPoint{Kind: flowmetrics.PathStep, Flow: a.Flow, Metric: a.Metric, Seconds: a.Time.Sub(f.Time).Seconds(), Time: a.Time, Conversation: "c"})
		}
		seen[[2]string{a.Flow, a.Metric}] = true
		last[a.Flow] = a
	}
	for _, fl := range flows {
		l := last[fl]
		exits = append(exits, flowmetrics.PathPoint{Kind: flowmetrics.PathExit, Flow: l.Flow, Metric: l.Metric, Time: l.Time, Conversation: "c"})
	}
	return append(steps, exits...)
}

// TestDeriveAllocations: a path of thousands of keys costs a few
// allocations, not some per key or per flow.
func TestDeriveAllocations(t *testing.T) {
	cfg := Config{Funnels: []Funnel{{Name: "main", Steps: []Step{"F0/M0", "F1/M1"}}}}
	d := New(cfg, nil)
	var keys []string
	for i := range 2000 {
		keys = append(keys, key(fmt.Sprintf("F%d", i%50), fmt.Sprintf("M%d", i%7), float64(i)))
	}
	cp := flowmetrics.ClosedPath{ConversationID: "c", Keys: keys}
	if n := testing.AllocsPerRun(5, func() { d.Derive(cp) }); n > 4 {
		t.Errorf("got %v allocations for %d keys, want at most 4", n, len(keys))
	}
}

func BenchmarkDerive(b *testing.B) {
	cfg := Config{
		Timings: []Timing{{Name: "ivr_to_agent", From: "IVR/Start", To: "Agent/Connected"}},
		Funnels: []Funnel{{Name: "main", Steps: []Step{"IVR/Start", "IVR/Menu", "Agent/Connected"}}},
	}
	d := New(cfg, nil)
	cp := flowmetrics.ClosedPath{ConversationID: "c", Keys: []string{
		key("IVR", "Menu", 30), key("IVR", "Start", 0), key("IVR", "Menu", 50), key("Agent", "Connected", 90.5), key("Agent", "Wrapup", 300),
	}}
	b.ReportAllocs()
	for b.Loop() {
		d.Derive(cp)
	}
}

// TestDeriveAtOnce: paths derived by several goroutines at once through
// one Deriver (as a store's close derives its parts), each with the
// memos of key names the Deriver keeps, give what a new Deriver gives
// each path alone; keys of many pairs, malformed ones among them.
func TestDeriveAtOnce(t *testing.T) {
	cfg := Config{Funnels: []Funnel{{Name: "main", Steps: []Step{"F0/M0", "F1/M1"}}}}
	rng := rand.New(rand.NewPCG(11, 12))
	var paths []flowmetrics.ClosedPath
	for i := range 400 {
		var keys []string
		for range 1 + rng.IntN(12) {
			keys = append(keys, key(fmt.Sprintf("F%d", rng.IntN(40)), fmt.Sprintf("M%d", rng.IntN(5)), float64(rng.IntN(600))))
		}
		if i%9 == 0 {
			keys = append(keys, "F0Metric_M0(soon)", "Été\x01Metric_M1(2026-11-20T09:31:50Z)")
		}
		paths = append(paths, flowmetrics.ClosedPath{ConversationID: fmt.Sprint("c", i), Keys: keys})
	}
	want := make([]string, len(paths))
	for i, cp := range paths {
		want[i] = show(New(cfg, nil).Derive(cp))
	}
	d := New(cfg, nil)
	got := make([]string, len(paths))
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := g; i < len(paths); i += 4 {
				got[i] = show(d.Derive(paths[i]))
			}
		})
	}
	wg.Wait()
	for i := range paths {
		if got[i] != want[i] {
			t.Errorf("path %d: got %s, want %s", i, got[i], want[i])
		}
	}
}
