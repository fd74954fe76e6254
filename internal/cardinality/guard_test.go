package cardinality

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
)

// open returns a guard on a new in-memory store.
func open(t testing.TB, limit int, log *slog.Logger) *Guard {
	t.Helper()
	g, err := Open(context.Background(), limit, memstore.New(store.Options{}), log)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// see is what the pipeline does with each pair of a claim: Admit, then Map.
func see(t testing.TB, g *Guard, flow, metric string) (string, string) {
	if err := g.Admit(context.Background(), []flowmetrics.Pair{{Flow: flow, Metric: metric}}); err != nil {
		t.Error(err)
	}
	return g.Map(flow, metric)
}

// TestAdmittedPairsSurviveRestarts reopens the guard on the same data
// directory three times, each time with limit new pairs: the first ones
// stay admitted, the later ones fold, and the store never holds more than
// the limit.
func TestAdmittedPairsSurviveRestarts(t *testing.T) {
	const limit = 50
	dir := t.TempDir()
	ctx := context.Background()
	for run := 0; run < 3; run++ {
		st, err := pebblestore.Open(dir, store.Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		g, err := Open(ctx, limit, st, nil)
		if err != nil {
			t.Fatal(err)
		}
		if run > 0 {
			if f, m := g.Map("run0", "m0"); f != "run0" || m != "m0" {
				t.Errorf("run %d: a pair admitted in run 0 maps to (%q, %q), want itself", run, f, m)
			}
		}
		for i := 0; i < limit; i++ {
			f, _ := see(t, g, fmt.Sprint("run", run), fmt.Sprint("m", i))
			if folded := f == OverflowFlow; folded != (run > 0) {
				t.Errorf("run %d pair %d: folded %v, want %v", run, i, folded, run > 0)
			}
		}
		ps, err := st.Pairs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) != limit {
			t.Errorf("run %d: the store holds %d pairs, want %d", run, len(ps), limit)
		}
		st.Close()
	}
}

// failingStore refuses every admission, as a store that lost its disk.
type failingStore struct{ Store }

func (failingStore) AdmitPairs(context.Context, []flowmetrics.Pair, int) ([]flowmetrics.Pair, error) {
	return nil, errors.New("disk gone")
}

func TestAdmitErrorDecidesNothing(t *testing.T) {
	g, err := Open(context.Background(), 2, failingStore{memstore.New(store.Options{})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Admit(context.Background(), []flowmetrics.Pair{{Flow: "A", Metric: "x"}}); err == nil {
		t.Fatal("Admit on a failing store: got nil, want its error")
	}
	if g.Folded() != 0 {
		t.Errorf("folded after a failed admission: got %d, want 0", g.Folded())
	}
}

func TestMap(t *testing.T) {
	type call struct{ flow, metric, wantFlow, wantMetric string }
	tests := []struct {
		name         string
		limit        int
		calls        []call
		wantLogLines int
	}{
		{
			name:  "under the limit everything passes",
			limit: 3,
			calls: []call{
				{"A", "x", "A", "x"},
				{"A", "y", "A", "y"},
				{"A", "x", "A", "x"},
			},
		},
		{
			name:  "pairs beyond the limit fold, admitted ones stay",
			limit: 2,
			calls: []call{
				{"A", "x", "A", "x"},
				{"B", "x", "B", "x"},
				{"C", "x", OverflowFlow, OverflowMetric},
				{"A", "x", "A", "x"},
				{"C", "x", OverflowFlow, OverflowMetric},
				{"D", "y", OverflowFlow, OverflowMetric},
				{"B", "x", "B", "x"},
			},
			wantLogLines: 2, // C/x and D/y, each once
		},
		{
			name:  "flow and metric both make the pair",
			limit: 1,
			calls: []call{
				{"A", "x", "A", "x"},
				{"A", "y", OverflowFlow, OverflowMetric},
				{"B", "x", OverflowFlow, OverflowMetric},
			},
			wantLogLines: 2,
		},
		{
			name:  "negative limit disables the guard",
			limit: -1,
			calls: []call{
				{"A", "x", "A", "x"},
				{"B", "y", "B", "y"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			g := open(t, tt.limit, slog.New(slog.NewTextHandler(&buf, nil)))
			for i, c := range tt.calls {
				gf, gm := see(t, g, c.flow, c.metric)
				if gf != c.wantFlow || gm != c.wantMetric {
					t.Errorf("call %d Map(%q, %q): got (%q, %q), want (%q, %q)", i, c.flow, c.metric, gf, gm, c.wantFlow, c.wantMetric)
				}
			}
			if got := strings.Count(buf.String(), "\n"); got != tt.wantLogLines {
				t.Errorf("log lines: got %d, want %d\n%s", got, tt.wantLogLines, buf.String())
			}
		})
	}
}

func TestDefaultLimit(t *testing.T) {
	g := open(t, 0, nil)
	if got := g.Limit(); got != DefaultLimit {
		t.Fatalf("got limit %d, want %d", got, DefaultLimit)
	}
	for i := 0; i < DefaultLimit; i++ {
		if f, _ := see(t, g, fmt.Sprint("flow", i), "m"); f == OverflowFlow {
			t.Fatalf("pair %d folded, want admitted", i)
		}
	}
	if f, m := see(t, g, "one", "more"); f != OverflowFlow || m != OverflowMetric {
		t.Fatalf("got (%q, %q), want the overflow pair", f, m)
	}
}

func TestLogIsRateLimited(t *testing.T) {
	var buf bytes.Buffer
	g := open(t, 1, slog.New(slog.NewTextHandler(&buf, nil)))
	now := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	g.now = func() time.Time { return now }
	see(t, g, "admitted", "m")
	for i := 0; i < 1000; i++ { // a flood of distinct names
		see(t, g, "flood", fmt.Sprint("m", i))
	}
	if got := strings.Count(buf.String(), "\n"); got != logBurst {
		t.Fatalf("log lines during the flood: got %d, want %d", got, logBurst)
	}
	now = now.Add(logWindow)
	buf.Reset()
	see(t, g, "flood", "next")
	out := buf.String()
	if got := strings.Count(out, "\n"); got != 1 {
		t.Fatalf("log lines in the next window: got %d, want 1", got)
	}
	want := fmt.Sprintf("also_folded_unlogged=%d", 1000-logBurst)
	if !strings.Contains(out, want) {
		t.Errorf("got %q, want it to contain %q", out, want)
	}
	if got := g.Folded(); got != 1001 {
		t.Errorf("folded pairs: got %d, want 1001", got)
	}
}

func TestConcurrentMapAdmitsExactlyLimit(t *testing.T) {
	const limit, workers, pairs = 50, 8, 200
	g := open(t, limit, nil)
	var mu sync.Mutex
	admitted := map[string]bool{}
	folded := 0
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < pairs; i++ {
				f, _ := see(t, g, fmt.Sprint("f", i), "m")
				mu.Lock()
				if f != OverflowFlow {
					admitted[f] = true
				} else {
					folded++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(admitted) != limit {
		t.Errorf("distinct admitted pairs: got %d, want %d", len(admitted), limit)
	}
	if want := workers*pairs - workers*limit; folded != want {
		t.Errorf("folded calls: got %d, want %d", folded, want)
	}
}

// TestLogGolden shows what an operator sees in the log when the limit is
// reached.
func TestLogGolden(t *testing.T) {
	var buf bytes.Buffer
	h := slog.NewTextHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})
	g := open(t, 2, slog.New(h))
	for _, p := range [][2]string{{"CustomerRouting", "Unknown"}, {"Billing Main", "PaymentTaken"}, {"Billing Main", "Refund"}, {"Billing Main", "Refund"}, {"Typo Flow", "Metric_(x)"}} {
		see(t, g, p[0], p[1])
	}
	golden.Check(t, filepath.Join("testdata", "log.golden.txt"), buf.Bytes())
}

// TestMapAdmittedWithoutLock: once seen, an admitted pair is mapped to
// itself without the guard's mutex (derivations in several goroutines at
// once map every point's pair), and pairs admitted one at a time after
// that, interleaved with Maps, are each mapped to themselves.
func TestMapAdmittedWithoutLock(t *testing.T) {
	g := open(t, 100, nil)
	for i := range 100 {
		p := fmt.Sprint("f", i)
		if f, m := see(t, g, p, "m"); f != p || m != "m" {
			t.Fatalf("pair %d: got %s/%s", i, f, m)
		}
		for j := range i {
			if f, _ := g.Map(fmt.Sprint("f", j), "m"); f != fmt.Sprint("f", j) {
				t.Fatalf("after %d admitted, pair %d got %s", i+1, j, f)
			}
		}
	}
	if f, _ := see(t, g, "f100", "m"); f != OverflowFlow {
		t.Errorf("pair past the limit: got %s, want it folded", f)
	}
	g.mu.Lock()
	done := make(chan string, 1)
	go func() {
		f, _ := g.Map("f7", "m")
		done <- f
	}()
	select {
	case f := <-done:
		if f != "f7" {
			t.Errorf("got %s, want f7", f)
		}
	case <-time.After(time.Minute):
		t.Error("Map of an admitted pair waited for the guard's mutex")
	}
	g.mu.Unlock()
}
