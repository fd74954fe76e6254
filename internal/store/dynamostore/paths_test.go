package dynamostore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

func pathStoreOpts(clock *storetest.Clock) store.Options {
	return store.Options{Now: clock.Now, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}}
}

// countingDerive counts the closes per conversation and returns one exit
// point each.
type countingDerive struct {
	mu     sync.Mutex
	closes map[string]int
	ended  map[string]bool
}

func (c *countingDerive) derive(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closes == nil {
		c.closes, c.ended = map[string]int{}, map[string]bool{}
	}
	c.closes[cp.ConversationID]++
	c.ended[cp.ConversationID] = cp.Ended
	return []flowmetrics.PathPoint{{Kind: flowmetrics.PathExit, Flow: "F", Metric: fmt.Sprint(len(cp.Keys)), Time: t0, Conversation: cp.ConversationID}}
}

// deliver acknowledges everything in s's outbox for "sink" and settles the
// marks, as a Lambda invocation does after its flush.
func deliver(t *testing.T, s *dynamostore.Store) int {
	t.Helper()
	ctx := context.Background()
	es, err := s.ReadOutbox(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range es {
		n += len(e.Paths)
	}
	if len(es) > 0 {
		if err := s.AckState(ctx, "sink", es[len(es)-1].Seq, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestPathsCloseOnceAcrossInstances: three instances (three owners, like
// three Lambda execution environments) sweep and close the same due
// conversations at once, each through its own conditional writes, and
// deliver what they closed: every path is derived and delivered once.
func TestPathsCloseOnceAcrossInstances(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	var inst []*dynamostore.Store
	for i := 0; i < 3; i++ {
		s := open(t, srv, table, dynamostore.Config{Owner: fmt.Sprint("i", i), IdleStep: time.Minute}, pathStoreOpts(clock))
		if err := s.Register(ctx, []string{"sink"}); err != nil {
			t.Fatal(err)
		}
		inst = append(inst, s)
	}
	const convs = 90
	for i := 0; i < convs; i++ {
		c := fmt.Sprint("c", i)
		reqs := []flowmetrics.ClaimRequest{{ConversationID: c, Occurrences: []flowmetrics.Occurrence{storetest.Occ("F", "A", t0)}}}
		if i%3 != 0 {
			reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: c, Ended: true})
		}
		// Each conversation's events reach two instances (a duplicate).
		for _, s := range []*dynamostore.Store{inst[i%3], inst[(i+1)%3]} {
			if _, err := s.Claim(ctx, reqs); err != nil {
				var pe *flowmetrics.PendingError
				if !errors.As(err, &pe) {
					t.Fatal(err)
				}
			}
		}
	}
	for _, s := range inst {
		deliver(t, s)
	}
	var d countingDerive
	var closed, delivered atomic.Int64
	var wg sync.WaitGroup
	asOf := clock.Now().Add(2 * time.Hour)
	for _, s := range inst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n, err := s.ClosePaths(ctx, asOf, 7, d.derive)
				if err != nil {
					t.Error(err)
					return
				}
				closed.Add(int64(n))
				delivered.Add(int64(deliver(t, s)))
				if n == 0 {
					return
				}
			}
		}()
	}
	wg.Wait()
	if closed.Load() != convs || delivered.Load() != convs {
		t.Errorf("closed %d, delivered %d points; want %d each", closed.Load(), delivered.Load(), convs)
	}
	for i := 0; i < convs; i++ {
		c := fmt.Sprint("c", i)
		if d.closes[c] != 1 || d.ended[c] != (i%3 != 0) {
			t.Errorf("%s: closed %d times, ended %v; want once, ended %v", c, d.closes[c], d.ended[c], i%3 != 0)
		}
	}
	// Closed and delivered: never due again, late keys and ends or not.
	if _, err := inst[0].Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c1", Occurrences: []flowmetrics.Occurrence{storetest.Occ("F", "Late", t0)}}, {ConversationID: "c1", Ended: true}}); err != nil {
		t.Fatal(err)
	}
	deliver(t, inst[0])
	if n, err := inst[1].ClosePaths(ctx, asOf.Add(48*time.Hour), 0, d.derive); err != nil || n != 0 {
		t.Errorf("after every close: closed %d (%v), want 0", n, err)
	}
	// The sweeps read the index, never the table.
	for i, s := range inst {
		if st := s.Stats(); st.Query == 0 {
			t.Errorf("instance %d: no index query", i)
		}
	}
}

// TestPathCloseTakenOverAfterLease: an instance that closed a path and died
// before delivering its points holds the close only until its lease ends;
// then another instance closes it again (as ended), and exactly one.
func TestPathCloseTakenOverAfterLease(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	cfg := dynamostore.Config{Lease: time.Minute, Margin: 10 * time.Second}
	a := open(t, srv, table, cfg, pathStoreOpts(clock))
	a.Register(ctx, []string{"sink"})
	if _, err := a.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c", Occurrences: []flowmetrics.Occurrence{storetest.Occ("F", "A", t0)}}, {ConversationID: "c", Ended: true}}); err != nil {
		t.Fatal(err)
	}
	deliver(t, a)
	var d countingDerive
	asOf := t0.Add(time.Minute)
	if n, err := a.ClosePaths(ctx, asOf, 0, d.derive); err != nil || n != 1 {
		t.Fatalf("first close: %d (%v), want 1", n, err)
	}
	// a dies here, its points undelivered.
	var b, c *dynamostore.Store
	for _, s := range []**dynamostore.Store{&b, &c} {
		*s = open(t, srv, table, cfg, pathStoreOpts(clock))
		(*s).Register(ctx, []string{"sink"})
	}
	if n, _ := b.ClosePaths(ctx, asOf, 0, d.derive); n != 0 {
		t.Errorf("within a's lease: closed %d, want 0", n)
	}
	clock.Advance(time.Minute + time.Millisecond)
	var wg sync.WaitGroup
	var total atomic.Int64
	for _, s := range []*dynamostore.Store{b, c} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := s.ClosePaths(ctx, clock.Now(), 0, d.derive)
			if err != nil {
				t.Error(err)
			}
			total.Add(int64(n))
		}()
	}
	wg.Wait()
	if total.Load() != 1 || d.closes["c"] != 2 || !d.ended["c"] {
		t.Errorf("after the lease: closed %d (derived %d times, ended %v), want 1 more, ended", total.Load(), d.closes["c"], d.ended["c"])
	}
	deliver(t, b)
	deliver(t, c)
	if n, _ := b.ClosePaths(ctx, clock.Now().Add(time.Hour), 0, d.derive); n != 0 {
		t.Errorf("after delivery: closed %d, want 0", n)
	}
}

// TestIdleStepRoundsUp: with a step of a minute an idle path closes at its
// idle timeout rounded up to the minute, never before; and a claim that
// finds no new key (an event all the same) moves the deadline after it.
func TestIdleStepRoundsUp(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	ctx := context.Background()
	clock := storetest.NewClock(t0) // 09:31:48
	s := open(t, srv, table, dynamostore.Config{IdleStep: time.Minute}, pathStoreOpts(clock))
	a := storetest.Occ("F", "A", t0)
	mustClaim(t, s, "c", a)
	var d countingDerive
	first := time.Date(2026, 11, 20, 10, 32, 0, 0, time.UTC) // t0 + 1h, rounded up
	if n, _ := s.ClosePaths(ctx, first.Add(-time.Millisecond), 0, d.derive); n != 0 {
		t.Errorf("before the rounded deadline: closed %d, want 0", n)
	}
	clock.Advance(40 * time.Minute)
	mustClaim(t, s, "c", a)                                // known, but an event: the deadline moves
	due := time.Date(2026, 11, 20, 11, 12, 0, 0, time.UTC) // 10:11:48 + 1h, rounded up
	if n, _ := s.ClosePaths(ctx, first, 0, d.derive); n != 0 {
		t.Errorf("at the first event's deadline, after a later event: closed %d, want 0", n)
	}
	if n, _ := s.ClosePaths(ctx, due.Add(-time.Millisecond), 0, d.derive); n != 0 {
		t.Errorf("before the rounded deadline: closed %d, want 0", n)
	}
	if n, _ := s.ClosePaths(ctx, due, 0, d.derive); n != 1 {
		t.Errorf("at the rounded deadline: closed %d, want 1", n)
	}
}
