package otlp

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/paths"
)

var samplePaths = []flowmetrics.PathPoint{
	{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: t0.Add(time.Second), Conversation: "c1"},
	{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: t0.Add(2 * time.Second), Conversation: "c2"},
	{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 30, Time: t0, Conversation: "c1"},
	{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 0.25, Time: t0, Conversation: "c2"},
	{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 20000, Time: t0, Conversation: "c3"},
	{Kind: flowmetrics.PathTiming, Name: "ivr_to_agent", Seconds: 93.25, Time: t0, Conversation: "c1"},
	{Kind: flowmetrics.PathFunnel, Name: "callback", Step: "Main IVR/Entered", Time: t0, Conversation: "c1"},
	{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: "B", Step: "Callback/OfferB", Time: t0, Conversation: "c1"},
}

// metricsOf returns every metric the collector got, by name (the data
// points of all requests together).
func metricsOf(c *collector) map[string][]*metricpb.Metric {
	out := map[string][]*metricpb.Metric{}
	for _, req := range c.requests() {
		for _, rm := range req.ResourceMetrics {
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					out[m.Name] = append(out[m.Name], m)
				}
			}
		}
	}
	return out
}

// TestPathsExport: exits, funnels and experiments are monotonic delta
// sums of conversations, durations delta histograms in seconds with the
// default buckets, each with its attributes.
func TestPathsExport(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0.Add(5 * time.Second)}
	s := held(t, c, clk, Config{})
	ctx := context.Background()
	if err := s.SendPaths(ctx, samplePaths); err != nil {
		t.Fatal(err)
	}
	if len(c.requests()) != 0 {
		t.Fatal("sent before the watermark")
	}
	clk.Add(time.Minute)
	if err := deliver(ctx, s, nil); err != nil {
		t.Fatal(err)
	}
	ms := metricsOf(c)
	for _, tc := range []struct {
		name, unit string
		attrs      map[string]string
		value      int64
	}{
		{ExitName, PathUnit, map[string]string{"flow": "Main IVR", "metric": "MenuChosen"}, 2},
		{FunnelName, PathUnit, map[string]string{"funnel": "callback", "step": "Main IVR/Entered"}, 1},
		{ExperimentName, PathUnit, map[string]string{"experiment": "offer", "variant": "B", "step": "Callback/OfferB"}, 1},
	} {
		m := ms[tc.name]
		if len(m) != 1 || m[0].Unit != tc.unit || m[0].GetSum() == nil {
			t.Errorf("%s: got %v, want one sum of unit %s", tc.name, m, tc.unit)
			continue
		}
		sum := m[0].GetSum()
		if !sum.IsMonotonic || sum.AggregationTemporality != metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA {
			t.Errorf("%s: got monotonic=%v %v, want a monotonic delta sum", tc.name, sum.IsMonotonic, sum.AggregationTemporality)
		}
		dp := sum.DataPoints
		if len(dp) != 1 || dp[0].GetAsInt() != tc.value || !mapsEqual(attrs(dp[0].Attributes), tc.attrs) {
			t.Errorf("%s: got %v, want one point of %d with %v", tc.name, dp, tc.value, tc.attrs)
			continue
		}
		if start, end := time.Unix(0, int64(dp[0].StartTimeUnixNano)).UTC(), time.Unix(0, int64(dp[0].TimeUnixNano)).UTC(); !start.Equal(t0) || !end.Equal(t0.Add(pathWidth)) {
			t.Errorf("%s: window [%v, %v), want [%v, %v)", tc.name, start, end, t0, t0.Add(pathWidth))
		}
	}
	step := ms[StepName]
	if len(step) != 1 || step[0].Unit != "s" || step[0].GetHistogram() == nil {
		t.Fatalf("%s: got %v, want one histogram in s", StepName, step)
	}
	h := step[0].GetHistogram()
	if h.AggregationTemporality != metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA || len(h.DataPoints) != 1 {
		t.Fatalf("%s: got %v, want one delta point", StepName, h)
	}
	dp := h.DataPoints[0]
	wantCounts := make([]uint64, len(paths.DefaultDurationBuckets)+1)
	wantCounts[0]++                                              // 0.25 ≤ 1
	wantCounts[slices.Index(paths.DefaultDurationBuckets, 30)]++ // 30 is in (20, 30]
	wantCounts[len(wantCounts)-1]++                              // 20000 > 14400
	if dp.Count != 3 || dp.GetSum() != 20030.25 || dp.GetMin() != 0.25 || dp.GetMax() != 20000 ||
		!slices.Equal(dp.ExplicitBounds, paths.DefaultDurationBuckets) || !slices.Equal(dp.BucketCounts, wantCounts) {
		t.Errorf("%s: got count %d sum %v min %v max %v bounds %v counts %v, want 3, 20030.25, 0.25, 20000, %v, %v",
			StepName, dp.Count, dp.GetSum(), dp.GetMin(), dp.GetMax(), dp.ExplicitBounds, dp.BucketCounts, paths.DefaultDurationBuckets, wantCounts)
	}
	if a := attrs(dp.Attributes); a["flow"] != "Main IVR" || a["metric"] != "MenuChosen" {
		t.Errorf("%s attributes: got %v", StepName, a)
	}
	timing := ms[TimingName]
	if len(timing) != 1 || timing[0].GetHistogram() == nil || attrs(timing[0].GetHistogram().DataPoints[0].Attributes)["timing"] != "ivr_to_agent" {
		t.Errorf("%s: got %v", TimingName, timing)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestPathsWaitForTheCommit: windows Send closed are not sent by the
// SendPaths of the same batch (their closing is committed first, so a
// crash cannot send them with other values), and a SendPaths retried
// after a failed request counts its points once.
func TestPathsWaitForTheCommit(t *testing.T) {
	c := newCollector(t, reply{status: 503})
	clk := &fakeClock{now: t0.Add(time.Hour)}
	s := held(t, c, clk, Config{})
	ctx := context.Background()
	if err := s.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 1)}); err != nil { // closes t0 at once
		t.Fatal(err)
	}
	if err := s.SendPaths(ctx, samplePaths); err != nil {
		t.Fatal(err)
	}
	if n := len(c.requests()); n != 0 {
		t.Fatalf("got %d requests before the commit, want 0", n)
	}
	s.TakeState()
	// A path-only batch: its request fails (503), then it is sent again.
	more := []flowmetrics.PathPoint{{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: t0.Add(time.Hour), Conversation: "c9"}}
	if err := s.SendPaths(ctx, more); err == nil {
		t.Fatal("got nil, want the 503")
	}
	if err := s.SendPaths(ctx, more); err != nil {
		t.Fatal(err)
	}
	s.TakeState()
	clk.Add(2 * time.Hour)
	if err := deliver(ctx, s, nil); err != nil {
		t.Fatal(err)
	}
	var exits int64
	for i, req := range c.requests() {
		if i == 0 {
			continue // answered 503: not delivered
		}
		for _, m := range req.ResourceMetrics[0].ScopeMetrics[0].Metrics {
			if m.Name == ExitName {
				for _, dp := range m.GetSum().DataPoints {
					exits += dp.GetAsInt()
				}
			}
		}
	}
	if exits != 3 {
		t.Errorf("exits: got %d, want 3 (the retried batch counted once)", exits)
	}
}

// TestHistStateBound: the largest histogram stream (names at the limit,
// 50 buckets, the most open and closed windows, counts in the billions)
// fits one state value.
func TestHistStateBound(t *testing.T) {
	c := newCollector(t, reply{status: 503})
	clk := &fakeClock{now: t0}
	bounds := make([]float64, 50)
	for i := range bounds {
		bounds[i] = float64(i+1) * 1.5
	}
	s := held(t, c, clk, Config{Watermark: time.Nanosecond, DurationBuckets: bounds})
	name := strings.Repeat("<", maxIdentity/6-200)
	batch := func(from int) []flowmetrics.PathPoint {
		var ps []flowmetrics.PathPoint
		for i := from; i < from+maxHistOpen; i++ {
			for b := range bounds {
				ps = append(ps, flowmetrics.PathPoint{Kind: flowmetrics.PathTiming, Name: name, Seconds: bounds[b] * 1e5 / 1e5, Time: t0.Add(time.Duration(i) * pathWidth)})
			}
		}
		return ps
	}
	clk.Set(t0.Add(time.Duration(maxHistOpen)*pathWidth + time.Second))
	if err := s.SendPaths(context.Background(), batch(0)); err != nil { // all closed
		t.Fatal(err)
	}
	s.TakeState()
	if err := s.SendPaths(context.Background(), batch(maxHistOpen)); err == nil { // open; the send fails
		t.Fatal("got nil, want the 503")
	}
	for _, st := range s.ws.streams {
		// Counts in the billions: the widest numbers a window holds.
		for _, hs := range [][]hist{st.HOpen, st.HClosed} {
			for i := range hs {
				for b := range hs[i].B {
					hs[i].B[b] = 1 << 40
				}
				hs[i].N, hs[i].Sum, hs[i].Max = 51<<40, 1<<62, 1<<52
			}
		}
		if len(st.HClosed) != maxHistOpen || len(st.HOpen) != maxHistOpen {
			t.Fatalf("got %d closed and %d open windows, want %d each", len(st.HClosed), len(st.HOpen), maxHistOpen)
		}
		s.ws.dirty[st.key()] = true
	}
	for k, v := range s.TakeState() {
		if len(v) > flowmetrics.MaxStateValue {
			t.Errorf("state %s: %d bytes, want ≤ %d", k, len(v), flowmetrics.MaxStateValue)
		}
		t.Logf("largest histogram stream state: %d bytes", len(v))
	}
}

// TestBucketsChangeKeepsHeldWindows: windows counted before
// duration_buckets changed are sent with the bounds they were counted
// with; new ones get the new bounds.
func TestBucketsChangeKeepsHeldWindows(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0}
	ctx := context.Background()
	a := held(t, c, clk, Config{DurationBuckets: []float64{1, 10}})
	step := func(at time.Time, secs float64) []flowmetrics.PathPoint {
		return []flowmetrics.PathPoint{{Kind: flowmetrics.PathStep, Flow: "F", Metric: "M", Seconds: secs, Time: at}}
	}
	if err := a.SendPaths(ctx, step(t0, 5)); err != nil {
		t.Fatal(err)
	}
	state := map[string][]byte{}
	for k, v := range a.TakeState() {
		state[k] = v
	}
	b := held(t, c, clk, Config{DurationBuckets: []float64{2, 4, 8}})
	if err := b.Restore(ctx, state); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	if err := b.SendPaths(ctx, step(clk.Now(), 5)); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	if err := deliver(ctx, b, nil); err != nil {
		t.Fatal(err)
	}
	var got [][]float64
	var counts [][]uint64
	for _, m := range metricsOf(c)[StepName] {
		for _, dp := range m.GetHistogram().DataPoints {
			got = append(got, dp.ExplicitBounds)
			counts = append(counts, dp.BucketCounts)
		}
	}
	if len(got) != 2 || !slices.Equal(got[0], []float64{1, 10}) || !slices.Equal(got[1], []float64{2, 4, 8}) ||
		!slices.Equal(counts[0], []uint64{0, 1, 0}) || !slices.Equal(counts[1], []uint64{0, 0, 1, 0}) {
		t.Errorf("got bounds %v and counts %v, want [1 10] [0 1 0] then [2 4 8] [0 0 1 0]", got, counts)
	}
}

// TestPathsGolden keeps a whole request of path points, as canonical JSON.
func TestPathsGolden(t *testing.T) {
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
	t.Setenv("OTEL_SERVICE_NAME", "")
	c := newCollector(t)
	clk := &fakeClock{now: t0.Add(time.Hour)}
	s := newSink(t, Config{Endpoint: c.srv.URL, Now: clk.Now}, naming.Config{Tags: map[string]string{"env": "prod"}})
	if err := s.SendPaths(context.Background(), samplePaths); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil { // not restored: Close sends what it holds
		t.Fatal(err)
	}
	if len(c.requests()) != 1 {
		t.Fatalf("got %d requests, want 1", len(c.requests()))
	}
	js, err := protojson.Marshal(c.requests()[0])
	if err != nil {
		t.Fatal(err)
	}
	var compact, out bytes.Buffer
	json.Compact(&compact, js)
	json.Indent(&out, compact.Bytes(), "", "  ")
	out.WriteByte('\n')
	golden.Check(t, filepath.Join("testdata", "paths.golden.json"), out.Bytes())
}
