package emf

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

var samplePaths = []flowmetrics.PathPoint{
	{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: t0.Add(500 * time.Millisecond), Conversation: "c1"},
	{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: t0.Add(2 * time.Second), Conversation: "c2"},
	{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 30, Time: t0, Conversation: "c1"},
	{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 0.25, Time: t0, Conversation: "c2"},
	{Kind: flowmetrics.PathStep, Flow: "Größe", Metric: "Ärger", Seconds: 30, Time: t0, Conversation: "c3"},
	{Kind: flowmetrics.PathTiming, Name: "ivr_to_agent", Seconds: 93.25, Time: t0.Add(time.Minute), Conversation: "c1"},
	{Kind: flowmetrics.PathFunnel, Name: "callback", Step: "Main IVR/Entered", Time: t0, Conversation: "c1"},
	{Kind: flowmetrics.PathFunnel, Name: "callback", Step: "Callback/Offered", Time: t0.Add(time.Second), Conversation: "c1"},
	{Kind: flowmetrics.PathExperiment, Name: "callback_offer", Variant: "B", Step: "Callback/OfferB", Time: t0, Conversation: "c1"},
}

func TestPathsGolden(t *testing.T) {
	s, buf := newSink(t, Config{}, naming.Config{Tags: map[string]string{"env": "prod"}})
	if err := s.SendPaths(context.Background(), samplePaths); err != nil {
		t.Fatalf("SendPaths: got %v, want nil", err)
	}
	checkLines(t, buf.Bytes())
	golden.Check(t, filepath.Join("testdata", "paths.golden"), buf.Bytes())
}

// cwKey is one CloudWatch metric in one period: namespace, name, its
// dimensions (sorted name=value pairs) and the period's start.
type cwKey struct {
	ns, name, dims string
	period         int64 // unix ms
}

// cloudWatch is what CloudWatch stores from EMF lines, by its rule: each
// number of a target member is one sample of the metric, in the period of
// the line's timestamp; samples add up (a count of 3 is a sample of 3, an
// array of durations is one sample each). It keeps every sample, so sums,
// sample counts and percentiles can all be compared.
type cloudWatch map[cwKey][]float64

func (cw cloudWatch) ingest(t *testing.T, out []byte, period time.Duration) {
	t.Helper()
	for _, line := range bytes.Split(bytes.TrimSuffix(out, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if errs := validateEMF(line); len(errs) > 0 {
			t.Fatalf("CloudWatch would reject %s: %v", line, errs)
		}
		var root map[string]json.RawMessage
		if err := json.Unmarshal(line, &root); err != nil {
			t.Fatal(err)
		}
		var aws struct {
			Timestamp         int64
			CloudWatchMetrics []struct {
				Namespace  string
				Dimensions [][]string
				Metrics    []struct{ Name string }
			}
		}
		json.Unmarshal(root["_aws"], &aws)
		p := time.UnixMilli(aws.Timestamp).Truncate(period).UnixMilli()
		for _, d := range aws.CloudWatchMetrics {
			for _, set := range d.Dimensions {
				var dims []string
				for _, k := range set {
					var v string
					json.Unmarshal(root[k], &v)
					dims = append(dims, k+"="+v)
				}
				sort.Strings(dims)
				for _, m := range d.Metrics {
					k := cwKey{d.Namespace, m.Name, strings.Join(dims, ","), p}
					var one float64
					if json.Unmarshal(root[m.Name], &one) == nil {
						cw[k] = append(cw[k], one)
						continue
					}
					var many []float64
					if err := json.Unmarshal(root[m.Name], &many); err != nil {
						t.Fatalf("metric %s: %s is neither a number nor an array", m.Name, root[m.Name])
					}
					cw[k] = append(cw[k], many...)
				}
			}
		}
	}
}

// truth is what CloudWatch should hold for points: computed from the
// points alone, by the sink's documented rule, without its code.
func truth(points []flowmetrics.PathPoint, env string) (counts map[cwKey]float64, durations map[cwKey][]float64) {
	counts, durations = map[cwKey]float64{}, map[cwKey][]float64{}
	for _, p := range points {
		period := p.Time.Truncate(time.Minute).UnixMilli()
		fold := dimensionValue // CloudWatch's character rules, tested in TestDimensionValue
		var name string
		var dims []string
		switch p.Kind {
		case flowmetrics.PathExit:
			name, dims = "genesys.flow.exit", []string{"flow=" + fold(p.Flow), "metric=" + fold(p.Metric)}
		case flowmetrics.PathStep:
			name, dims = "genesys.flow.step", []string{"flow=" + fold(p.Flow), "metric=" + fold(p.Metric)}
		case flowmetrics.PathTiming:
			name, dims = "genesys.flow.timing", []string{"timing=" + fold(p.Name)}
		case flowmetrics.PathFunnel:
			name, dims = "genesys.flow.funnel", []string{"funnel=" + fold(p.Name), "step=" + fold(p.Step)}
		case flowmetrics.PathExperiment:
			name, dims = "genesys.flow.experiment", []string{"experiment=" + fold(p.Name), "step=" + fold(p.Step), "variant=" + fold(p.Variant)}
		}
		dims = append(dims, "env="+env)
		sort.Strings(dims)
		k := cwKey{DefaultNamespace, name, strings.Join(dims, ","), period}
		if p.Kind.IsDuration() {
			durations[k] = append(durations[k], p.Seconds)
		} else {
			counts[k]++
		}
	}
	return counts, durations
}

// randomPaths: n path points over 5 minutes, a few series, with one step
// series far over 100 values a minute.
func randomPaths(rng *rand.Rand, n int) []flowmetrics.PathPoint {
	var out []flowmetrics.PathPoint
	for i := range n {
		at := t0.Add(time.Duration(rng.IntN(300_000)) * time.Millisecond)
		c := fmt.Sprintf("c%d", i)
		flow := []string{"Main IVR", "Größe", "Callback"}[rng.IntN(3)]
		metric := []string{"Entered", "MenuChosen", "Agent"}[rng.IntN(3)]
		secs := float64(rng.IntN(3_600_000)) / 1000
		switch rng.IntN(6) {
		case 0:
			out = append(out, flowmetrics.PathPoint{Kind: flowmetrics.PathExit, Flow: flow, Metric: metric, Time: at, Conversation: c})
		case 1, 2:
			// Most are steps, and many of one series: more than 100 a minute.
			if rng.IntN(2) == 0 {
				flow, metric = "Main IVR", "MenuChosen"
			}
			out = append(out, flowmetrics.PathPoint{Kind: flowmetrics.PathStep, Flow: flow, Metric: metric, Seconds: secs, Time: at, Conversation: c})
		case 3:
			out = append(out, flowmetrics.PathPoint{Kind: flowmetrics.PathTiming, Name: "ivr_to_agent", Seconds: secs, Time: at, Conversation: c})
		case 4:
			out = append(out, flowmetrics.PathPoint{Kind: flowmetrics.PathFunnel, Name: "callback", Step: flow + "/" + metric, Time: at, Conversation: c})
		case 5:
			out = append(out, flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: []string{"A", "B"}[rng.IntN(2)], Step: "Callback/" + metric, Time: at, Conversation: c})
		}
	}
	return out
}

// TestPathsAddUpInCloudWatch sends path points in batches to a file, with
// a crash after a batch was written and before its cursor was committed
// (the batch is sent again by the restarted process), then rebuilds what
// CloudWatch would store from the file: every count and every duration
// sample per metric, dimensions and minute, exactly the points' own.
func TestPathsAddUpInCloudWatch(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(18, 1))
	points := randomPaths(rng, 3000)
	path := filepath.Join(t.TempDir(), "emf.log")
	committed := map[string][]byte{}
	open := func() *Sink {
		s, err := New(Config{Path: path}, sink.Deps{Namer: naming.New(naming.Config{Tags: map[string]string{"env": "prod"}}), Metrics: telemetry.New()})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Restore(ctx, committed); err != nil {
			t.Fatal(err)
		}
		return s
	}
	commit := func(s *Sink) {
		for k, v := range s.TakeState() {
			committed[k] = v
		}
	}
	s := open()
	commit(s)
	const batch = 250
	for i := 0; i < len(points); i += batch {
		b := points[i:min(i+batch, len(points))]
		if err := s.SendPaths(ctx, b); err != nil {
			t.Fatal(err)
		}
		if i/batch == 3 {
			// The crash: written and synced, never committed. The
			// restarted sink cuts the file back and gets the batch again.
			s.Close(ctx)
			s = open()
			if err := s.SendPaths(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		commit(s)
	}
	s.Close(ctx)
	out, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cw := cloudWatch{}
	cw.ingest(t, out, time.Minute)
	counts, durations := truth(points, "prod")
	if len(cw) != len(counts)+len(durations) {
		t.Errorf("CloudWatch holds %d metric periods, want %d", len(cw), len(counts)+len(durations))
	}
	over100 := false
	for k, want := range counts {
		var got float64
		for _, v := range cw[k] {
			got += v
		}
		if got != want {
			t.Errorf("%s{%s} at %d: Sum got %v, want %v", k.name, k.dims, k.period, got, want)
		}
	}
	for k, want := range durations {
		got := slices.Clone(cw[k])
		sort.Float64s(got)
		sort.Float64s(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s{%s} at %d: got %d samples, want %d (or other values)", k.name, k.dims, k.period, len(got), len(want))
		}
		over100 = over100 || len(want) > MaxValuesPerMetric
	}
	if !over100 {
		t.Errorf("no duration series had more than %d values in a minute: the test does not exercise the split", MaxValuesPerMetric)
	}
}

// TestPathsManyValuesSplit: 250 values of one series in one minute are
// three lines of at most 100 values, and nothing else.
func TestPathsManyValuesSplit(t *testing.T) {
	s, buf := newSink(t, Config{}, naming.Config{})
	var ps []flowmetrics.PathPoint
	for i := range 250 {
		ps = append(ps, flowmetrics.PathPoint{Kind: flowmetrics.PathStep, Flow: "F", Metric: "M", Seconds: float64(i), Time: t0})
	}
	if err := s.SendPaths(context.Background(), ps); err != nil {
		t.Fatal(err)
	}
	checkLines(t, buf.Bytes())
	if n := bytes.Count(buf.Bytes(), []byte("\n")); n != 3 {
		t.Errorf("got %d lines, want 3 (100 + 100 + 50 values)", n)
	}
}

// TestPathDimensionsAreReserved: a static tag cannot take a dimension
// name of the path points.
func TestPathDimensionsAreReserved(t *testing.T) {
	_, err := New(Config{Writer: &bytes.Buffer{}}, sink.Deps{Namer: naming.New(naming.Config{Tags: map[string]string{"step": "x"}}), Metrics: telemetry.New()})
	if err == nil || !strings.Contains(err.Error(), `"step"`) {
		t.Fatalf("got %v, want an error naming the dimension step", err)
	}
}
