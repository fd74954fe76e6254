package pebblestore

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// TestLargeClaimReadInParts: a claim of many conversations reads them in
// parts at once, and finds new exactly the keys a claim of each alone
// would: of conversations whose keys ride in their header, whose keys
// spilled to records of their own, whose state expired (all new again), of
// new ones, and of one asked about twice in the batch.
func TestLargeClaimReadInParts(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(maxReadParts))
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	const retention = time.Hour
	s := mustOpen(t, t.TempDir(), store.Options{Retention: retention, Now: clock.Now})
	id := func(kind string, i int) string { return fmt.Sprintf("%s-%04d", kind, i) }
	claim := func(reqs []flowmetrics.ClaimRequest) []flowmetrics.Occurrence {
		t.Helper()
		got, err := s.Claim(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	const per = minReadPart
	// A conversation's keys name it (as their flow), so each new key
	// returned says whose it is.
	occsOf := func(conv string, n, from int) []flowmetrics.Occurrence {
		os := occs(n, from)
		for j := range os {
			os[j] = storetest.Occ(conv, os[j].Metric, os[j].Time)
		}
		return os
	}
	// Expired: claimed a retention ago.
	var reqs []flowmetrics.ClaimRequest
	for i := range per {
		reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: id("expired", i), Occurrences: occsOf(id("expired", i), 3, 0)})
	}
	claim(reqs)
	clock.Advance(retention + time.Minute)
	// Held: three keys in the header, or two hundred, spilled.
	reqs = nil
	for i := range per {
		reqs = append(reqs,
			flowmetrics.ClaimRequest{ConversationID: id("inline", i), Occurrences: occsOf(id("inline", i), 3, i%5)},
			flowmetrics.ClaimRequest{ConversationID: id("spilled", i), Occurrences: occsOf(id("spilled", i), 200, i%5)})
	}
	claim(reqs)
	if h, _, records := stored(t, s, id("spilled", 0)); h.inline || records != 200 {
		t.Fatalf("spilled conversation: inline %v, %d key records; want its 200 keys spilled", h.inline, records)
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}

	// One batch: each conversation asks for two keys it holds (if any)
	// and two it does not.
	reqs = nil
	want := map[string][]string{}
	ask := func(conv string, from int, held bool) {
		os := occsOf(conv, 4, from)
		reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: conv, Occurrences: os})
		for j, o := range os {
			if !held || j >= 2 {
				want[conv] = append(want[conv], o.Key)
			}
		}
	}
	for i := range per {
		ask(id("expired", i), 1, false)
		ask(id("inline", i), i%5+1, true)
		ask(id("spilled", i), i%5+198, true)
		ask(id("new", i), 0, false)
	}
	// Asked again in the same batch: the keys the first request adds are
	// held.
	reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: id("new", 0), Occurrences: occsOf(id("new", 0), 5, 0)})
	want[id("new", 0)] = append(want[id("new", 0)], occsOf(id("new", 0), 1, 4)[0].Key)
	if parts := readParts(4 * per); parts < 2 {
		t.Fatalf("a batch of %d conversations is read in %d part, want several", 4*per, parts)
	}
	got := map[string][]string{}
	for _, o := range claim(reqs) {
		got[o.Flow] = append(got[o.Flow], o.Key)
	}
	for conv, keys := range want {
		if g := slices.Sorted(slices.Values(got[conv])); !slices.Equal(g, slices.Sorted(slices.Values(keys))) {
			t.Errorf("%s: new %q, want %q", conv, g, keys)
		}
	}
	for conv := range got {
		if _, ok := want[conv]; !ok {
			t.Errorf("%s: new %q, want none", conv, got[conv])
		}
	}
}
