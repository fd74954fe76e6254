package datadog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// crashStore is a real store whose AckState fails from some call on, as if
// the process had been killed after the sink's Send returned and before the
// cursor and the state were committed: the commit never happens.
type crashStore struct {
	flowmetrics.Store
	acks      atomic.Int64
	failAfter int64 // 0: never
}

var errKilled = errors.New("killed before the commit")

func (c *crashStore) AckState(ctx context.Context, sink string, seq uint64, u flowmetrics.StateUpdate) error {
	if n := c.acks.Add(1); c.failAfter > 0 && n > c.failAfter {
		return errKilled
	}
	return c.Store.AckState(ctx, sink, seq, u)
}

// TestRestartNeverLowersATotal runs count mode through the real pipeline and
// a real Pebble store over five "processes" sharing one data directory:
// a clean restart, a kill between Datadog's 202 and the commit, a kill with
// a batch only partly accepted, and late occurrences for buckets an earlier
// process already sent. It reconstructs what Datadog stores (the last value
// per series and second) and requires it to equal the occurrences ingested,
// per series and second, with no write ever replacing a held total by a
// smaller one.
func TestRestartNeverLowersATotal(t *testing.T) {
	dir := t.TempDir()
	fake := datadogtest.New(t, testKey, fixedClock())
	want := map[datadogtest.Point]float64{}
	namer := naming.New(naming.Config{})
	conv := 0
	// ingest returns records of n new conversations, each with attributes
	// of two flows at the given ages (so later rounds revisit buckets).
	records := func(n int, ages ...time.Duration) []genesys.Record {
		var recs []genesys.Record
		for i := 0; i < n; i++ {
			conv++
			var names []string
			for j, age := range ages {
				at := t0.Add(-age - time.Duration(i%7)*time.Second)
				flow := []string{"CustomerRouting", "Billing Main"}[j%2]
				names = append(names, fmt.Sprintf("%sMetric_Step%d(%s)", flow, j%3, at.Format(time.RFC3339Nano)))
				k := datadogtest.PointOf(MetricName(namer.Name(flow, fmt.Sprintf("Step%d", j%3))), Tags(namer, flow, fmt.Sprintf("Step%d", j%3)), flowmetrics.BucketStart(at, 10*time.Second).Unix())
				want[k]++
			}
			rec := genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: fmt.Sprintf("conv-%d", conv), MetricNames: names}}
			recs = append(recs, rec, rec) // every event delivered twice
		}
		return recs
	}
	type round struct {
		name      string
		ages      []time.Duration
		failAfter int64                  // killed after this many commits (0: not)
		script    []datadogtest.Response // intake answers
		maxBytes  int                    // uncompressed limit, to split batches
	}
	partly := []datadogtest.Response{{Status: http.StatusAccepted}}
	for i := 0; i < 1000; i++ {
		partly = append(partly, datadogtest.Response{Status: http.StatusServiceUnavailable})
	}
	rounds := []round{
		{name: "first process", ages: []time.Duration{30 * time.Second, 50 * time.Second, 70 * time.Second}},
		{name: "killed between 202 and commit", ages: []time.Duration{31 * time.Second, 51 * time.Second}, failAfter: 1},
		{name: "late points after the kill", ages: []time.Duration{32 * time.Second, 72 * time.Second}},
		{name: "killed with a batch partly accepted", ages: []time.Duration{33 * time.Second, 53 * time.Second, 73 * time.Second, 95 * time.Second}, maxBytes: 400,
			script: partly},
		{name: "clean restart with late points", ages: []time.Duration{34 * time.Second, 54 * time.Second, 96 * time.Second}},
		{name: "nothing new: the resends settle", ages: nil},
	}
	for _, r := range rounds {
		ps, err := pebblestore.Open(dir, store.Options{Now: fixedClock()}, nil)
		if err != nil {
			t.Fatalf("%s: open: %v", r.name, err)
		}
		cs := &crashStore{Store: ps, failAfter: r.failAfter}
		cfg := Config{MaxRetries: 1}
		if r.maxBytes > 0 {
			cfg.MaxUncompressedBytes = r.maxBytes
		}
		sink := newSinkOn(t, fake, cfg)
		p := pipeline.New(cs, []flowmetrics.Sink{sink}, pipeline.Config{Now: fixedClock(), RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond, CacheConversations: -1}, telemetry.New(), slog.New(slog.DiscardHandler))
		if err := p.Register(ctx(t)); err != nil {
			t.Fatalf("%s: register: %v", r.name, err)
		}
		fake.Do(func() { fake.Script = nil })
		if r.ages != nil {
			// Two ingests: the first commit succeeds, a second batch
			// is what a kill can catch.
			if _, err := p.Ingest(ctx(t), records(5, r.ages...)); err != nil {
				t.Fatalf("%s: ingest: %v", r.name, err)
			}
			if err := p.Flush(ctx(t)); err != nil {
				t.Fatalf("%s: flush: %v", r.name, err)
			}
			if _, err := p.Ingest(ctx(t), records(5, r.ages...)); err != nil {
				t.Fatalf("%s: ingest: %v", r.name, err)
			}
		}
		fake.Do(func() { fake.Script = r.script })
		short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err = p.Flush(short)
		cancel()
		killed := r.failAfter != 0 || r.script != nil
		if killed && err == nil {
			t.Fatalf("%s: flush: got nil, want the kill's error", r.name)
		}
		if !killed && err != nil {
			t.Fatalf("%s: flush: %v", r.name, err)
		}
		// The process ends: a kill leaves the pipeline as it is (no
		// flush, no commit); a clean stop closes it.
		if !killed {
			if err := p.Close(ctx(t)); err != nil {
				t.Fatalf("%s: close: %v", r.name, err)
			}
		} else {
			sink.Close(context.Background())
		}
		if err := ps.Close(); err != nil {
			t.Fatal(err)
		}
	}
	fake.Lock()
	defer fake.Unlock()
	for _, v := range fake.Violations {
		t.Errorf("contract violation: %s", v)
	}
	for _, l := range fake.Lowered {
		t.Errorf("a total Datadog held was lowered: %s", l)
	}
	var keys []datadogtest.Point
	for k := range want {
		keys = append(keys, k)
	}
	for k := range fake.Store {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
	var total, held float64
	for _, k := range keys {
		total += want[k]
		held += fake.Store[k]
		if fake.Store[k] != want[k] {
			t.Errorf("%v: Datadog holds %v, want %v", k, fake.Store[k], want[k])
		}
	}
	t.Logf("%v occurrences ingested over %d processes, %v held by Datadog, %d series-seconds", total, len(rounds), held, len(keys))
}
