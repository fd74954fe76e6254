package pebblestore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// TestClosesReadHeldHeadersAsPebble: a store whose closes take the headers
// of ended paths from memory (endedHeaders) and whose claims take the
// headers claims wrote lately (recentHeaders), one with room for only a
// few of either, and one that reads them all from Pebble, given the same
// random claims (new and repeated keys, ends before and after keys, keys
// past what a header carries), closes by name (applied and waited for, or
// at once), closes through the deadline index, sweeps of expired
// conversations and restarts, close the same paths with the same keys,
// claim the same occurrences and end with the same records. With paths
// off, the same without the closes.
func TestClosesReadHeldHeadersAsPebble(t *testing.T) {
	ctx := context.Background()
	for _, paths := range []bool{true, false} {
		for seed := range uint64(3) {
			t.Run(fmt.Sprintf("paths=%v/%d", paths, seed), func(t *testing.T) { testHeldHeaders(t, ctx, paths, seed) })
		}
	}
}

func testHeldHeaders(t *testing.T, ctx context.Context, paths bool, seed uint64) {
	{
		{
			clock := storetest.NewClock(t0)
			opts := store.Options{Now: clock.Now, Retention: 3 * time.Hour, RecentHeaderBytes: 1 << 20}
			if paths {
				opts.Paths = &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}
			}
			dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
			stores := make([]*Store, len(dirs))
			open := func() {
				for i, dir := range dirs {
					if stores[i] != nil {
						stores[i].Close()
					}
					s, err := Open(dir, opts, nil)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { s.Close() })
					stores[i] = s
				}
				// The second holds a few headers, the third none.
				stores[1].ended = newEndedHeaders(1200)
				stores[2].ended = newEndedHeaders(0)
				stores[1].recent = newRecentHeaders(2000)
				stores[2].recent = newRecentHeaders(0)
			}
			open()
			rng := rand.New(rand.NewPCG(seed, 14))
			convs := make([]string, 24)
			for i := range convs {
				convs[i] = fmt.Sprintf("conv-%02d", i)
			}
			// A few conversations get keys long enough to outgrow a header.
			key := func(conv string, i int) flowmetrics.Occurrence {
				flow := "Flow"
				if conv < "conv-03" {
					flow = strings.Repeat("LongFlowName", 8)
				}
				return storetest.Occ(flow, fmt.Sprintf("M%d", i), t0.Add(time.Duration(i)*time.Second))
			}
			held, limited := 0, 0             // closes that found headers held; steps the second store held fewer
			recentHeld, recentLimited := 0, 0 // the same of claims
			for step := range 400 {
				switch op := rng.IntN(20); {
				case op < 11:
					var reqs []flowmetrics.ClaimRequest
					for range 1 + rng.IntN(4) {
						c := convs[rng.IntN(len(convs))]
						r := flowmetrics.ClaimRequest{ConversationID: c, Ended: rng.IntN(5) == 0}
						for range rng.IntN(4) {
							r.Occurrences = append(r.Occurrences, key(c, rng.IntN(24)))
						}
						reqs = append(reqs, r)
					}
					if r := stores[0].recent; len(r.cur)+len(r.old) > 0 {
						recentHeld++
					}
					got := make([][]string, len(stores))
					for i, s := range stores {
						occ, err := s.Claim(ctx, reqs)
						if err != nil {
							t.Fatalf("step %d: claim: %v", step, err)
						}
						for _, o := range occ {
							got[i] = append(got[i], fmt.Sprintf("%s %v", o.Key, o.AfterClose))
						}
					}
					for i := range 2 {
						if !slices.Equal(got[i], got[2]) {
							t.Fatalf("step %d: claimed %q with headers held (store %d), %q without", step, got[i], i, got[2])
						}
					}
				case op < 14:
					clock.Advance(time.Duration(rng.IntN(150)) * time.Second)
				case op == 14:
					clock.Advance(time.Duration(rng.IntN(5)) * time.Hour)
				case op < 18 && !paths:
				case op < 18:
					var ids []string
					for range 1 + rng.IntN(8) {
						ids = append(ids, convs[rng.IntN(len(convs))])
					}
					if len(stores[0].ended.m) > 0 {
						held++
					}
					byName := op < 17
					limit := 1 + rng.IntN(6)
					got := make([]string, len(stores))
					for i, s := range stores {
						var paths []string
						derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
							paths = append(paths, fmt.Sprintf("%s %v %q", cp.ConversationID, cp.Ended, slices.Sorted(slices.Values(cp.Keys))))
							return []flowmetrics.PathPoint{{Kind: flowmetrics.PathExit, Flow: "F", Metric: fmt.Sprint(len(cp.Keys)), Time: t0, Conversation: cp.ConversationID}}
						}
						var n int
						var err error
						switch {
						case byName && step%2 == 0:
							n, err = s.ClosePathsOf(ctx, ids, clock.Now(), derive)
						case byName:
							var wait func() error
							if n, wait, err = s.StartClosePathsOf(ctx, ids, clock.Now(), derive); err == nil {
								// No claim follows it: durable now.
								if err = s.SyncLog(); err == nil {
									err = wait()
								}
							}
						default:
							n, err = s.ClosePaths(ctx, clock.Now(), limit, derive)
						}
						if err != nil {
							t.Fatalf("step %d: close: %v", step, err)
						}
						slices.Sort(paths)
						got[i] = fmt.Sprint(n, paths)
					}
					for i := range 2 {
						if got[i] != got[2] {
							t.Fatalf("step %d: closed %s with headers held (store %d), %s without", step, got[i], i, got[2])
						}
					}
				case op == 18:
					n := make([]int, len(stores))
					for i, s := range stores {
						var err error
						if n[i], err = s.Sweep(ctx); err != nil {
							t.Fatal(err)
						}
					}
					if n[0] != n[2] || n[1] != n[2] {
						t.Fatalf("step %d: swept %v (the last without headers held)", step, n)
					}
				default:
					open()
				}
				if len(stores[1].ended.m) < len(stores[0].ended.m) {
					limited++
				}
				if r0, r1 := stores[0].recent, stores[1].recent; len(r1.cur)+len(r1.old) < len(r0.cur)+len(r0.old) {
					recentLimited++
				}
				for i, s := range stores[:2] {
					if e := s.ended; e.size > e.limit || len(e.m) > 0 && e.size < len(e.m)*128 {
						t.Fatalf("step %d: store %d holds %d headers in %d bytes, limit %d", step, i, len(e.m), e.size, e.limit)
					}
					if r := s.recent; r.curSize > r.half || len(r.cur) > 0 && r.curSize < len(r.cur)*128 {
						t.Fatalf("step %d: store %d holds %d recent headers in %d bytes, limit %d", step, i, len(r.cur), r.curSize, r.half)
					}
				}
				if t.Failed() {
					return
				}
			}
			if paths && (held == 0 || limited == 0) {
				t.Errorf("%d closes found headers held, %d steps found the second store full: the test does not test both", held, limited)
			}
			if recentHeld == 0 || recentLimited == 0 {
				t.Errorf("%d claims found headers held, %d steps found the second store's recent headers fewer: the test does not test both", recentHeld, recentLimited)
			}
			for _, prefix := range [][]byte{keyPrefix, duePrefix} {
				want := dump(t, stores[2], prefix)
				for i := range 2 {
					got := dump(t, stores[i], prefix)
					if !slices.EqualFunc(got, want, func(x, y [2][]byte) bool { return bytes.Equal(x[0], y[0]) && bytes.Equal(x[1], y[1]) }) {
						t.Errorf("records under %q differ: %d with headers held (store %d), %d without", prefix, len(got), i, len(want))
					}
				}
			}
		}
	}
}

// dump returns every record under prefix.
func dump(t *testing.T, s *Store, prefix []byte) [][2][]byte {
	t.Helper()
	var out [][2][]byte
	if err := s.scan(prefix, func(k, v []byte) error {
		out = append(out, [2][]byte{bytes.Clone(k), bytes.Clone(v)})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}
