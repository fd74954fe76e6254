package datadog

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// The paths of the tests below: two flows, a timing, a funnel and an A/B
// experiment.
var testPaths = paths.Config{
	Timings: []paths.Timing{{Name: "ivr_to_agent", From: "Main IVR/Start", To: "Agent/Connected"}},
	Funnels: []paths.Funnel{{Name: "main", Steps: []paths.Step{"Main IVR/Start", "Main IVR/Menu", "Agent/Connected"}}},
	Experiments: []paths.Experiment{{Name: "offer", Variants: []paths.Variant{
		{Name: "A", Steps: []paths.Step{"Main IVR/OfferA", "Main IVR/AcceptA"}},
		{Name: "B", Steps: []paths.Step{"Main IVR/OfferB", "Main IVR/AcceptB"}},
	}}},
}

type convStep struct {
	flow, metric string
	at           time.Time
}

// testConv is a conversation of the path corpus: its steps in time order.
type testConv struct {
	id    string
	steps []convStep
}

// pathCorpus makes n conversations from number first on, stamped from at
// on (whole milliseconds, so durations survive the attribute names
// exactly), with drop-outs at every step.
func pathCorpus(first, n int, at time.Time) []testConv {
	var out []testConv
	for i := first; i < first+n; i++ {
		c := testConv{id: fmt.Sprintf("conv-%04d", i)}
		t := at.Add(time.Duration(i-first) * 3 * time.Second)
		add := func(flow, metric string, after time.Duration) {
			t = t.Add(after)
			c.steps = append(c.steps, convStep{flow, metric, t})
		}
		add("Main IVR", "Start", 0)
		if i%5 != 0 {
			add("Main IVR", "Menu", time.Duration(2000+i%7*1500)*time.Millisecond)
			if i%3 != 0 {
				v := []string{"A", "B"}[i%2]
				add("Main IVR", "Offer"+v, 1250*time.Millisecond)
				if i%4 == 0 || v == "B" && i%3 == 1 {
					add("Main IVR", "Accept"+v, 2*time.Second)
				}
			}
			if i%3 != 1 {
				add("Agent", "Queued", 500*time.Millisecond)
				if i%2 == 0 {
					add("Agent", "Connected", time.Duration(5000+i%11*13500)*time.Millisecond)
				}
			}
		}
		out = append(out, c)
	}
	return out
}

// records are each conversation's attribute events (each carrying every
// attribute so far, as Genesys sends them) and its customer.end, every one
// delivered twice.
func (c testConv) records() []genesys.Record {
	var recs []genesys.Record
	attrs := map[string]string{}
	for _, s := range c.steps {
		attrs[fmt.Sprintf("%sMetric_%s(%s)", s.flow, s.metric, s.at.Format("2006-01-02T15:04:05.000Z"))] = ""
		rec := genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: c.id, Attributes: maps(attrs)}}
		recs = append(recs, rec, rec)
	}
	end := genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: c.id, Ended: true}}
	return append(recs, end, end)
}

func maps(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// seriesKey is a path series as Datadog stores it: the metric and its
// sorted tags.
type seriesKey struct{ metric, tags string }

func keyOf(metric string, tags ...string) seriesKey {
	var out []string
	for i := 0; i+1 < len(tags); i += 2 {
		out = append(out, Tag(tags[i], tags[i+1]))
	}
	sort.Strings(out)
	return seriesKey{metric, strings.Join(out, ",")}
}

// pathTruth is what Datadog must hold per path series: conversations
// counted (exits, funnels, experiments) and durations (step timings,
// timings), computed from the corpus's own model, not by the deriver.
type pathTruth struct {
	counts map[seriesKey]float64
	durs   map[seriesKey][]float64
}

func truthOf(convs []testConv) pathTruth {
	tr := pathTruth{counts: map[seriesKey]float64{}, durs: map[seriesKey][]float64{}}
	for _, c := range convs {
		first, last := map[string]time.Time{}, map[string]string{}
		reached := map[string]time.Time{}
		for _, s := range c.steps { // in time order, every metric once
			if f, ok := first[s.flow]; ok {
				k := keyOf(StepMetric, "flow", s.flow, "metric", s.metric)
				tr.durs[k] = append(tr.durs[k], s.at.Sub(f).Seconds())
			} else {
				first[s.flow] = s.at
			}
			last[s.flow] = s.metric
			reached[s.flow+"/"+s.metric] = s.at
		}
		for flow, metric := range last {
			tr.counts[keyOf(ExitMetric, "flow", flow, "metric", metric)]++
		}
		if to, ok := reached["Agent/Connected"]; ok {
			k := keyOf(TimingMetric, "timing", "ivr_to_agent")
			tr.durs[k] = append(tr.durs[k], to.Sub(reached["Main IVR/Start"]).Seconds())
		}
		for _, step := range []string{"Main IVR/Start", "Main IVR/Menu", "Agent/Connected"} {
			if _, ok := reached[step]; !ok {
				break
			}
			tr.counts[keyOf(FunnelMetric, "funnel", "main", "step", step)]++
		}
		for _, v := range []string{"A", "B"} {
			for _, step := range []string{"Main IVR/Offer" + v, "Main IVR/Accept" + v} {
				if _, ok := reached[step]; !ok {
					break
				}
				tr.counts[keyOf(ExperimentMetric, "experiment", "offer", "variant", v, "step", step)]++
			}
		}
	}
	for _, v := range tr.durs {
		sort.Float64s(v)
	}
	return tr
}

// add adds o to tr; durations only when dist (what a resend adds to
// distributions, and not to running totals).
func (tr pathTruth) add(o pathTruth, counts bool) {
	if counts {
		for k, v := range o.counts {
			tr.counts[k] += v
		}
	}
	for k, v := range o.durs {
		tr.durs[k] = append(tr.durs[k], v...)
		sort.Float64s(tr.durs[k])
	}
}

// pathsHeld reconstructs from the fake what Datadog would show for the path
// series: for a count, the sum of the last value of each series-second
// (count mode) plus the number of distribution values (distribution mode);
// for a duration, every value of the distribution.
func (f *fakeIntake) pathsHeld() pathTruth {
	f.mu.Lock()
	defer f.mu.Unlock()
	got := pathTruth{counts: map[seriesKey]float64{}, durs: map[seriesKey][]float64{}}
	isPath := func(m string) bool {
		return m == ExitMetric || m == FunnelMetric || m == ExperimentMetric || m == StepMetric || m == TimingMetric
	}
	for k, v := range f.store {
		if isPath(k.metric) {
			got.counts[seriesKey{k.metric, k.tags}] += v
		}
	}
	for k, vs := range f.dist {
		sk := seriesKey{k.metric, k.tags}
		switch {
		case k.metric == StepMetric || k.metric == TimingMetric:
			got.durs[sk] = append(got.durs[sk], vs...)
		case isPath(k.metric):
			for _, v := range vs {
				got.counts[sk] += v
			}
		}
	}
	for _, v := range got.durs {
		sort.Float64s(v)
	}
	return got
}

func comparePaths(t *testing.T, got, want pathTruth) {
	t.Helper()
	for k := range unionKeys(got.counts, want.counts) {
		if got.counts[k] != want.counts[k] {
			t.Errorf("%s{%s}: Datadog holds %v conversations, want %v", k.metric, k.tags, got.counts[k], want.counts[k])
		}
	}
	for k := range unionKeys(got.durs, want.durs) {
		if !slices.EqualFunc(got.durs[k], want.durs[k], func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }) {
			t.Errorf("%s{%s}: Datadog holds %d values %v, want %d %v", k.metric, k.tags, len(got.durs[k]), got.durs[k], len(want.durs[k]), want.durs[k])
		}
	}
}

func unionKeys[V any](a, b map[seriesKey]V) map[seriesKey]bool {
	out := map[seriesKey]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// TestPathsExactByDatadogsRule runs the derived points of closed paths
// through the real pipeline, deriver and Pebble store into the fake intake,
// in both modes, over five processes sharing one data directory: every
// event delivered twice, a backend answering 503, 429 and 413, a clean
// restart, a kill between Datadog's 202 and the commit, and conversations
// closed by the idle timeout. It reconstructs what Datadog stores (the
// last count per series and second; every distribution value) and requires
// each conversation to be counted once per series, and each duration to be
// one value, except in the one documented duplicate window: the batch
// resent after the kill counts twice where it is a distribution (every
// point of distribution mode, durations in count mode), and not where it
// is a running total.
func TestPathsExactByDatadogsRule(t *testing.T) {
	for _, mode := range []Mode{Count, Distribution} {
		t.Run(string(mode), func(t *testing.T) { testPathsExact(t, mode) })
	}
}

func testPathsExact(t *testing.T, mode Mode) {
	dir := t.TempDir()
	fake := newFakeIntake(t, testKey, fixedClock())
	deriver := paths.New(testPaths, nil)
	base := t0.Add(-20 * time.Minute)
	type round struct {
		name      string
		convs     []testConv
		ended     bool  // their customer.end arrives (else the idle timeout closes them)
		failAfter int64 // -1: the commit of the paths' batch is killed
		script    []scripted
	}
	retries := []scripted{
		{status: http.StatusServiceUnavailable},
		{status: http.StatusTooManyRequests, header: http.Header{"Retry-After": {"1"}}},
		{status: http.StatusRequestEntityTooLarge},
		{status: http.StatusServiceUnavailable},
	}
	rounds := []round{
		{name: "first process", convs: pathCorpus(0, 20, base), ended: true},
		{name: "503, 429 and 413", convs: pathCorpus(20, 20, base.Add(time.Minute)), ended: true, script: retries},
		{name: "killed between 202 and commit", convs: pathCorpus(40, 15, base.Add(2*time.Minute)), ended: true, failAfter: -1},
		{name: "restart resends", convs: pathCorpus(55, 10, base.Add(3*time.Minute)), ended: true},
		{name: "idle timeout", convs: pathCorpus(65, 10, base.Add(4*time.Minute))},
	}
	var all []testConv
	var resent pathTruth
	for _, r := range rounds {
		all = append(all, r.convs...)
		if r.failAfter < 0 {
			resent = truthOf(r.convs)
		}
		ps, err := pebblestore.Open(dir, store.Options{Now: fixedClock(), Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}}, nil)
		if err != nil {
			t.Fatalf("%s: open: %v", r.name, err)
		}
		cs := &crashStore{Store: ps}
		sink := newSinkOn(t, fake, Config{Mode: mode, MaxRetries: 1})
		p := pipeline.New(cs, []flowmetrics.Sink{sink}, pipeline.Config{Now: fixedClock(), Derive: deriver.Derive, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond, CacheConversations: -1}, telemetry.New(), slog.New(slog.DiscardHandler))
		if err := p.Register(ctx(t)); err != nil {
			t.Fatalf("%s: register: %v", r.name, err)
		}
		var recs []genesys.Record
		for _, c := range r.convs {
			cr := c.records()
			if !r.ended {
				cr = cr[:len(cr)-2]
			}
			recs = append(recs, cr...)
		}
		if _, err := p.Ingest(ctx(t), recs); err != nil {
			t.Fatalf("%s: ingest: %v", r.name, err)
		}
		if err := p.Flush(ctx(t)); err != nil {
			t.Fatalf("%s: flush of the occurrences: %v", r.name, err)
		}
		asOf := t0.Add(10 * time.Minute) // past the grace
		if !r.ended {
			asOf = t0.Add(2 * time.Hour) // past the idle timeout
		}
		if n, err := p.ClosePaths(ctx(t), asOf, 0); err != nil || n != len(r.convs) {
			t.Fatalf("%s: closed %d paths (%v), want %d", r.name, n, err, len(r.convs))
		}
		fake.do(func() { fake.script = r.script })
		if r.failAfter < 0 {
			cs.failAfter = cs.acks.Load() // every commit from now on fails

			short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			if err := p.Flush(short); err == nil {
				t.Fatalf("%s: flush: got nil, want the kill's error", r.name)
			}
			cancel()
			sink.Close(context.Background()) // killed: no clean stop
		} else {
			if err := p.Flush(ctx(t)); err != nil {
				t.Fatalf("%s: flush of the paths: %v", r.name, err)
			}
			if err := p.Close(ctx(t)); err != nil {
				t.Fatalf("%s: close: %v", r.name, err)
			}
		}
		if err := ps.Close(); err != nil {
			t.Fatal(err)
		}
		fake.do(func() {
			if len(fake.script) > 0 {
				t.Errorf("%s: %d scripted answers not used", r.name, len(fake.script))
			}
		})
	}
	fake.do(func() {
		for _, v := range fake.violations {
			t.Errorf("contract violation: %s", v)
		}
		for _, l := range fake.lowered {
			t.Errorf("a total Datadog held was lowered: %s", l)
		}
		if fake.outOfWindow > 0 {
			t.Errorf("%d points outside Datadog's window", fake.outOfWindow)
		}
	})
	want := truthOf(all)
	want.add(resent, mode == Distribution) // the one duplicate window
	comparePaths(t, fake.pathsHeld(), want)
	n := 0
	for _, v := range want.counts {
		n += int(v)
	}
	t.Logf("%s mode: %d conversations over %d processes, %d path series, %d counted in exits, funnel and experiment steps", mode, len(all), len(rounds), len(want.counts)+len(want.durs), n)
}

// TestPathsGoldenPayload pins the bodies of a path batch in each mode:
// count mode sends exits, funnels and experiments to /api/v2/series and
// durations to /api/v1/distribution_points; distribution mode sends every
// one to /api/v1/distribution_points.
func TestPathsGoldenPayload(t *testing.T) {
	at := t0.Add(-time.Minute)
	points := []flowmetrics.PathPoint{
		{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: at.Add(2 * time.Second), Conversation: "c2"},
		{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 30, Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 12.375, Time: at.Add(2 * time.Second), Conversation: "c2"},
		{Kind: flowmetrics.PathTiming, Name: "ivr_to_agent", Seconds: 93.25, Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathFunnel, Name: "callback", Step: "Callback/Offered", Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathExperiment, Name: "callback_offer", Variant: "B", Step: "Callback/AcceptedB", Time: at, Conversation: "c1"},
	}
	for _, mode := range []Mode{Count, Distribution} {
		t.Run(string(mode), func(t *testing.T) {
			h := newHarness(t, Config{Mode: mode}, namingWithEnv())
			if err := h.sink.SendPaths(ctx(t), points); err != nil {
				t.Fatal(err)
			}
			var bodies []string
			h.fake.do(func() {
				for _, b := range h.fake.bodies {
					bodies = append(bodies, string(b))
				}
			})
			golden.Check(t, "testdata/paths-"+string(mode)+".golden", []byte(strings.Join(bodies, "\n")+"\n"))
			h.fake.checkClean()
		})
	}
}

// TestPathsCountModeTotals: exits of one series and bucket delivered in two
// batches add up to a running total (Datadog keeps the last value), and the
// total survives a restart through the sink's state.
func TestPathsCountModeTotals(t *testing.T) {
	h := newHarness(t, Config{}, namingWithEnv())
	at := t0.Add(-time.Minute)
	exit := func(conv string) flowmetrics.PathPoint {
		return flowmetrics.PathPoint{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: at, Conversation: conv}
	}
	if err := h.sink.Restore(ctx(t), map[string][]byte{}); err != nil {
		t.Fatal(err)
	}
	if err := h.sink.SendPaths(ctx(t), []flowmetrics.PathPoint{exit("c1"), exit("c2")}); err != nil {
		t.Fatal(err)
	}
	state := map[string][]byte{}
	for k, v := range h.sink.TakeState() {
		state[k] = v
	}
	// A new process, restored from the committed state.
	next, err := New(Config{URL: h.fake.srv.URL, APIKeyEnv: "FLOWMETRICS_TEST_DD_KEY", Now: fixedClock()}, sink.Deps{Namer: naming.New(namingWithEnv()), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close(context.Background())
	if err := next.Restore(ctx(t), state); err != nil {
		t.Fatal(err)
	}
	if err := next.SendPaths(ctx(t), []flowmetrics.PathPoint{exit("c3")}); err != nil {
		t.Fatal(err)
	}
	got := h.fake.pathsHeld().counts[keyOf(ExitMetric, "flow", "Main IVR", "metric", "MenuChosen", "env", "prod")]
	if got != 3 {
		t.Errorf("exits held by Datadog: got %v, want 3 (the running total over both processes)", got)
	}
}

func namingWithEnv() naming.Config { return naming.Config{Tags: map[string]string{"env": "prod"}} }
