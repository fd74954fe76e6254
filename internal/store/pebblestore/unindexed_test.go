package pebblestore

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// TestDeferredIndexClosesEveryPath: a store told to defer its deadline
// index (DeferPathIndex, as a replay does) files no entry while it claims
// and closes by name, and still closes every open path exactly once, with
// the same keys as a store that filed them all along: through ClosePaths
// in the same process, and after a restart (with paths off in between,
// which leaves the index incomplete), where Open completes it.
func TestDeferredIndexClosesEveryPath(t *testing.T) {
	for _, restart := range []bool{false, true} {
		t.Run(fmt.Sprintf("restart=%v", restart), func(t *testing.T) {
			ctx := context.Background()
			clock := storetest.NewClock(t0)
			run := func(deferIndex bool) (byName, later map[string][]string, entries int) {
				dir := t.TempDir()
				s := mustOpen(t, dir, pathOptions(clock))
				if deferIndex {
					if err := s.DeferPathIndex(); err != nil {
						t.Fatal(err)
					}
				}
				var named []string
				for i := range 300 {
					id := fmt.Sprintf("conv-%04d", i)
					req := flowmetrics.ClaimRequest{ConversationID: id, Occurrences: occs(1+i%4, i%7), Ended: i%3 == 0}
					if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req}); err != nil {
						t.Fatal(err)
					}
					if i%3 == 0 && i%2 == 0 {
						named = append(named, id)
					}
				}
				// A late key of a conversation closed by name, and one more
				// request of an open one.
				collect := func(into map[string][]string) flowmetrics.Deriver {
					return func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
						if _, dup := into[cp.ConversationID]; dup {
							t.Errorf("%s closed twice", cp.ConversationID)
						}
						into[cp.ConversationID] = slices.Clone(cp.Keys)
						return []flowmetrics.PathPoint{{Kind: flowmetrics.PathExit, Flow: "F", Metric: "M", Time: t0}}
					}
				}
				byName, later = map[string][]string{}, map[string][]string{}
				asOf := clock.Now().Add(2 * time.Minute)
				if _, err := s.ClosePathsOf(ctx, named, asOf, collect(byName)); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "conv-0001", Occurrences: occs(1, 50)}}); err != nil {
					t.Fatal(err)
				}
				entries = len(dueEntries(t, s))
				if restart {
					s.Close()
					s = mustOpen(t, dir, store.Options{Now: clock.Now}) // paths off: the index stays as it is
					s.Close()
					s = mustOpen(t, dir, pathOptions(clock))
					if deferIndex && s.unindexed.Load() {
						t.Error("reopened with paths on: the index is still incomplete")
					}
				}
				for {
					n, err := s.ClosePaths(ctx, clock.Now().Add(2*time.Hour), 64, collect(later))
					if err != nil {
						t.Fatal(err)
					}
					if n == 0 {
						break
					}
				}
				if left := dueEntries(t, s); len(left) != 0 {
					t.Errorf("index entries left after every path closed: %v", left)
				}
				if n := records(t, s, unindexedKey); n != 0 {
					t.Errorf("the marker of an incomplete index is still there")
				}
				return byName, later, entries
			}
			wantByName, wantLater, filed := run(false)
			gotByName, gotLater, unfiled := run(true)
			if unfiled != 0 || filed == 0 {
				t.Errorf("index entries before the end: %d deferred, %d filed; want none deferred", unfiled, filed)
			}
			if len(wantByName) != 50 || len(wantLater) != 250 {
				t.Fatalf("control: %d closed by name, %d later; want 50 and 250", len(wantByName), len(wantLater))
			}
			for what, pair := range map[string][2]map[string][]string{"by name": {gotByName, wantByName}, "later": {gotLater, wantLater}} {
				if !maps.EqualFunc(pair[0], pair[1], slices.Equal[[]string]) {
					t.Errorf("closed %s: got %d paths, want %d, or other keys", what, len(pair[0]), len(pair[1]))
				}
			}
		})
	}
}
