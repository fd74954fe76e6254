package dashboard

import (
	"context"
	"fmt"
	"math"
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
