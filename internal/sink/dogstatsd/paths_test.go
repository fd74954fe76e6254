package dogstatsd

import (
	"context"
	"log/slog"
	"math"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// dsdSeries is a path series as a DogStatsD line names it: name|#tags,
// tags in the sink's order (the kind's tags; no static tags here).
func dsdSeries(p flowmetrics.PathPoint) string {
	name, tags := datadog.PathSeries(p)
	var out []string
	for _, t := range tags {
		out = append(out, datadog.Tag(t.Key, t.Value))
	}
	return name + "|#" + strings.Join(out, ",")
}

// receiverHolds reconstructs what Datadog holds for the path series after
// the receiver forwarded the lines, by the receiver's rule:
//   - the Agent (count mode): a timestamped count (|c|T) skips aggregation
//     and is one point at its time, Datadog keeping the last value per
//     series and second; a distribution (|d) is aggregated into a sketch
//     that keeps the count and sum of every value;
//   - the Lambda Extension (distribution mode): it merges distributions
//     sharing name, tags and 10-second bucket until a flush, and Datadog
//     adds every merged sketch up, so every value is kept whenever it
//     flushes. A count would be summed across sends (refused by Validate):
//     none may appear.
//
// Counts of conversations are the sum of the last values, or the number of
// values of 1 of a distribution; durations are every value.
func receiverHolds(t *testing.T, lines []string, receiver Receiver) (counts map[string]float64, durs map[string][]float64) {
	t.Helper()
	counts, durs = map[string]float64{}, map[string][]float64{}
	last := map[datadogKey]float64{}
	for _, s := range lines {
		l := parseLine(t, s)
		name, _, _ := strings.Cut(l.series, "|")
		if name == naming.DefaultName {
			continue // the occurrences: not path points
		}
		switch {
		case l.typ == "c" && l.ts != 0 && receiver == Agent:
			last[datadogKey{l.series, l.ts}] = l.value
		case l.typ == "d" && (name == datadog.StepMetric || name == datadog.TimingMetric):
			durs[l.series] = append(durs[l.series], l.value)
		case l.typ == "d":
			if l.value != 1 {
				t.Errorf("line %q: a count as a distribution must be a value of 1 per conversation", s)
			}
			counts[l.series] += l.value
		default:
			t.Errorf("line %q: not a line %s would keep exactly", s, receiver)
		}
	}
	for k, v := range last {
		counts[k.series] += v
	}
	return counts, durs
}

// TestPathsEachReceiversRule runs closed paths through the real pipeline,
// deriver and Pebble store into a UDP listener over two processes (the
// second restored from the first's state, its conversations on the same
// seconds), every event delivered twice, and rebuilds what Datadog holds
// by each receiver's rule: the Agent in count mode, the Lambda Extension
// (and the Agent) in distribution mode. Each conversation counts once per
// series, each duration is one value.
func TestPathsEachReceiversRule(t *testing.T) {
	for _, tc := range []struct {
		mode     datadog.Mode
		receiver Receiver
	}{{datadog.Count, Agent}, {datadog.Distribution, LambdaExtension}, {datadog.Distribution, Agent}} {
		t.Run(string(tc.mode)+" via "+string(tc.receiver), func(t *testing.T) {
			dir := t.TempDir()
			l := listenUDP(t)
			base := t0.Add(-20 * time.Minute)
			var all []sinktest.Conv
			var lines []string
			for i, convs := range [][]sinktest.Conv{sinktest.PathCorpus(0, 30, base), sinktest.PathCorpus(30, 30, base)} {
				all = append(all, convs...)
				ps, err := pebblestore.Open(dir, store.Options{Now: clock, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}}, nil)
				if err != nil {
					t.Fatal(err)
				}
				s, _ := newSink(t, Config{Addr: l.addr, Mode: tc.mode, Receiver: tc.receiver}, naming.Config{})
				p := pipeline.New(ps, []flowmetrics.Sink{s}, pipeline.Config{Now: clock, Derive: paths.New(sinktest.PathsConfig, nil).Derive, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}, telemetry.New(), slog.New(slog.DiscardHandler))
				if err := p.Register(context.Background()); err != nil {
					t.Fatal(err)
				}
				for _, c := range convs {
					if _, err := p.Ingest(context.Background(), c.Records(true)); err != nil {
						t.Fatal(err)
					}
				}
				if n, err := p.ClosePaths(context.Background(), t0.Add(10*time.Minute), 0); err != nil || n != len(convs) {
					t.Fatalf("process %d: closed %d paths (%v), want %d", i+1, n, err, len(convs))
				}
				if err := p.Close(context.Background()); err != nil {
					t.Fatal(err)
				}
				if err := ps.Close(); err != nil {
					t.Fatal(err)
				}
				lines = append(lines, l.lines(t, math.MaxInt)...)
			}
			wantCounts, wantDurs := sinktest.TruthOf(all).SeriesOf(dsdSeries)
			gotCounts, gotDurs := receiverHolds(t, lines, tc.receiver)
			for _, e := range sinktest.Errors(gotCounts, wantCounts, gotDurs, wantDurs) {
				t.Error(e)
			}
			t.Logf("%d conversations over 2 processes, %d lines, %d path series", len(all), len(lines), len(wantCounts)+len(wantDurs))
		})
	}
}

// TestPathsDatagrams pins the lines of a path batch in each mode: count
// mode sends exits, funnels and experiments as timestamped counts and
// durations as distributions; distribution mode sends every one as a
// distribution.
func TestPathsDatagrams(t *testing.T) {
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
	for _, mode := range []datadog.Mode{datadog.Count, datadog.Distribution} {
		t.Run(string(mode), func(t *testing.T) {
			l := listenUDP(t)
			s, _ := newSink(t, Config{Addr: l.addr, Mode: mode}, naming.Config{Tags: map[string]string{"env": "prod"}})
			if err := s.SendPaths(context.Background(), points); err != nil {
				t.Fatal(err)
			}
			got := l.lines(t, math.MaxInt)
			sort.Strings(got)
			golden.Check(t, filepath.Join("testdata", "paths-"+string(mode)+".golden.txt"), []byte(strings.Join(got, "\n")+"\n"))
		})
	}
}

// TestPathsDurationsIgnoreTheLatePolicy: DogStatsD distributions carry no
// timestamp (the receiver stamps them on arrival), so a late duration is
// sent under late_policy drop, while a late exit (a timestamped count) is
// dropped and counted.
func TestPathsDurationsIgnoreTheLatePolicy(t *testing.T) {
	l := listenUDP(t)
	clearClientEnv(t)
	m := telemetry.New()
	s, err := New(Config{Addr: l.addr, LatePolicy: datadog.Drop, Now: clock}, sink.Deps{Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	old := t0.Add(-2 * time.Hour)
	if err := s.SendPaths(context.Background(), []flowmetrics.PathPoint{
		{Kind: flowmetrics.PathExit, Flow: "F", Metric: "M", Time: old},
		{Kind: flowmetrics.PathStep, Flow: "F", Metric: "M", Seconds: 4.5, Time: old},
	}); err != nil {
		t.Fatal(err)
	}
	got := l.lines(t, math.MaxInt)
	if len(got) != 1 || !strings.HasPrefix(got[0], datadog.StepMetric+":4.5|d|") {
		t.Errorf("got lines %q, want only the step's distribution value", got)
	}
}
