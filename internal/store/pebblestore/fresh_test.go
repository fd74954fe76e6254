package pebblestore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// TestFreshFilterNeverHidesAnAdded adds prefixes to filters of one block
// and of many, and checks that none added is ever reported absent (while
// some not added are, until the filter is full), and that past its bound
// the filter reports nothing absent.
func TestFreshFilterNeverHidesAnAdded(t *testing.T) {
	for _, blocks := range []int{1, 64} {
		const max = 500
		f := newFreshFilter(blocks, max)
		prefix := func(i int) []byte { return keyPrefixOf(fmt.Sprintf("conv-%d", i)) }
		for i := range max {
			f.add(prefix(i))
			for j := 0; j <= i; j += 1 + j/8 {
				if f.absent(prefix(j)) {
					t.Fatalf("%d blocks: conversation %d absent after %d added", blocks, j, i+1)
				}
			}
		}
		absent := 0
		for i := max; i < 2*max; i++ {
			if f.absent(prefix(i)) {
				absent++
			}
		}
		if blocks > 1 && absent < max/2 {
			t.Errorf("%d blocks: %d of %d conversations never added reported absent", blocks, absent, max)
		}
		f.add(prefix(max)) // one past the bound
		for i := range 2 * max {
			if f.absent(prefix(i)) {
				t.Fatalf("%d blocks: conversation %d absent past the bound", blocks, i)
			}
		}
	}
}

// TestFreshStoreAgainstModel claims random keys of random conversations
// in batches, into a store that held none at Open, and checks each
// claim's new occurrences against a model of what the store holds: with
// the filter as Open makes it, and with one of a single block that is
// turned off halfway (false positives, then none of its answers). It
// checks that the filter answered the reads of new conversations, and
// that a store reopened with conversations in it has none.
func TestFreshStoreAgainstModel(t *testing.T) {
	for _, small := range []bool{false, true} {
		t.Run(fmt.Sprintf("small=%v", small), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			clock := storetest.NewClock(t0)
			opts := store.Options{Now: clock.Now}
			s := mustOpen(t, dir, opts)
			if s.fresh == nil {
				t.Fatal("a new store has no filter of claimed conversations")
			}
			if small {
				s.fresh = newFreshFilter(1, 300)
			}
			rng := rand.New(rand.NewPCG(7, 8))
			held := map[string]bool{} // conversation + "\x00" + key
			check := func(round int) {
				t.Helper()
				var reqs []flowmetrics.ClaimRequest
				want := map[string]bool{}
				for range 200 + rng.IntN(200) {
					conv := fmt.Sprintf("conv-%d", rng.IntN(600))
					var os []flowmetrics.Occurrence
					for range 1 + rng.IntN(3) {
						o := storetest.Occ(conv, fmt.Sprintf("M%d", rng.IntN(4)), t0)
						os = append(os, o)
						if !held[conv+"\x00"+o.Key] {
							want[conv+"\x00"+o.Key] = true
						}
					}
					reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: conv, Occurrences: os})
				}
				got, err := s.Claim(ctx, reqs)
				if err != nil {
					t.Fatal(err)
				}
				for _, o := range got {
					k := o.Flow + "\x00" + o.Key
					if !want[k] {
						t.Fatalf("round %d: %q new, but held or claimed twice", round, k)
					}
					delete(want, k)
					held[k] = true
				}
				if len(want) > 0 {
					t.Fatalf("round %d: %d keys never claimed before not new, such as %v", round, len(want), want)
				}
			}
			for round := range 30 {
				check(round)
				if round == 5 {
					if err := s.db.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if small && !s.fresh.off.Load() {
				t.Fatal("the small filter is still on past its bound")
			}
			if s.freshSkips.Load() == 0 {
				t.Fatal("the filter answered no header read")
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = mustOpen(t, dir, opts)
			defer s.Close()
			if s.fresh != nil {
				t.Fatal("a store opened with conversations in it has a filter of claimed conversations")
			}
			for round := 30; round < 35; round++ {
				check(round)
			}
		})
	}
}
