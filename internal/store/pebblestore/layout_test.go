package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

var t0 = time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)

func occs(n, from int) []flowmetrics.Occurrence {
	out := make([]flowmetrics.Occurrence, n)
	for i := range out {
		out[i] = storetest.Occ("Flow", fmt.Sprintf("Step%04d", from+i), t0.Add(time.Duration(from+i)*time.Second))
	}
	return out
}

func mustOpen(t testing.TB, dir string, opts store.Options) *Store {
	t.Helper()
	s, err := Open(dir, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// walBytes is what the store has written to its write-ahead log so far.
func walBytes(s *Store) uint64 { return s.db.Metrics().WAL.BytesIn }

// TestClaimWritesOnlyWhatItAdds: a claim of one new key writes the same
// bytes whether its conversation holds 100 keys or 500, so claim time does
// not grow with the conversation (past maxInlineBytes each claimed key is a
// Pebble key of its own), and a small conversation's claim, which rewrites
// the keys its header carries, writes no more than a large one's.
func TestClaimWritesOnlyWhatItAdds(t *testing.T) {
	ctx := context.Background()
	s := mustOpen(t, t.TempDir(), store.Options{})
	written := func(conv string, o flowmetrics.Occurrence) uint64 {
		before := walBytes(s)
		got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: conv, Occurrences: []flowmetrics.Occurrence{o}}})
		if err != nil || len(got) != 1 {
			t.Fatalf("claim %s in %s: got %d new (err %v), want 1", o.Key, conv, len(got), err)
		}
		return walBytes(s) - before
	}
	for _, tc := range []struct {
		conv string
		keys int
	}{{"small-000000000000000000000000000000", 1}, {"mid-00000000000000000000000000000000", 100}, {"large-000000000000000000000000000000", 500}} {
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: tc.conv, Occurrences: occs(tc.keys, 0)}}); err != nil {
			t.Fatal(err)
		}
	}
	small := written("small-000000000000000000000000000000", occs(1, 9000)[0])
	mid := written("mid-00000000000000000000000000000000", occs(1, 9000)[0])
	large := written("large-000000000000000000000000000000", occs(1, 9000)[0])
	// The header's counts take a byte or two more in the large one.
	if large > mid+8 {
		t.Errorf("one new key: wrote %d bytes into a conversation of 500 keys, %d into one of 100; want the same", large, mid)
	}
	if small > large {
		t.Errorf("one new key: wrote %d bytes into a conversation of 1 key (its header carries them), %d into one of 500; want no more", small, large)
	}
	keys, err := s.Keys(ctx, "large-000000000000000000000000000000")
	if err != nil || len(keys) != 501 {
		t.Errorf("Keys: got %d keys (err %v), want 501", len(keys), err)
	}
}

// TestKeysAreTheConversationsOwn: Keys returns the keys claimed in the
// conversation's current retention only, and no other conversation's, even
// when one id is a prefix of another.
func TestKeysAreTheConversationsOwn(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	s := mustOpen(t, t.TempDir(), store.Options{Retention: time.Hour, Now: clock.Now})
	a, b := occs(2, 0), occs(1, 10)
	claim := func(conv string, o ...flowmetrics.Occurrence) {
		t.Helper()
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: conv, Occurrences: o}}); err != nil {
			t.Fatal(err)
		}
	}
	claim("c", a...)
	claim("c1", b...)
	got, _ := s.Keys(ctx, "c")
	if want := []string{a[0].Key, a[1].Key}; !slices.Equal(got, want) {
		t.Errorf("Keys(c): got %q, want %q", got, want)
	}
	clock.Advance(2 * time.Hour)
	if got, _ := s.Keys(ctx, "c"); len(got) != 0 {
		t.Errorf("Keys(c) after retention: got %q, want none", got)
	}
	claim("c", a[1])
	if got, _ := s.Keys(ctx, "c"); !slices.Equal(got, []string{a[1].Key}) {
		t.Errorf("Keys(c) in its new retention: got %q, want only %q", got, a[1].Key)
	}
	if n, err := s.Sweep(ctx); err != nil || n != 1 {
		t.Errorf("sweep: removed %d (err %v), want 1 (c1)", n, err)
	}
	var headers, records int
	s.scan(keyPrefix, func(k, v []byte) error {
		if _, header := headerOf(k); header {
			headers++
		} else {
			records++
		}
		return nil
	})
	if headers != 1 || records != 0 {
		t.Errorf("after the sweep: %d headers and %d key records stored, want c's header alone (it carries its keys)", headers, records)
	}
}

// TestOpenConvertsTheOldLayout: a store written with one value per
// conversation (c/<id>: last change, then every key) is converted at Open:
// the old keys stay claimed, Keys lists them, and the old values are gone.
func TestOpenConvertsTheOldLayout(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	old := occs(3, 0)
	now := time.Now()
	b := db.NewBatch()
	for i := range 2500 { // more than one conversion batch
		v := binary.AppendVarint(nil, now.UnixNano())
		for _, o := range old {
			v = appendString(v, o.Key)
		}
		b.Set(append([]byte("c/"), fmt.Sprintf("conv-%04d", i)...), v, nil)
	}
	if err := errors.Join(b.Commit(pebble.Sync), db.Close()); err != nil {
		t.Fatal(err)
	}
	s := mustOpen(t, dir, store.Options{})
	got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "conv-2499", Occurrences: append(occs(4, 0), old...)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Key != occs(1, 3)[0].Key {
		t.Errorf("claim after conversion: got %d new, want only the fourth key", len(got))
	}
	if keys, _ := s.Keys(ctx, "conv-0000"); len(keys) != 3 {
		t.Errorf("Keys after conversion: got %q, want the 3 old keys", keys)
	}
	legacy := records(t, s, legacyPrefix)
	if legacy != 0 {
		t.Errorf("%d old values left after Open, want none", legacy)
	}
}

// TestOpenMovesHeadersBesideTheirKeys: a store written with headers under
// h/<id>, apart from their keys, is converted at Open: each header moves to
// its conversation's prefix with its counts and path state, the keys stay
// claimed, Sweep still finds what expired, and no h/ record is left.
func TestOpenMovesHeadersBesideTheirKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := storetest.NewClock(t0)
	opts := store.Options{Retention: time.Hour, Now: clock.Now}
	old := occs(3, 0)
	// Written by this store, then moved back to the old place.
	s := mustOpen(t, dir, opts)
	for i := range 2500 { // more than one conversion batch
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: fmt.Sprintf("conv-%04d", i), Occurrences: old}}); err != nil {
			t.Fatal(err)
		}
	}
	b := s.db.NewBatch()
	err := s.scan(keyPrefix, func(k, v []byte) error {
		if id, ok := headerOf(k); ok {
			b.Set(append(bytes.Clone(oldHeaders), id...), v, nil)
			b.Delete(k, nil)
		}
		return nil
	})
	if err = errors.Join(err, b.Commit(pebble.Sync), s.Close()); err != nil {
		t.Fatal(err)
	}

	s = mustOpen(t, dir, opts)
	left := records(t, s, oldHeaders)
	if left != 0 {
		t.Errorf("%d h/ headers left after Open, want none", left)
	}
	got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "conv-2499", Occurrences: append(occs(4, 0), old...)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Key != occs(1, 3)[0].Key {
		t.Errorf("claim after conversion: got %d new, want only the fourth key", len(got))
	}
	if keys, _ := s.Keys(ctx, "conv-0000"); !slices.Equal(keys, []string{old[0].Key, old[1].Key, old[2].Key}) {
		t.Errorf("Keys after conversion: got %q, want the 3 old keys", keys)
	}
	clock.Advance(2 * time.Hour)
	if n, err := s.Sweep(ctx); err != nil || n != 2500 {
		t.Errorf("sweep after conversion: removed %d (err %v), want 2500", n, err)
	}
}

// TestClaimRefusesAnEmptyKey: a key's record is the conversation's prefix
// followed by the key, so an empty key would be the header: the request is
// refused, and the rest of the batch is claimed.
func TestClaimRefusesAnEmptyKey(t *testing.T) {
	ctx := context.Background()
	s := mustOpen(t, t.TempDir(), store.Options{})
	empty := occs(1, 0)[0]
	empty.Key = ""
	got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{
		{ConversationID: "a", Occurrences: occs(2, 0)},
		{ConversationID: "a", Occurrences: []flowmetrics.Occurrence{occs(1, 5)[0], empty}},
	})
	var re *flowmetrics.RefusedError
	if !errors.As(err, &re) || len(re.Refusals) != 1 || re.Refusals[0].Request != 1 {
		t.Fatalf("claim: got error %v, want request 1 refused", err)
	}
	if len(got) != 2 {
		t.Errorf("claim: got %d new, want 2 (request 0's)", len(got))
	}
	if keys, _ := s.Keys(ctx, "a"); len(keys) != 2 {
		t.Errorf("Keys: got %q, want request 0's 2 keys", keys)
	}
}

// BenchmarkClaimInLargeConversation claims one new key at a time in a
// conversation that already holds keys: the time per claim should not
// depend on how many. Past maxInlineBytes (some 80 of these keys) they
// are records of their own. Every 10 claims it goes on in a fresh
// conversation, filled outside the timer, so a conversation holds from
// held to held+10 keys and never reaches MaxConversationKeys.
//
//	go test ./internal/store/pebblestore -run '^$' -bench ClaimInLarge
func BenchmarkClaimInLargeConversation(b *testing.B) {
	for _, held := range []int{1, 50, 500} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			ctx := context.Background()
			s := mustOpen(b, b.TempDir(), store.Options{})
			var conv string
			convs, i := 0, 0
			fresh := func() {
				convs++
				conv = fmt.Sprintf("5b0a4c6e-2f1d-4d7a-9c3e-%012d", convs)
				if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: conv, Occurrences: occs(held, 0)}}); err != nil {
					b.Fatal(err)
				}
				i = held
			}
			fresh()
			// One claim adds the next key and repeats the ten before it,
			// as an attributes event carries them.
			for b.Loop() {
				if i == held+10 {
					b.StopTimer()
					fresh()
					b.StartTimer()
				}
				req := occs(11, i-10)
				if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: conv, Occurrences: req}}); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}
