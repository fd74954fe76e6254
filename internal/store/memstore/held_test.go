package memstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
)

// TestHeldKeys: the store says which of a conversation's keys it holds,
// only for as long as a claim would still find them (its retention, less
// the margin asked), and whether a request of only held keys would change
// its path; what it says agrees with what a claim then does.
func TestHeldKeys(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	opts := &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}
	step := opts.Step()
	const retention = 24 * time.Hour
	s := memstore.New(store.Options{Now: func() time.Time { return now }, Retention: retention, Paths: opts})
	claim := func(conv string, ended bool, keys ...string) int {
		t.Helper()
		rq := flowmetrics.ClaimRequest{ConversationID: conv, Ended: ended}
		for _, k := range keys {
			rq.Occurrences = append(rq.Occurrences, flowmetrics.Occurrence{Key: k, Flow: "F", Metric: k, Time: now})
		}
		fresh, err := s.Claim(ctx, []flowmetrics.ClaimRequest{rq})
		if err != nil {
			t.Fatal(err)
		}
		return len(fresh)
	}
	type q = flowmetrics.KeyQuery
	ask := func(margin time.Duration, qs ...q) string {
		t.Helper()
		s.HeldKeys(qs, margin)
		var out string
		for _, q := range qs {
			out += fmt.Sprintf("%s:%b,%t ", q.ConversationID, q.Held, q.Quiet)
		}
		return out
	}
	check := func(got, want string) {
		t.Helper()
		if got != want+" " {
			t.Errorf("got %q, want %q", got, want+" ")
		}
	}

	claim("c1", false, "a", "b")
	start := now
	claim("c2", false, "a")
	// Held bits in the order asked; Quiet: the deadline (a step past
	// Idle after new keys) is not passed by Idle after the margin's end.
	// An unknown conversation holds nothing; answers set before are
	// overwritten.
	check(ask(time.Minute, q{ConversationID: "c1", Keys: []string{"b", "x", "a"}}, q{ConversationID: "c2", Keys: []string{"b"}},
		q{ConversationID: "c3", Keys: []string{"a"}, Held: 1, Quiet: true}),
		"c1:101,true c2:0,true c3:0,false")
	// A margin of more than a step: a request then would move the
	// deadline.
	check(ask(step, q{ConversationID: "c1", Keys: []string{"a"}}), "c1:1,true")
	check(ask(step+time.Second, q{ConversationID: "c1", Keys: []string{"a"}}), "c1:1,false")
	now = now.Add(step - time.Second)
	check(ask(0, q{ConversationID: "c1", Keys: []string{"a"}}), "c1:1,true")
	check(ask(2*time.Second, q{ConversationID: "c1", Keys: []string{"a"}}), "c1:1,false")
	// What Quiet says, the claim does: within the margin, nothing moves;
	// past it, the deadline (and the retention) does.
	if n := claim("c1", false, "a"); n != 0 {
		t.Fatalf("claimed %d held keys", n)
	}
	// An ended path, or a closed one, only hears of new keys.
	claim("c1", true)
	check(ask(time.Hour, q{ConversationID: "c1", Keys: []string{"a", "b"}}), "c1:11,true")
	if n, err := s.ClosePaths(ctx, now.Add(opts.Grace), 0, func(flowmetrics.ClosedPath) []flowmetrics.PathPoint { return nil }); n != 1 || err != nil {
		t.Fatalf("ClosePaths: %d, %v", n, err)
	}
	check(ask(time.Hour, q{ConversationID: "c1", Keys: []string{"a", "b"}}), "c1:11,true")

	// Retention: c2 last changed at start. A key is held only if the
	// conversation outlives the margin; a claim after that starts it over.
	now = start.Add(retention - time.Minute)
	check(ask(30*time.Second, q{ConversationID: "c2", Keys: []string{"a"}}), "c2:1,false") // its path long due
	check(ask(time.Minute, q{ConversationID: "c2", Keys: []string{"a"}}), "c2:0,false")
	now = now.Add(time.Minute)
	if n := claim("c2", false, "a"); n != 1 {
		t.Errorf("c2 expired: claimed %d, want a again", n)
	}

	// Only the first 64 keys are asked about.
	var many []string
	for i := range 70 {
		many = append(many, fmt.Sprintf("k%02d", i))
	}
	claim("c4", false, many[60:]...)
	qs := []q{{ConversationID: "c4", Keys: many}}
	s.HeldKeys(qs, 0)
	if want := uint64(0xf) << 60; qs[0].Held != want {
		t.Errorf("c4: held %x, want %x", qs[0].Held, want)
	}

	// Without paths, a request of held keys changes nothing.
	plain := memstore.New(store.Options{})
	if _, err := plain.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c1", Occurrences: []flowmetrics.Occurrence{{Key: "a"}}}}); err != nil {
		t.Fatal(err)
	}
	qs = []q{{ConversationID: "c1", Keys: []string{"a", "b"}}}
	plain.HeldKeys(qs, time.Hour)
	if qs[0].Held != 1 || !qs[0].Quiet {
		t.Errorf("without paths: got %+v, want a held, quiet", qs[0])
	}
	// A closed store holds nothing.
	plain.Close()
	plain.HeldKeys(qs, 0)
	if qs[0].Held != 0 || qs[0].Quiet {
		t.Errorf("closed: got %+v, want nothing held", qs[0])
	}
}
