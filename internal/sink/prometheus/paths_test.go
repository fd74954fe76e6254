package prometheus

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

var at = time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)

func samplePaths() []flowmetrics.PathPoint {
	return []flowmetrics.PathPoint{
		{Kind: flowmetrics.PathExit, Flow: "IVR", Metric: "Menu", Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathExit, Flow: "IVR", Metric: "Menu", Time: at.Add(time.Minute), Conversation: "c2"},
		{Kind: flowmetrics.PathStep, Flow: "IVR", Metric: "Menu", Seconds: 1.5, Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathStep, Flow: "IVR", Metric: "Menu", Seconds: 400, Time: at, Conversation: "c2"},
		{Kind: flowmetrics.PathTiming, Name: "ivr_to_agent", Seconds: 20000, Time: at, Conversation: "c2"},
		{Kind: flowmetrics.PathFunnel, Name: "main", Step: "IVR/Start", Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: "B", Step: "IVR/OfferB", Time: at, Conversation: "c1"},
	}
}

func TestPathExposition(t *testing.T) {
	m := telemetry.New()
	reg := m.Registry
	s, err := New(Config{DurationBuckets: []float64{2, 600}}, sink.Deps{Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SendPaths(context.Background(), samplePaths()); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP genesys_flow_exit_total ` + pathKinds[flowmetrics.PathExit].help + `
# TYPE genesys_flow_exit_total counter
genesys_flow_exit_total{flow="IVR",metric="Menu"} 2
# HELP genesys_flow_step_seconds ` + pathKinds[flowmetrics.PathStep].help + `
# TYPE genesys_flow_step_seconds histogram
genesys_flow_step_seconds_bucket{flow="IVR",metric="Menu",le="2"} 1
genesys_flow_step_seconds_bucket{flow="IVR",metric="Menu",le="600"} 2
genesys_flow_step_seconds_bucket{flow="IVR",metric="Menu",le="+Inf"} 2
genesys_flow_step_seconds_sum{flow="IVR",metric="Menu"} 401.5
genesys_flow_step_seconds_count{flow="IVR",metric="Menu"} 2
# HELP genesys_flow_timing_seconds ` + pathKinds[flowmetrics.PathTiming].help + `
# TYPE genesys_flow_timing_seconds histogram
genesys_flow_timing_seconds_bucket{timing="ivr_to_agent",le="2"} 0
genesys_flow_timing_seconds_bucket{timing="ivr_to_agent",le="600"} 0
genesys_flow_timing_seconds_bucket{timing="ivr_to_agent",le="+Inf"} 1
genesys_flow_timing_seconds_sum{timing="ivr_to_agent"} 20000
genesys_flow_timing_seconds_count{timing="ivr_to_agent"} 1
# HELP genesys_flow_funnel_total ` + pathKinds[flowmetrics.PathFunnel].help + `
# TYPE genesys_flow_funnel_total counter
genesys_flow_funnel_total{funnel="main",step="IVR/Start"} 1
# HELP genesys_flow_experiment_total ` + pathKinds[flowmetrics.PathExperiment].help + `
# TYPE genesys_flow_experiment_total counter
genesys_flow_experiment_total{experiment="offer",step="IVR/OfferB",variant="B"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), ExitName, StepName, TimingName, FunnelName, ExperimentName); err != nil {
		t.Error(err)
	}

	// OpenMetrics carries the latest conversation as the exemplar.
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	wantLine := `genesys_flow_exit_total{flow="IVR",metric="Menu"} 2.0 # {conversation_id="c2"} 1.0 1.79516526e+09` // c2, the latest, at 09:01
	if !strings.Contains(string(body), wantLine) {
		t.Errorf("OpenMetrics exposition lacks %q:\n%s", wantLine, body)
	}
}

// After a restart the path series come back from the sink state plus the
// points still pending, and the pending points add nothing when they are
// delivered again.
func TestPathsResumeAfterRestart(t *testing.T) {
	ctx := context.Background()
	st := memstore.New(store.Options{})
	if err := st.Register(ctx, []string{"prometheus"}); err != nil {
		t.Fatal(err)
	}
	s1, err := New(Config{}, sink.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	pts := samplePaths()
	s1.SendPaths(ctx, pts[:3])
	state := map[string][]byte{}
	for k, v := range s1.TakeState() {
		state[k] = v
	}
	// pts[3:] were sent but not committed: they are pending in the store.
	// (memstore has no ClosePaths without paths; the entry is put in by
	// a path store below.)
	ps := memstore.New(store.Options{Paths: &flowmetrics.PathOptions{Grace: time.Second, Idle: time.Hour}})
	if err := ps.Register(ctx, []string{"prometheus"}); err != nil {
		t.Fatal(err)
	}
	ps.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c2", Ended: true}})
	if _, err := ps.ClosePaths(ctx, time.Now().Add(time.Minute), 0, func(flowmetrics.ClosedPath) []flowmetrics.PathPoint { return pts[3:] }); err != nil {
		t.Fatal(err)
	}
	m2 := telemetry.New()
	reg := m2.Registry
	s2, err := New(Config{}, sink.Deps{Metrics: m2, Store: ps})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Restore(ctx, state); err != nil {
		t.Fatal(err)
	}
	before, _ := testutil.GatherAndCount(reg, StepName)
	s2.SendPaths(ctx, pts[3:])
	if got := testutil.ToFloat64(collectorFor(s2, flowmetrics.PathExit)); got != 2 {
		t.Errorf("exits after the restart and the resend: got %v, want 2", got)
	}
	after, _ := testutil.GatherAndCount(reg, StepName)
	if before != after || after != 1 {
		t.Errorf("step series: %d before, %d after the resend, want 1 and 1", before, after)
	}
	if v := s2.paths.shown[pathSeries{flowmetrics.PathStep, "IVR\x00Menu"}]; v == nil || v.Count != 2 || v.Sum != 401.5 {
		t.Errorf("step histogram: got %+v, want 2 observations summing to 401.5", v)
	}
	// What the state keeps is what was delivered: everything now.
	u := s2.TakeState()
	if v := s2.paths.delivered[pathSeries{flowmetrics.PathStep, "IVR\x00Menu"}]; v == nil || v.Count != 2 || len(u) == 0 {
		t.Errorf("delivered step histogram: got %+v (state update of %d keys), want 2 observations", v, len(u))
	}
}

// collectorFor gathers only the series of one kind, for testutil.ToFloat64.
func collectorFor(s *Sink, k flowmetrics.PathKind) prometheus.Collector {
	return kindCollector{s.paths, k}
}

type kindCollector struct {
	pm *pathMetrics
	k  flowmetrics.PathKind
}

func (c kindCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.pm.descs[c.k] }
func (c kindCollector) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric, 100)
	c.pm.Collect(all)
	close(all)
	for m := range all {
		if m.Desc() == c.pm.descs[c.k] {
			ch <- m
		}
	}
}

func TestDurationBucketsValidate(t *testing.T) {
	for _, b := range [][]float64{{2, 1}, {1, 1}} {
		if err := (Config{DurationBuckets: b}).Validate(); err == nil {
			t.Errorf("buckets %v: got valid, want an error", b)
		}
	}
	if err := (Config{Name: ExitName}).Validate(); err == nil {
		t.Errorf("a counter named like a path series: got valid")
	}
}
