package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// runPairs is the cardinality guard's admitted set (AdmitPairs, Pairs).
func runPairs(t *testing.T, h Harness) {
	t.Run("PairsAdmittedUpToLimit", func(t *testing.T) { testPairsLimit(t, h) })
	t.Run("PairsAdmittedOnceUnderConcurrency", func(t *testing.T) { testPairsConcurrent(t, h) })
	if h.Reopen != nil || h.Another != nil {
		t.Run("PairsDurable", func(t *testing.T) { testPairsDurable(t, h) })
	}
}

func pair(f, m string) flowmetrics.Pair { return flowmetrics.Pair{Flow: f, Metric: m} }

func pairsString(ps []flowmetrics.Pair) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.Flow + "/" + p.Metric)
	}
	return b.String()
}

func mustAdmit(t *testing.T, s flowmetrics.Store, limit int, ps ...flowmetrics.Pair) string {
	t.Helper()
	got, err := s.AdmitPairs(context.Background(), ps, limit)
	if err != nil {
		t.Fatalf("AdmitPairs: %v", err)
	}
	return pairsString(got)
}

func testPairsLimit(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Open(t, store.Options{})
	if got, err := s.Pairs(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Pairs of a new store: got %q, %v; want none", pairsString(got), err)
	}
	steps := []struct {
		name  string
		limit int
		add   []flowmetrics.Pair
		want  string
	}{
		{"in order, a repeat once", 3, []flowmetrics.Pair{pair("A", "x"), pair("B", "x"), pair("A", "x")}, "A/x B/x"},
		{"admitted ones stay, the limit stops the rest", 3, []flowmetrics.Pair{pair("B", "x"), pair("C", "y"), pair("D", "z")}, "A/x B/x C/y"},
		{"full: nothing more", 3, []flowmetrics.Pair{pair("E", "e")}, "A/x B/x C/y"},
		{"a lowered limit keeps the set", 1, []flowmetrics.Pair{pair("F", "f")}, "A/x B/x C/y"},
		{"a raised limit admits more", 4, []flowmetrics.Pair{pair("E", "e"), pair("G", "g")}, "A/x B/x C/y E/e"},
		{"flow and metric both make the pair", 6, []flowmetrics.Pair{pair("A", "y"), pair("x", "A")}, "A/x B/x C/y E/e A/y x/A"},
	}
	for _, st := range steps {
		if got := mustAdmit(t, s, st.limit, st.add...); got != st.want {
			t.Errorf("%s: got %q, want %q", st.name, got, st.want)
		}
	}
	got, err := s.Pairs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := steps[len(steps)-1].want; pairsString(got) != want {
		t.Errorf("Pairs: got %q, want %q", pairsString(got), want)
	}
	huge := pair(strings.Repeat("F", flowmetrics.MaxStateValue), "m")
	if _, err := s.AdmitPairs(ctx, []flowmetrics.Pair{huge}, 100); err == nil {
		t.Errorf("AdmitPairs of a pair beyond MaxStateValue: got nil error, want one")
	}
	if got, _ := s.Pairs(ctx); len(got) != 6 {
		t.Errorf("after a refused pair: got %d pairs, want 6", len(got))
	}
}

// testPairsConcurrent admits overlapping pairs from many goroutines (and,
// for a shared store, from two writers): exactly limit distinct pairs are
// admitted, and every answer is a prefix of the final set.
func testPairsConcurrent(t *testing.T, h Harness) {
	const limit, workers, perWorker = 30, 8, 20
	s := h.Open(t, store.Options{})
	writers := []flowmetrics.Store{s}
	if h.Another != nil {
		writers = append(writers, h.Another(t, s))
	}
	var mu sync.Mutex
	var answers []string
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := writers[w%len(writers)]
			for i := 0; i < perWorker; i++ {
				// Workers overlap: worker w asks for pairs 5w…5w+perWorker-1,
				// 55 distinct ones in all.
				got, err := st.AdmitPairs(context.Background(), []flowmetrics.Pair{pair("F", fmt.Sprint(5*w+i))}, limit)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				answers = append(answers, pairsString(got))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	final, err := s.Pairs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[flowmetrics.Pair]bool{}
	for _, p := range final {
		if seen[p] {
			t.Errorf("pair %s/%s admitted twice", p.Flow, p.Metric)
		}
		seen[p] = true
	}
	if len(final) != limit {
		t.Errorf("admitted: got %d pairs, want %d", len(final), limit)
	}
	all := pairsString(final)
	for _, a := range answers {
		if !strings.HasPrefix(all, a) {
			t.Errorf("an answer %q is not a prefix of the final set %q", a, all)
			break
		}
	}
}

func testPairsDurable(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Open(t, store.Options{})
	mustAdmit(t, s, 2, pair("A", "x"), pair("B", "y"))
	var again flowmetrics.Store
	if h.Reopen != nil {
		again = h.Reopen(t, s, store.Options{})
	} else {
		again = h.Another(t, s) // a cold start of another writer
	}
	got, err := again.Pairs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pairsString(got) != "A/x B/y" {
		t.Errorf("after reopening: got %q, want %q", pairsString(got), "A/x B/y")
	}
	if got := mustAdmit(t, again, 2, pair("C", "z")); got != "A/x B/y" {
		t.Errorf("after reopening, a full set: got %q, want %q", got, "A/x B/y")
	}
	if got := mustAdmit(t, again, 3, pair("C", "z")); got != "A/x B/y C/z" {
		t.Errorf("after reopening, room for one: got %q, want %q", got, "A/x B/y C/z")
	}
}
