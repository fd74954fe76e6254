package dashboard

import (
	"context"
	"fmt"
	"maps"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

func TestPathsView(t *testing.T) {
	r := NewRecorder(nil)
	r.SetGenesysRegion("mypurecloud.de")
	at := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	var pts []flowmetrics.PathPoint
	add := func(n int, p flowmetrics.PathPoint) {
		for i := range n {
			p.Conversation = fmt.Sprintf("c-%s-%d", p.Metric+p.Step+p.Variant, i)
			p.Time = at.Add(time.Duration(i) * time.Second)
			pts = append(pts, p)
		}
	}
	add(30, flowmetrics.PathPoint{Kind: flowmetrics.PathExit, Flow: "IVR", Metric: "Menu"})
	add(10, flowmetrics.PathPoint{Kind: flowmetrics.PathExit, Flow: "IVR", Metric: "Start"})
	for i := 1; i <= 100; i++ {
		pts = append(pts, flowmetrics.PathPoint{Kind: flowmetrics.PathStep, Flow: "IVR", Metric: "Menu", Seconds: float64(i)})
	}
	add(40, flowmetrics.PathPoint{Kind: flowmetrics.PathFunnel, Name: "main", Step: "IVR/Start"})
	add(30, flowmetrics.PathPoint{Kind: flowmetrics.PathFunnel, Name: "main", Step: "IVR/Menu"})
	add(400, flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: "A", Step: "IVR/OfferA"})
	add(120, flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: "A", Step: "IVR/AcceptA"})
	add(400, flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: "B", Step: "IVR/OfferB"})
	add(180, flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: "B", Step: "IVR/AcceptB"})
	add(8, flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "small", Variant: "A", Step: "X/A"})
	add(2, flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "small", Variant: "A", Step: "X/Yes"})
	add(9, flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "small", Variant: "B", Step: "X/B"})
	add(5, flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "small", Variant: "B", Step: "X/Yes"})
	if err := r.SendPaths(context.Background(), pts); err != nil {
		t.Fatal(err)
	}
	p := r.ReadPaths()
	if len(p.Flows) != 1 || p.Flows[0].Conversations != 40 || p.Flows[0].Exits[0].Metric != "Menu" || p.Flows[0].Exits[0].Share != 0.75 {
		t.Fatalf("flows: got %+v, want IVR with 40 conversations, 75 %% leaving at Menu", p.Flows)
	}
	ex := p.Flows[0].Exits[0].Examples
	if len(ex) != keepExamples || ex[0].ID != "c-Menu-29" || ex[0].URL != "https://apps.mypurecloud.de/directory/#/analytics/interactions/c-Menu-29/admin" {
		t.Errorf("examples: got %+v, want the %d latest, newest first, linked", ex, keepExamples)
	}
	if s := p.Flows[0].Steps[0]; s.P50 != 50 || s.P90 != 90 || s.P99 != 99 || s.Count != 100 {
		t.Errorf("step timing quantiles: got %+v, want p50 50, p90 90, p99 99 of 1…100", s)
	}
	if f := p.Funnels[0]; f.Steps[0].Step != "IVR/Start" || f.Steps[1].Conversion != 0.75 {
		t.Errorf("funnel: got %+v, want Start then Menu at 75 %%", f)
	}
	offer, small := p.Experiments[0], p.Experiments[1]
	a, b := offer.Variants[0], offer.Variants[1]
	if a.Rate != 0.3 || b.Rate != 0.45 || !strings.HasPrefix(offer.Verdict, "B converts better than A (p = ") || offer.P == nil || *offer.P > 0.001 {
		t.Errorf("offer: got %+v", offer)
	}
	// Wilson interval of 120 of 400, computed by hand: 0.2572 … 0.3466.
	if math.Abs(a.Low-0.2572) > 0.0005 || math.Abs(a.High-0.3466) > 0.0005 {
		t.Errorf("A's 95 %% interval: got %.4f … %.4f, want 0.2572 … 0.3466", a.Low, a.High)
	}
	if small.Verdict != "too few conversations to tell" || small.P != nil {
		t.Errorf("small: got %q, want too few to tell", small.Verdict)
	}
}

func TestCompareNoDifference(t *testing.T) {
	v, p := compare([]PathVariant{{Name: "A", Entered: 200, Converted: 60, Rate: 0.3}, {Name: "B", Entered: 200, Converted: 64, Rate: 0.32}})
	if p == nil || *p < 0.05 || !strings.HasPrefix(v, "no difference beyond chance") {
		t.Errorf("got %q (p %v), want no difference", v, p)
	}
}

// TestPathsRestore: the paths view is the same after a restart (a new
// Recorder restored from the committed sink state), and goes on from there;
// a batch rewrites only the series and duration chunks it changed.
func TestPathsRestore(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: t0}
	r := NewRecorder(c.Now)
	r.SetGenesysRegion("mypurecloud.de")
	st := store{}
	for i := range 1500 {
		c.Set(t0.Add(time.Duration(i) * time.Second))
		conv := fmt.Sprintf("c-%d", i)
		at := c.Now()
		pts := []flowmetrics.PathPoint{
			{Kind: flowmetrics.PathExit, Flow: "IVR", Metric: []string{"Menu", "Start", "Agent"}[i%3], Time: at, Conversation: conv},
			{Kind: flowmetrics.PathStep, Flow: "IVR", Metric: "Menu", Seconds: float64(i%97) + 0.25, Time: at, Conversation: conv},
			{Kind: flowmetrics.PathTiming, Name: "ivr_to_agent", Seconds: float64(i), Time: at, Conversation: conv},
			{Kind: flowmetrics.PathFunnel, Name: "main", Step: "IVR/Start", Time: at, Conversation: conv},
			{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: []string{"A", "B"}[i%2], Step: "IVR/Offer", Time: at, Conversation: conv},
		}
		if i%3 == 0 {
			pts = append(pts, flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: []string{"A", "B"}[i%2], Step: "IVR/Accept", Time: at, Conversation: conv})
		}
		r.SendPaths(ctx, pts)
		u := r.TakeState()
		if i > 0 && len(u) > 8 {
			t.Fatalf("batch %d: %d state keys changed, want at most 8 (the series it touched, one chunk each)", i, len(u))
		}
		st.apply(t, u)
	}
	if u := r.TakeState(); u != nil {
		t.Errorf("TakeState with nothing new: got %d keys, want nil", len(u))
	}
	c.Set(t0.Add(2 * time.Hour))
	r2 := NewRecorder(c.Now)
	r2.SetGenesysRegion("mypurecloud.de")
	if err := r2.Restore(ctx, maps.Clone(st)); err != nil {
		t.Fatal(err)
	}
	want, got := r.ReadPaths(), r2.ReadPaths()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("paths after restore:\ngot  %+v\nwant %+v", got, want)
	}
	if !got.Since.Equal(t0) || len(got.Flows) != 1 || got.Flows[0].Conversations != 1500 {
		t.Errorf("after restore: since %v, flows %+v; want since %v and 1500 conversations", got.Since, got.Flows, t0)
	}
	// A restored Recorder goes on from there.
	r2.SendPaths(ctx, []flowmetrics.PathPoint{{Kind: flowmetrics.PathExit, Flow: "IVR", Metric: "Menu", Time: c.Now(), Conversation: "after"}})
	st.apply(t, r2.TakeState())
	r3 := NewRecorder(c.Now)
	r3.Restore(ctx, st)
	p3 := r3.ReadPaths()
	if n := p3.Flows[0].Conversations; n != 1501 {
		t.Errorf("conversations after a second restart: got %d, want 1501", n)
	}
	if e := p3.Flows[0].Exits[0]; e.Metric != "Menu" || e.Examples[0].ID != "after" {
		t.Errorf("top exit after a second restart: got %+v, want Menu with conversation \"after\" first", e)
	}
}

// TestPathsRestoreSkipsBadState: unreadable path keys are skipped and
// deleted, the rest is restored.
func TestPathsRestoreSkipsBadState(t *testing.T) {
	ctx := context.Background()
	r := NewRecorder(nil)
	r.SendPaths(ctx, []flowmetrics.PathPoint{{Kind: flowmetrics.PathStep, Flow: "F", Metric: "M", Seconds: 3, Conversation: "c"}})
	st := store{}
	st.apply(t, r.TakeState())
	st["p/0000000000000000"] = []byte(`{"kind":1,"flow":"X","count":1}`) // id does not match
	st["q/0000000000000000/0"] = []byte{1, 2, 3}
	st["ps"] = []byte("yesterday")
	r2 := NewRecorder(nil)
	r2.Restore(ctx, maps.Clone(st))
	if p := r2.ReadPaths(); len(p.Flows) != 1 || p.Flows[0].Steps[0].P50 != 3 {
		t.Errorf("got %+v, want F/M's step of 3 s", p.Flows)
	}
	u := r2.TakeState()
	for _, k := range []string{"p/0000000000000000", "q/0000000000000000/0", "ps"} {
		if v, ok := u[k]; !ok || v != nil {
			t.Errorf("bad key %s: got %q (present %v), want deleted", k, v, ok)
		}
	}
}
