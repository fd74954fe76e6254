package datadog

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
)

// apply commits u to state as a store would.
func apply(state map[string][]byte, u flowmetrics.StateUpdate) {
	for k, v := range u {
		if v == nil {
			delete(state, k)
		} else {
			state[k] = v
		}
	}
}

func deliverAll(t *testing.T, l *Ledger, points ...flowmetrics.Point) {
	t.Helper()
	b := l.NewBatch(points)
	l.Delivered(b, l.Plan(b))
	if !b.Done() {
		t.Fatal("batch not done")
	}
}

// TestStateRoundTrip: what TakeState hands out restores the same totals in
// a new Ledger, for long series names too, within the store's limits.
func TestStateRoundTrip(t *testing.T) {
	long := strings.Repeat("x", 180)
	a := NewLedger(Name, Count, Clamp, fixedClock(), sink.Deps{Namer: naming.New(naming.Config{Tags: map[string]string{"env": "prod", "team": long}})})
	deliverAll(t, a, pt("F", "M", 20*time.Second, 2), pt("F", "M", 10*time.Minute, 5), pt(long, long, 30*time.Second, 3), pt("F", "M", 3*time.Hour, 4))
	deliverAll(t, a, pt("F", "M", 20*time.Second, 1))
	state := map[string][]byte{}
	u := a.TakeState()
	if err := flowmetrics.CheckState(u); err != nil {
		t.Fatal(err)
	}
	apply(state, u)
	if u := a.TakeState(); u != nil {
		t.Errorf("second TakeState: got %d keys, want none", len(u))
	}
	b := NewLedger(Name, Count, Clamp, fixedClock(), sink.Deps{Namer: naming.New(naming.Config{Tags: map[string]string{"env": "prod", "team": long}})})
	if err := b.Restore(state); err != nil {
		t.Fatal(err)
	}
	if got, want := b.Len(), a.Len(); got != want || got != 4 {
		t.Errorf("restored totals: got %d, want %d (and 4)", got, want)
	}
	for key, byTS := range a.totals {
		for ts, v := range byTS {
			if got := b.totals[key][ts]; got != v {
				t.Errorf("%q at %d: got %d, want %d", key, ts, got, v)
			}
		}
	}
	if u := b.TakeState(); u != nil {
		t.Errorf("TakeState right after Restore: got %v, want nothing", u)
	}
}

// TestStateBounded: three hours of sends, one per ten seconds, for 20
// series: old slots are deleted with nil updates and the committed state
// never holds more than the slots PruneAge spans.
func TestStateBounded(t *testing.T) {
	now := t0
	l := NewLedger(Name, Count, Clamp, func() time.Time { return now }, sink.Deps{})
	state := map[string][]byte{}
	deletes, most := 0, 0
	for i := 0; i < 3*360; i++ {
		now = now.Add(10 * time.Second)
		var ps []flowmetrics.Point
		for s := 0; s < 20; s++ {
			w := 10 * time.Second
			ps = append(ps, flowmetrics.Point{Flow: fmt.Sprintf("F%d", s), Metric: "M", Bucket: flowmetrics.BucketStart(now, w), Width: w, Count: 1})
		}
		deliverAll(t, l, ps...)
		u := l.TakeState()
		if err := flowmetrics.CheckState(u); err != nil {
			t.Fatal(err)
		}
		for _, v := range u {
			if v == nil {
				deletes++
			}
		}
		apply(state, u)
		most = max(most, len(state))
	}
	if limit := 20 * (int(PruneAge/(slotSeconds*time.Second)) + 2); most > limit {
		t.Errorf("state keys: at most %d, want at most %d", most, limit)
	}
	if deletes == 0 {
		t.Error("no nil updates: old totals are never deleted")
	}
	if got, want := l.Len(), 20*int(PruneAge/(10*time.Second)); got > want+20*7 {
		t.Errorf("totals in memory: %d, want about %d", got, want)
	}
}

// TestRestoreDropsWhatItCannotRead: keys that are not totals are deleted by
// the next TakeState; a distribution-mode sink deletes every total.
func TestRestoreDropsWhatItCannotRead(t *testing.T) {
	good := NewLedger(Name, Count, Clamp, fixedClock(), sink.Deps{})
	deliverAll(t, good, pt("F", "M", 0, 1))
	state := map[string][]byte{}
	apply(state, good.TakeState())
	var goodKey string
	for k := range state {
		goodKey = k
	}
	state["t/zz/1"] = []byte{1, 2, 3}
	state["other"] = []byte("x")
	state[goodKey+"0"] = state[goodKey] // a value under the wrong key

	for _, tt := range []struct {
		mode        Mode
		wantDeleted int
		wantTotals  int
	}{{Count, 3, 1}, {Distribution, 4, 0}} {
		l := NewLedger(Name, tt.mode, Clamp, fixedClock(), sink.Deps{})
		if err := l.Restore(state); err != nil {
			t.Fatal(err)
		}
		u := l.TakeState()
		deleted := 0
		for _, v := range u {
			if v == nil {
				deleted++
			}
		}
		if deleted != tt.wantDeleted || l.Len() != tt.wantTotals {
			t.Errorf("%s: deleted %d keys and kept %d totals, want %d and %d", tt.mode, deleted, l.Len(), tt.wantDeleted, tt.wantTotals)
		}
	}
}

// TestSinkStateOnlyAfterSuccess: a Send that fails part-way leaves its
// totals out of TakeState until the resumed Send succeeds, so a process that
// dies in between resends the whole batch from the committed totals.
func TestSinkStateOnlyAfterSuccess(t *testing.T) {
	h := newHarness(t, Config{MaxRetries: 1, MaxUncompressedBytes: 400}, naming.Config{})
	h.fake.Do(func() { h.fake.Script = []datadogtest.Response{{Status: 202}, {Status: 503}, {Status: 503}} })
	points := manyPoints(10)
	if err := h.sink.Send(context.Background(), points); err == nil {
		t.Fatal("first Send: got nil, want the 503")
	}
	// The pipeline does not call TakeState after a retryable error; had
	// the process died here, nothing of this batch would be committed.
	if err := h.sink.Send(context.Background(), points); err != nil {
		t.Fatalf("resumed Send: %v", err)
	}
	u := h.sink.TakeState()
	l := NewLedger(Name, Count, Clamp, fixedClock(), sink.Deps{})
	st := map[string][]byte{}
	apply(st, u)
	if err := l.Restore(st); err != nil {
		t.Fatal(err)
	}
	if got := l.Len(); got != len(points) {
		t.Errorf("committed totals after the resumed Send: got %d, want %d", got, len(points))
	}
	h.fake.CheckClean()
}
