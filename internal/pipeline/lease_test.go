package pipeline

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// leasedStore is a store whose outbox entries can be withdrawn, as
// DynamoDB's are when their lease runs short (flowmetrics.Leaser): a
// withdrawn entry is no longer read, and Lease reports the batch holding
// it as gone.
type leasedStore struct {
	flowmetrics.Store
	mu        sync.Mutex
	withdrawn map[uint64]bool
}

func (s *leasedStore) withdraw(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.withdrawn[seq] = true
}

func (s *leasedStore) ReadOutbox(ctx context.Context, after uint64, limit int) ([]flowmetrics.Entry, error) {
	es, err := s.Store.ReadOutbox(ctx, after, limit)
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := es[:0]
	for _, e := range es {
		if !s.withdrawn[e.Seq] {
			kept = append(kept, e)
		}
	}
	return kept, err
}

func (s *leasedStore) Holds(after, last uint64, n int) bool {
	es, _ := s.ReadOutbox(context.Background(), after, 1<<20)
	held := 0
	for _, e := range es {
		if e.Seq <= last {
			held++
		}
	}
	return held == n
}

// partialSink delivers part of a batch before it fails: its running total
// (its state) moves although the send failed, as the Datadog sink's totals
// do when one of a batch's payloads was accepted and the next refused.
type partialSink struct {
	countingSink
	failing bool
}

// Restore replaces the total: none committed is none.
func (s *partialSink) Restore(ctx context.Context, st map[string][]byte) error {
	s.total = 0
	return s.countingSink.Restore(ctx, st)
}

func (s *partialSink) Send(ctx context.Context, points []flowmetrics.Point) error {
	if s.failing {
		for _, p := range points {
			s.total += int(p.Count)
		}
		s.changed = true
		s.sends++
		return context.DeadlineExceeded
	}
	return s.countingSink.Send(ctx, points)
}

// TestHeldBatchAbandonedOnceWithdrawn: a batch whose send failed is held
// for its retry, but once the store withdrew its entries (their lease ran
// out, and their keys may be claimed again: by a redelivered event, here
// or at another instance) it is never sent; the sink's state, which the
// failed send moved, is restored from the store before the next send, so
// the occurrences claimed again are counted once.
func TestHeldBatchAbandonedOnceWithdrawn(t *testing.T) {
	ctx := context.Background()
	st := &leasedStore{Store: memstore.New(store.Options{}), withdrawn: map[uint64]bool{}}
	sink := &partialSink{countingSink: countingSink{recordingSink: recordingSink{name: "s"}}, failing: true}
	p := New(st, []flowmetrics.Sink{sink}, Config{RetryMin: time.Millisecond, RetryMax: time.Millisecond, FlushAttempts: 2, CacheConversations: -1}, telemetry.New(), nil)
	if err := p.Register(ctx); err != nil {
		t.Fatal(err)
	}
	p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)")})
	if err := p.Flush(ctx); err == nil {
		t.Fatal("flush to a failing sink succeeded")
	}
	if sink.total != 2 {
		t.Fatalf("the failing sink's total after two partial sends: %d, want 2", sink.total)
	}
	// The lease ran out; the event came back and its key was claimed
	// again (here: in another conversation, as memstore keeps claims).
	st.withdraw(1)
	sink.failing = false
	p.Ingest(ctx, []genesys.Record{event("c2", "FMetric_A(2026-11-20T09:31:48Z)")})
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sink.total; got != 1 {
		t.Errorf("total after the abandoned batch and the claim again: %d, want 1 (the state restored before the next send)", got)
	}
	if n := len(sink.points); n != 1 {
		t.Errorf("points delivered: %d, want 1 (the withdrawn batch is never sent)", n)
	}
	state, err := st.SinkState(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(state["total"]); got != "1" {
		t.Errorf("committed total: %q, want 1", got)
	}
}
