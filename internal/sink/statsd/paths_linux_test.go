package statsd

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// TestPathsAddUpInTheDaemon runs closed paths through the real pipeline,
// deriver and Pebble store into a real UDP daemon on 127.0.0.1 over two
// processes sharing one data directory, every event delivered twice; the
// daemon is down when the second process first delivers its paths (the
// sends are refused and retried) and back for the next flush. What the
// daemon adds up (counters) and keeps (every timer value) equals, per
// series, what the corpus's own model says: each conversation once.
func TestPathsAddUpInTheDaemon(t *testing.T) {
	d := &daemon{t: t, sums: map[string]int64{}}
	d.start()
	dir := t.TempDir()
	now := func() time.Time { return t0 }
	base := t0.Add(-20 * time.Minute)
	var all []sinktest.Conv
	var refused float64
	for i, convs := range [][]sinktest.Conv{sinktest.PathCorpus(0, 30, base), sinktest.PathCorpus(30, 30, base)} {
		all = append(all, convs...)
		ps, err := pebblestore.Open(dir, store.Options{Now: now, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		m := telemetry.New()
		s, err := New(Config{Addr: fmt.Sprintf("127.0.0.1:%d", d.port)}, sink.Deps{Namer: naming.New(naming.Config{}), Metrics: m, Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		p := pipeline.New(ps, []flowmetrics.Sink{s}, pipeline.Config{Now: now, Derive: paths.New(sinktest.PathsConfig, nil).Derive, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}, m, slog.New(slog.DiscardHandler))
		if err := p.Register(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, c := range convs {
			if _, err := p.Ingest(context.Background(), c.Records(true)); err != nil {
				t.Fatal(err)
			}
		}
		if err := p.Flush(context.Background()); err != nil {
			t.Fatalf("process %d: flush of the occurrences: %v", i+1, err)
		}
		if n, err := p.ClosePaths(context.Background(), t0.Add(10*time.Minute), 0); err != nil || n != len(convs) {
			t.Fatalf("process %d: closed %d paths (%v), want %d", i+1, n, err, len(convs))
		}
		if i == 1 {
			d.stop()
			short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			if err := p.Flush(short); err == nil {
				t.Fatal("flush with the daemon down: got nil, want the refusal")
			}
			cancel()
			refused = testutil.ToFloat64(m.SinkFailures.WithLabelValues(Name, "refused"))
			d.start()
		}
		if err := p.Close(context.Background()); err != nil {
			t.Fatalf("process %d: close: %v", i+1, err)
		}
		if err := ps.Close(); err != nil {
			t.Fatal(err)
		}
	}
	d.stop()
	if refused < 1 {
		t.Errorf("refusals while the daemon was down: got %v, want at least 1", refused)
	}
	d.mu.Lock()
	gotCounts := map[string]float64{}
	for k, v := range d.sums {
		if !strings.HasPrefix(k, "genesys.flow.metric.") {
			gotCounts[k] = float64(v)
		}
	}
	gotDurs := map[string][]float64{}
	for k, vs := range d.timers {
		for _, v := range vs {
			gotDurs[k] = append(gotDurs[k], v/1000)
		}
	}
	d.mu.Unlock()
	s, _ := New(Config{Addr: "127.0.0.1:9"}, sink.Deps{Namer: naming.New(naming.Config{})})
	wantCounts, wantDurs := sinktest.TruthOf(all).SeriesOf(func(p flowmetrics.PathPoint) string {
		name, labels := pathLabels(p)
		return s.pathKey(name, labels)
	})
	for _, e := range sinktest.Errors(gotCounts, wantCounts, gotDurs, wantDurs) {
		t.Error(e)
	}
	t.Logf("%d conversations over 2 processes, %d path series, %v refusals while the daemon was down", len(all), len(wantCounts)+len(wantDurs), refused)
}
