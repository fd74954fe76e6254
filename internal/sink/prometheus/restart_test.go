package prometheus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	promclient "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/prometheus"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// records decodes n attribute events, conversations from..from+n-1, each with
// one CustomerRouting/Unknown and, every third, one Billing/Paid.
func records(t *testing.T, from, n int) []genesys.Record {
	t.Helper()
	var b strings.Builder
	at := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	for i := from; i < from+n; i++ {
		ts := at.Add(time.Duration(i) * time.Second)
		attrs := map[string]string{genesys.AttributeName("CustomerRouting", "Unknown", ts): ""}
		if i%3 == 0 {
			attrs[genesys.AttributeName("Billing", "Paid", ts)] = ""
		}
		b.Write(genesys.Envelope{Conversation: fmt.Sprintf("c-%d", i), Participant: "p", Time: time.UnixMilli(1), Attributes: attrs}.DetailJSON())
		b.WriteByte('\n')
	}
	var recs []genesys.Record
	if err := genesys.Decode(strings.NewReader(b.String()), func(r genesys.Record) error {
		recs = append(recs, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return recs
}

// failingAck is a store whose AckState fails while fail is set: a process
// that delivered a batch and died before committing its cursor.
type failingAck struct {
	flowmetrics.Store
	fail atomic.Bool
}

func (f *failingAck) AckState(ctx context.Context, sink string, seq uint64, u flowmetrics.StateUpdate) error {
	if f.fail.Load() {
		return errors.New("killed before the commit")
	}
	return f.Store.AckState(ctx, sink, seq, u)
}

// run is one process: a pipeline with the Prometheus sink on a fresh
// registry, over the store.
func run(t *testing.T, st flowmetrics.Store) (*pipeline.Pipeline, *promclient.Registry) {
	t.Helper()
	m := telemetry.New()
	reg := m.Registry
	s, err := prometheus.New(prometheus.Config{}, sink.Deps{Metrics: m, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.New(st, []flowmetrics.Sink{s}, pipeline.Config{RetryMin: time.Millisecond, RetryMax: time.Millisecond}, telemetry.New(), nil)
	if err := p.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p, reg
}

func expect(t *testing.T, what string, reg *promclient.Registry, unknown, paid int) {
	t.Helper()
	want := fmt.Sprintf(`
# HELP genesys_flow_metric_total Occurrences of Genesys Cloud flow metrics, counted once per conversation.
# TYPE genesys_flow_metric_total counter
genesys_flow_metric_total{flow="Billing",metric="Paid"} %d
genesys_flow_metric_total{flow="CustomerRouting",metric="Unknown"} %d
`, paid, unknown)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "genesys_flow_metric_total"); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// TestCountersResumeAfterRestart: a restart on the same data directory
// shows every counter at its total before any new delivery, and a batch
// delivered but not committed before a crash is counted once.
func TestCountersResumeAfterRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	open := func() *failingAck {
		st, err := pebblestore.Open(dir, store.Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return &failingAck{Store: st}
	}

	st := open()
	p, reg := run(t, st)
	if _, err := p.Ingest(ctx, records(t, 0, 30)); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, "first run", reg, 30, 10)
	p.Close(ctx)
	st.Close()

	// Second run: the totals are there before anything new is delivered.
	st = open()
	p, reg = run(t, st)
	expect(t, "after the restart, before any delivery", reg, 30, 10)
	// Deliver a batch, then "crash" before its commit.
	if _, err := p.Ingest(ctx, records(t, 30, 6)); err != nil {
		t.Fatal(err)
	}
	st.fail.Store(true)
	fctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	p.Flush(fctx) // fails: the commit never happens
	cancel()
	expect(t, "delivered, not committed", reg, 36, 12)
	st.Close()

	// Third run: the commit never happened, so the committed totals are
	// lower; the pending batch is counted ahead, so no counter goes down,
	// and delivering it again adds nothing.
	st = open()
	p, reg = run(t, st)
	expect(t, "after the crash", reg, 36, 12)
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, "after redelivery", reg, 36, 12)
	// The same events again are duplicates: nothing moves.
	if _, err := p.Ingest(ctx, records(t, 0, 36)); err != nil {
		t.Fatal(err)
	}
	p.Flush(ctx)
	expect(t, "after duplicates", reg, 36, 12)
	p.Close(ctx)
	st.Close()

	// Fourth run: ingested but never sent before the crash (the pipeline
	// not started). The restart shows them at once; delivery adds nothing;
	// a fifth run shows the same.
	st = open()
	p, _ = run(t, st)
	if _, err := p.Ingest(ctx, records(t, 36, 9)); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st = open()
	p, reg = run(t, st)
	expect(t, "pending, after a restart", reg, 45, 15)
	p.Flush(ctx)
	expect(t, "pending, delivered", reg, 45, 15)
	p.Close(ctx)
	st.Close()
	st = open()
	_, reg = run(t, st)
	expect(t, "fifth run", reg, 45, 15)
	st.Close()
}

func TestRestoreSkipsBadState(t *testing.T) {
	m := telemetry.New()
	reg := m.Registry
	s, _ := prometheus.New(prometheus.Config{}, sink.Deps{Metrics: m})
	good, _ := prometheus.New(prometheus.Config{}, sink.Deps{})
	good.Send(context.Background(), []flowmetrics.Point{{Flow: "A", Metric: "x", Count: 4}})
	st := map[string][]byte(good.TakeState())
	st["c/bad"] = []byte("{")
	st["c/0000"] = []byte(`{"flow":"B","metric":"y","total":3}`) // not its key
	if err := s.Restore(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(mustCounter(t, reg)); got != 4 {
		t.Errorf("restored total: got %v, want 4 (only the good key)", got)
	}
	u := s.TakeState()
	if v, ok := u["c/bad"]; !ok || v != nil || u["c/0000"] != nil || len(u) != 2 {
		t.Errorf("TakeState after bad keys: got %v, want their deletion only", u)
	}
}

func mustCounter(t *testing.T, reg *promclient.Registry) promclient.Collector {
	t.Helper()
	all, err := reg.Gather()
	var fams []*dto.MetricFamily
	for _, f := range all {
		if f.GetName() == prometheus.DefaultName {
			fams = append(fams, f)
		}
	}
	if err != nil || len(fams) != 1 || len(fams[0].GetMetric()) != 1 {
		t.Fatalf("gather: %v %v", fams, err)
	}
	c := promclient.NewCounter(promclient.CounterOpts{Name: "x"})
	c.Add(fams[0].GetMetric()[0].GetCounter().GetValue())
	return c
}
