package pebblestore

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

func pathOptions(clock *storetest.Clock) store.Options {
	return store.Options{Now: clock.Now, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}}
}

// dueEntries returns the deadline index: conversation id -> deadlines.
func dueEntries(t *testing.T, s *Store) map[string][]int64 {
	t.Helper()
	out := map[string][]int64{}
	err := s.scan(duePrefix, func(k, _ []byte) error {
		k = k[len(duePrefix):]
		out[string(k[8:])] = append(out[string(k[8:])], int64(binary.BigEndian.Uint64(k[:8])))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPathStateRidesOnTheHeader: with paths on, a claim writes no record of
// its own for the path, and moves the conversation's deadline index entry
// only when the deadline moved by a step or more, so the keys a
// conversation gets in quick succession cost what they cost without paths.
func TestPathStateRidesOnTheHeader(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	conv := "c-000000000000000000000000000000000"
	// written returns the bytes each of 5 claims of a new key, a second
	// apart, wrote to the log.
	written := func(s *Store) []uint64 {
		var out []uint64
		for i := range 6 {
			before := walBytes(s)
			if got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: conv, Occurrences: occs(1, i)}}); err != nil || len(got) != 1 {
				t.Fatalf("claim %d: got %d new (%v), want 1", i, len(got), err)
			}
			if i > 0 {
				out = append(out, walBytes(s)-before)
			}
			clock.Advance(time.Second)
		}
		return out
	}
	off := written(mustOpen(t, t.TempDir(), store.Options{Now: clock.Now}))
	first := clock.Now().Add(time.Hour).UnixNano()
	s := mustOpen(t, t.TempDir(), pathOptions(clock))
	on := written(s)
	for i := range on {
		// The header's path state: a flag byte and two deadlines.
		if on[i] > off[i]+20 {
			t.Errorf("claim %d: wrote %d bytes with paths on, %d with paths off; want at most 20 more (no index entry moved)", i+1, on[i], off[i])
		}
	}
	if got := dueEntries(t, s); len(got) != 1 || len(got[conv]) != 1 || got[conv][0] != first {
		t.Errorf("index: got %v, want one entry at the first deadline %d", got, first)
	}
	n := 0
	s.scan(pathPrefix, func(k, v []byte) error { n++; return nil })
	if n != 0 {
		t.Errorf("path records: got %d, want none (the header holds the path)", n)
	}
}

// TestOpenConvertsPathRecords: a store whose path states were records of
// their own (p/) opens with them in the headers, and closes each path once,
// at its deadline.
func TestOpenConvertsPathRecords(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := storetest.NewClock(t0)
	s := mustOpen(t, dir, store.Options{Now: clock.Now})
	a := storetest.Occ("F", "A", t0)
	for _, id := range []string{"open", "closed"} {
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: id, Occurrences: []flowmetrics.Occurrence{a}}}); err != nil {
			t.Fatal(err)
		}
	}
	due := t0.Add(time.Hour).UnixNano()
	oldPath := func(due int64, flags byte) []byte {
		b := binary.AppendVarint(nil, t0.UnixNano())
		b = binary.AppendVarint(b, due)
		return append(b, flags)
	}
	b := s.db.NewBatch()
	b.Set(append([]byte("p/"), "open"...), oldPath(due, 0), nil)
	b.Set(dueKey(due, "open"), nil, nil)
	b.Set(append([]byte("p/"), "closed"...), oldPath(0, pathClosed|pathEnded), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = mustOpen(t, dir, pathOptions(clock))
	closed := map[string]int{}
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		closed[cp.ConversationID]++
		return nil
	}
	if n, err := s.ClosePaths(ctx, time.Unix(0, due-1), 0, derive); err != nil || n != 0 {
		t.Errorf("before the deadline: closed %d (%v), want 0", n, err)
	}
	if n, err := s.ClosePaths(ctx, time.Unix(0, due), 0, derive); err != nil || n != 1 || closed["open"] != 1 {
		t.Errorf("at the deadline: closed %d (%v) %v, want the open one", n, err, closed)
	}
	got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "closed", Occurrences: []flowmetrics.Occurrence{storetest.Occ("F", "B", t0)}}})
	if err != nil || len(got) != 1 || !got[0].AfterClose {
		t.Errorf("late key of the converted closed path: got %+v (%v), want new with AfterClose", got, err)
	}
	n := 0
	s.scan(pathPrefix, func(k, v []byte) error { n++; return nil })
	if n != 0 {
		t.Errorf("path records after opening: got %d, want none", n)
	}
}
