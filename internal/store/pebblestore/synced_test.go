package pebblestore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// TestLogMarksCoverWhatCameBefore: a claim's sync makes durable the closes
// applied before the claim began, not those applied after.
func TestLogMarksCoverWhatCameBefore(t *testing.T) {
	l := newLogMarks()
	first := l.closed()
	claim := l.before() // a claim begins: it follows first in the log
	second := l.closed()
	l.synced(claim)
	if l.durable < first {
		t.Errorf("the close before the synced claim: durable %d, want at least its mark %d", l.durable, first)
	}
	if l.durable >= second {
		t.Errorf("the close after the claim began: durable %d, want below its mark %d", l.durable, second)
	}
	l.synced(claim - 1) // an older claim's sync, done later, moves nothing back
	if l.durable != claim {
		t.Errorf("durable %d after an older sync, want %d", l.durable, claim)
	}
}

// TestStartedCloseDurableWithTheNextClaim: a close started by name is
// applied without a sync of its own; its points are not read from the
// outbox until a claim applied after it is durable, and are then (the
// claim's sync made the close durable: the log keeps their order);
// SyncLog makes a close no claim follows durable.
func TestStartedCloseDurableWithTheNextClaim(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	s := mustOpen(t, t.TempDir(), store.Options{Now: func() time.Time { return at }, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}})
	if err := s.Register(ctx, []string{"sink"}); err != nil {
		t.Fatal(err)
	}
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		return []flowmetrics.PathPoint{{Kind: flowmetrics.PathExit, Flow: "F", Metric: "M", Conversation: cp.ConversationID, Time: at}}
	}
	claim := func(conv string, ended bool) {
		t.Helper()
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: conv, Occurrences: occs(1, len(conv)), Ended: ended}}); err != nil {
			t.Fatal(err)
		}
	}
	paths := func() int {
		t.Helper()
		entries, err := s.ReadOutbox(ctx, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range entries {
			n += len(e.Paths)
		}
		return n
	}
	for i, last := range []bool{false, true} {
		conv := fmt.Sprint("c", i)
		claim(conv, true)
		n, wait, err := s.StartClosePathsOf(ctx, []string{conv}, at.Add(2*time.Minute), derive)
		if err != nil || n != 1 {
			t.Fatalf("%s: started close: closed %d (%v), want 1", conv, n, err)
		}
		if got := paths(); got != i {
			t.Errorf("%s: %d path points readable before the close is durable, want %d", conv, got, i)
		}
		if last {
			if err := s.SyncLog(); err != nil {
				t.Fatal(err)
			}
		} else {
			claim("after", false)
		}
		if s.marks.durable < s.marks.before() {
			t.Errorf("%s: durable mark %d, want the close's %d", conv, s.marks.durable, s.marks.before())
		}
		if err := wait(); err != nil {
			t.Fatal(err)
		}
		if got := paths(); got != i+1 {
			t.Errorf("%s: %d path points readable once durable, want %d", conv, got, i+1)
		}
	}
}
