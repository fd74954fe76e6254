package pebblestore

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// stored returns a conversation's header as stored and how many key
// records its prefix holds besides it.
func stored(t *testing.T, s *Store, id string) (h header, size, records int) {
	t.Helper()
	err := s.scan(keyPrefixOf(id), func(k, v []byte) error {
		if len(k) == len(keyPrefixOf(id)) {
			var err error
			h, err = decodeHeader(v)
			size = len(v)
			return err
		}
		records++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return h, size, records
}

func keysOfOccs(os []flowmetrics.Occurrence) []string {
	var out []string
	for _, o := range os {
		out = append(out, o.Key)
	}
	return slices.Sorted(slices.Values(out))
}

// TestKeysSpillPastTheBound: a conversation's header carries its keys,
// one record in all, until they outgrow maxInlineBytes; the claim that
// crosses the bound writes every key as a record of its own in the same
// batch, and from then on a claim writes only the keys it adds, whatever
// the conversation holds. Across the boundary each key is new exactly
// once, Keys lists them all, a new epoch carries its keys in its header
// again (the old epoch's records do not count), and Sweep deletes the
// records with the header.
func TestKeysSpillPastTheBound(t *testing.T) {
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	s := mustOpen(t, t.TempDir(), store.Options{Retention: time.Hour, Now: clock.Now})
	const conv = "5b0a4c6e-2f1d-4d7a-9c3e-000000000001"
	claim := func(os []flowmetrics.Occurrence) []flowmetrics.Occurrence {
		t.Helper()
		got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: conv, Occurrences: os}})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	spill, after := -1, []uint64{}
	for i := 0; spill < 0 || i < spill+20; i++ {
		// As attribute events carry them: the new key and every one
		// before it.
		before := walBytes(s)
		if got := claim(occs(i+1, 0)); len(got) != 1 || got[0].Key != occs(1, i)[0].Key {
			t.Fatalf("claim %d: got %d new, want only key %d", i, len(got), i)
		}
		written := walBytes(s) - before
		h, size, records := stored(t, s, conv)
		switch {
		case h.inline:
			if spill >= 0 {
				t.Fatalf("claim %d: keys back in the header after they spilled at claim %d", i, spill)
			}
			if records != 0 || size > maxInlineBytes+32 {
				t.Fatalf("claim %d: inline header of %d bytes and %d key records, want at most %d bytes and none", i, size, records, maxInlineBytes+32)
			}
		default:
			if spill < 0 {
				spill = i
			}
			if records != i+1 || size > 64 {
				t.Fatalf("claim %d (spilled at %d): header of %d bytes and %d key records, want at most 64 and %d", i, spill, size, records, i+1)
			}
			if i > spill {
				after = append(after, written)
			}
		}
	}
	if spill < 10 {
		t.Errorf("spilled at %d keys, want a header to carry more", spill)
	}
	// Past the bound a claim writes the same, however many keys it holds.
	if first, last := after[0], after[len(after)-1]; last > first+8 {
		t.Errorf("one new key after the spill: wrote %d bytes, then %d 18 keys later; want the same", first, last)
	}
	all := occs(spill+20, 0)
	if got := claim(all); len(got) != 0 {
		t.Errorf("all %d keys again: got %d new, want none", len(all), len(got))
	}
	if keys, err := s.Keys(ctx, conv); err != nil || !slices.Equal(keys, keysOfOccs(all)) {
		t.Errorf("Keys: got %d (%v), want the %d claimed", len(keys), err, len(all))
	}

	// A new epoch: its keys ride in the header again, and the spilled
	// records of the old one are not held.
	clock.Advance(2 * time.Hour)
	if got := claim(occs(2, 0)); len(got) != 2 {
		t.Errorf("new epoch: got %d new, want 2", len(got))
	}
	if h, _, _ := stored(t, s, conv); !h.inline {
		t.Errorf("new epoch of 2 keys: header does not carry them")
	}
	if keys, _ := s.Keys(ctx, conv); !slices.Equal(keys, keysOfOccs(occs(2, 0))) {
		t.Errorf("Keys in the new epoch: got %d keys, want 2", len(keys))
	}
	// One claim past the bound spills in one batch.
	if got := claim(all); len(got) != len(all)-2 {
		t.Errorf("new epoch, one claim of %d keys: got %d new, want %d", len(all), len(got), len(all)-2)
	}
	if h, _, _ := stored(t, s, conv); h.inline || h.keys != len(all) {
		t.Errorf("after one claim past the bound: inline %v, %d keys; want spilled, %d", h.inline, h.keys, len(all))
	}
	if keys, _ := s.Keys(ctx, conv); !slices.Equal(keys, keysOfOccs(all)) {
		t.Errorf("Keys after the spill: got %d, want %d", len(keys), len(all))
	}
	clock.Advance(2 * time.Hour)
	sweepsAll(t, s, 1)
}

// oldHeader encodes h as stores wrote headers before keys could be inline:
// the counts, then, with path state, its flags, deadline and filing, and,
// with keys given, the copy of the keys those headers carried for the
// close (a count, then each key).
func oldHeader(h header, keys []string) []byte {
	h.inline, h.inlineKeys = false, nil
	b := h.encode()
	if h.path == (store.Path{}) || len(keys) == 0 {
		return b
	}
	b = append(b, byte(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
	}
	return b
}

// TestOldPerKeyLayoutStays: a store written before keys were inline (a
// header without them, one record per key, and, for an open path, a copy
// of the keys in the header) keeps working without conversion: a claim
// finds its keys in their records and adds new ones there, Keys lists
// them, the close derives the path from every key, and Sweep deletes the
// records with the header.
func TestOldPerKeyLayoutStays(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := storetest.NewClock(t0)
	opts := pathOptions(clock)
	opts.Retention = 24 * time.Hour
	s := mustOpen(t, dir, opts)
	first := occs(3, 0)
	ids := []string{"plain", "open"}
	for _, id := range ids {
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: id, Occurrences: first}}); err != nil {
			t.Fatal(err)
		}
	}
	// Rewritten in the old layout.
	b := s.db.NewBatch()
	for _, id := range ids {
		h, _, _ := stored(t, s, id)
		keys, err := h.inlineList()
		if err != nil || len(keys) != 3 {
			t.Fatalf("%s: header carries %q (%v), want 3 keys", id, keys, err)
		}
		st := &staged{id: id, prefix: keyPrefixOf(id), h: h}
		var nk newKeys
		for _, k := range keys {
			nk.add(st, k)
		}
		copyKeys := keys
		if id == "plain" {
			h.path, copyKeys = store.Path{}, nil
		}
		nk.put(st.prefix, oldHeader(h, copyKeys))
		if err := nk.write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(b.Commit(pebble.Sync), s.Close()); err != nil {
		t.Fatal(err)
	}

	s = mustOpen(t, dir, opts)
	for _, id := range ids {
		if h, _, records := stored(t, s, id); h.inline || records != 3 {
			t.Fatalf("%s in the old layout: inline %v, %d key records; want 3 records", id, h.inline, records)
		}
		got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: id, Occurrences: occs(4, 0)}})
		if err != nil || len(got) != 1 || got[0].Key != occs(1, 3)[0].Key {
			t.Errorf("%s: claim of its 3 keys and a 4th: got %d new (%v), want only the 4th", id, len(got), err)
		}
		if h, _, records := stored(t, s, id); h.inline || records != 4 || h.keys != 4 {
			t.Errorf("%s after the claim: inline %v, %d keys, %d records; want its 4 keys in records", id, h.inline, h.keys, records)
		}
		if keys, err := s.Keys(ctx, id); err != nil || !slices.Equal(keys, keysOfOccs(occs(4, 0))) {
			t.Errorf("%s: Keys got %q (%v), want the 4", id, keys, err)
		}
	}
	var derived []string
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		derived = slices.Sorted(slices.Values(cp.Keys))
		return nil
	}
	if n, err := s.ClosePathsOf(ctx, []string{"open"}, clock.Now().Add(2*time.Hour), derive); err != nil || n != 1 {
		t.Fatalf("close: closed %d (%v), want 1", n, err)
	}
	if !slices.Equal(derived, keysOfOccs(occs(4, 0))) {
		t.Errorf("close derived from %q, want the 4 keys", derived)
	}
	clock.Advance(48 * time.Hour)
	sweepsAll(t, s, 2)
}

// FuzzInlineKeys: any set of keys (here the lines of the input, whatever
// their bytes: no "(", several, empty parts) reads back from its encoding
// as it was, and any bytes read as encoded keys give as many keys of as
// many bytes as the header counts, or an error, never a panic.
func FuzzInlineKeys(f *testing.F) {
	f.Add("A.FlowMetric_Start(2026-11-01T00:00:13.427Z)\nB.FlowMetric_End(2026-11-01T00:03:01.002Z)\nno time\n((\n(x\nx(")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		keys := slices.Compact(slices.Sorted(slices.Values(strings.Split(in, "\n"))))
		size := 0
		for _, k := range keys {
			size += len(k)
		}
		enc := encodeKeys(nil, keys)
		got, err := decodeKeys(enc, len(keys), size)
		if err != nil || !slices.Equal(got, keys) {
			t.Fatalf("round trip of %q: got %q (%v)", keys, got, err)
		}
		// Bytes that decode give the count and the size asked for.
		if got, err := decodeKeys([]byte(in), len(keys), size); err == nil {
			n := 0
			for _, k := range got {
				n += len(k)
			}
			if len(got) != len(keys) || n != size {
				t.Fatalf("decode of %q as %d keys of %d bytes: got %d of %d", in, len(keys), size, len(got), n)
			}
		}
	})
}

// sweepsAll sweeps s, which must remove want conversations and leave no
// record of any conversation behind.
func sweepsAll(t *testing.T, s *Store, want int) {
	t.Helper()
	if n, err := s.Sweep(context.Background()); err != nil || n != want {
		t.Errorf("sweep: removed %d (%v), want %d", n, err, want)
	}
	if n := records(t, s, keyPrefix); n != 0 {
		t.Errorf("after the sweep: %d records under m/, want none", n)
	}
}
