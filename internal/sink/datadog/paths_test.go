package datadog

import (
	"context"
	"log/slog"
	"net/http"
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
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// ddSeries is a path series as Datadog stores it: the metric and its sorted
// tags (no static tags).
func ddSeries(p flowmetrics.PathPoint) string {
	name, tags := PathSeries(p)
	var out []string
	for _, t := range tags {
		out = append(out, Tag(t.Key, t.Value))
	}
	sort.Strings(out)
	return name + "{" + strings.Join(out, ",") + "}"
}

// pathsHeld reconstructs from the fake what Datadog would show for the path
// series: for a count, the sum of the last value of each series-second
// (count mode) plus the number of distribution values (distribution mode);
// for a duration, every value of the distribution.
func pathsHeld(f *datadogtest.Intake) (counts map[string]float64, durs map[string][]float64) {
	f.Lock()
	defer f.Unlock()
	counts, durs = map[string]float64{}, map[string][]float64{}
	isPath := func(m string) bool {
		return m == ExitMetric || m == FunnelMetric || m == ExperimentMetric || m == StepMetric || m == TimingMetric
	}
	for k, v := range f.Store {
		if isPath(k.Metric) {
			counts[k.Metric+"{"+k.Tags+"}"] += v
		}
	}
	for k, vs := range f.Dist {
		sk := k.Metric + "{" + k.Tags + "}"
		switch {
		case k.Metric == StepMetric || k.Metric == TimingMetric:
			durs[sk] = append(durs[sk], vs...)
		case isPath(k.Metric):
			for _, v := range vs {
				counts[sk] += v
			}
		}
	}
	return counts, durs
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
	fake := datadogtest.New(t, testKey, fixedClock())
	deriver := paths.New(sinktest.PathsConfig, nil)
	base := t0.Add(-20 * time.Minute)
	type round struct {
		name      string
		convs     []sinktest.Conv
		ended     bool  // their customer.end arrives (else the idle timeout closes them)
		failAfter int64 // -1: the commit of the paths' batch is killed
		script    []datadogtest.Response
	}
	retries := []datadogtest.Response{
		{Status: http.StatusServiceUnavailable},
		{Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"1"}}},
		{Status: http.StatusRequestEntityTooLarge},
		{Status: http.StatusServiceUnavailable},
	}
	rounds := []round{
		{name: "first process", convs: sinktest.PathCorpus(0, 20, base), ended: true},
		{name: "503, 429 and 413", convs: sinktest.PathCorpus(20, 20, base.Add(time.Minute)), ended: true, script: retries},
		{name: "killed between 202 and commit", convs: sinktest.PathCorpus(40, 15, base.Add(2*time.Minute)), ended: true, failAfter: -1},
		{name: "restart resends", convs: sinktest.PathCorpus(55, 10, base.Add(3*time.Minute)), ended: true},
		{name: "idle timeout", convs: sinktest.PathCorpus(65, 10, base.Add(4*time.Minute))},
	}
	var all []sinktest.Conv
	resent := sinktest.NewPathTruth()
	for _, r := range rounds {
		all = append(all, r.convs...)
		if r.failAfter < 0 {
			resent = sinktest.TruthOf(r.convs)
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
			recs = append(recs, c.Records(r.ended)...)
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
		fake.Do(func() { fake.Script = r.script })
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
		fake.Do(func() {
			if len(fake.Script) > 0 {
				t.Errorf("%s: %d datadogtest.Response answers not used", r.name, len(fake.Script))
			}
		})
	}
	fake.Do(func() {
		for _, v := range fake.Violations {
			t.Errorf("contract violation: %s", v)
		}
		for _, l := range fake.Lowered {
			t.Errorf("a total Datadog held was lowered: %s", l)
		}
		if fake.OutOfWindow > 0 {
			t.Errorf("%d points outside Datadog's window", fake.OutOfWindow)
		}
	})
	want := sinktest.TruthOf(all)
	want.Add(resent, mode == Distribution) // the one duplicate window
	wantCounts, wantDurs := want.SeriesOf(ddSeries)
	gotCounts, gotDurs := pathsHeld(fake)
	for _, e := range sinktest.Errors(gotCounts, wantCounts, gotDurs, wantDurs) {
		t.Error(e)
	}
	n := 0
	for _, v := range wantCounts {
		n += int(v)
	}
	t.Logf("%s mode: %d conversations over %d processes, %d path series, %d counted in exits, funnel and experiment steps", mode, len(all), len(rounds), len(wantCounts)+len(wantDurs), n)
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
			h.fake.Do(func() {
				for _, b := range h.fake.Bodies {
					bodies = append(bodies, string(b))
				}
			})
			golden.Check(t, "testdata/paths-"+string(mode)+".golden", []byte(strings.Join(bodies, "\n")+"\n"))
			h.fake.CheckClean()
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
	next, err := New(Config{URL: h.fake.URL, APIKeyEnv: "FLOWMETRICS_TEST_DD_KEY", Now: fixedClock()}, sink.Deps{Namer: naming.New(namingWithEnv()), Log: slog.New(slog.DiscardHandler)})
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
	counts, _ := pathsHeld(h.fake)
	got := counts[ExitMetric+"{env:prod,flow:main_ivr,metric:menuchosen}"]
	if got != 3 {
		t.Errorf("exits held by Datadog: got %v, want 3 (the running total over both processes)", got)
	}
}

func namingWithEnv() naming.Config { return naming.Config{Tags: map[string]string{"env": "prod"}} }
