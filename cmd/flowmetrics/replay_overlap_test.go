package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// TestReplayClaimsWhileTheBatchBeforeSyncs: a replay into the embedded
// store applies each batch's claim while the claim of the batch before is
// still syncing (the first claims' syncs are held until the next claim is
// applied: without the overlap, the replay would wait for them first),
// and its path closes, which run while it reads, keep the rule that makes
// them safe beside it: a close starts only once every claim of its
// conversations is durable, and no claim of its conversations starts
// until it is done. So after a crash a close's points never outlive a
// claim they were derived from, and which records a path holds depends on
// the input alone: the output is that of a replay of the same input into
// the memory store, whose claims are done one after another. Some
// conversations have an attribute up to three batches after their end, so
// that the rule puts their closes off, or they close before it.
func TestReplayClaimsWhileTheBatchBeforeSyncs(t *testing.T) {
	convs, _ := genPathsEnding(3000, 5, 1)
	lines := deliveries(convs, 6)
	// A fifth of the conversations get their last attribute up to three
	// batches late: some are put off by the rule, some close before it.
	for i, c := range convs {
		if i%5 != 0 {
			continue
		}
		if j := slices.Index(lines, attrEvent(c, len(c.steps))); j >= 0 {
			l := lines[j]
			lines = slices.Delete(lines, j, j+1)
			k := min(len(lines), j+replayBatch/2+(i*389)%(3*replayBatch))
			lines = slices.Insert(lines, k, l)
		}
	}
	if len(lines) < 8*replayBatch {
		t.Fatalf("the corpus has %d records: too few batches to overlap", len(lines))
	}
	dir := t.TempDir()
	cfgPath, in := filepath.Join(dir, "flowmetrics.yaml"), filepath.Join(dir, "events.ndjson")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(pathsConfig, "1s", "4h")), 0o644)
	os.WriteFile(in, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	out, want := filepath.Join(dir, "out.jsonl"), filepath.Join(dir, "memory.jsonl")
	cfg, err := replayConfig(replayFlags{configPath: cfgPath, dataDir: filepath.Join(dir, "data"), output: out})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := openStore(cfg, log, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w := &watchedStore{Store: st.(*pebblestore.Store), held: 3, applied: make(chan int, 1000)}
	defer w.Close()
	ctx := context.Background()
	p, restore, err := startReplay(ctx, cfg, w, telemetry.New(), log)
	if err != nil {
		t.Fatal(err)
	}
	r := &replayer{p: p, stderr: io.Discard, started: time.Now(), paths: newReplayCloser(p, w, true, cfg.Paths.WithDefaults().Grace)}
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	runErr := r.run(ctx, []input{{name: in, r: f, read: new(atomic.Int64)}})
	during := w.closedDuringInput()
	if runErr == nil {
		runErr = closeReplayPaths(ctx, p, cfg)
	}
	if err := r.finish(ctx, restore, runErr); err != nil {
		t.Fatal(err)
	}

	w.mu.Lock()
	for _, v := range w.violations {
		t.Error(v)
	}
	if w.overlapped < w.held {
		t.Errorf("%d of the first %d claims had the next batch's claim applied while they synced, want all (%d claims)", w.overlapped, w.held, w.claims)
	}
	t.Logf("%d claims, %d paths closed while reading, %d conversations claimed after their close", w.claims, during, w.after)
	if w.after == 0 {
		t.Error("no conversation had records claimed after its path closed: the close rule was not exercised")
	}
	w.mu.Unlock()
	if during == 0 {
		t.Error("no path closed while the input was read: the close rule was not exercised")
	}
	if w.started != during {
		t.Errorf("%d of the %d paths closed while reading were closed without waiting for their sync, want all", w.started, during)
	}

	if err := runReplay(ctx, []string{"-config", cfgPath, "-o", want, "-progress=false", in}, nil, io.Discard, io.Discard); err != nil {
		t.Fatalf("replay into the memory store: %v", err)
	}
	got, exp := sortedLines(t, out), sortedLines(t, want)
	if len(got) != len(exp) {
		t.Errorf("%d output lines, want %d (the memory store's)", len(got), len(exp))
	}
	diffs := 0
	for i := range min(len(got), len(exp)) {
		if got[i] != exp[i] && diffs < 5 {
			diffs++
			t.Errorf("line %d: %s\nwant %s", i, got[i], exp[i])
		}
	}
	counts := int64(0)
	for _, l := range got {
		var c struct{ Count int64 }
		if !strings.Contains(l, `"path"`) && json.Unmarshal([]byte(l), &c) == nil {
			counts += c.Count
		}
	}
	if counts != occurrencesOf(convs) {
		t.Errorf("counted %d occurrences, want %d", counts, occurrencesOf(convs))
	}
}

func sortedLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	slices.Sort(lines)
	return lines
}

// watchedStore is the embedded store with its claims and named closes
// watched: which conversations each claim holds and whether it is durable
// yet, and which are being closed. The syncs of the first held claims wait
// until the claim after them is applied (at most holdFor).
type watchedStore struct {
	*pebblestore.Store
	held    int      // claims whose sync is held
	applied chan int // claim numbers, as they are applied

	mu         sync.Mutex
	claims     int
	syncing    map[int]map[string]bool // claims applied, not yet durable: their conversations
	closing    map[string]bool         // conversations a close is at work on
	overlapped int                     // held claims the next claim was applied beside
	gaveUp     bool                    // a held sync waited in vain: hold no more
	closes     int                     // paths closed by name
	started    int                     // of them, closed without waiting for their sync
	closed     map[string]bool         // conversations named to a close
	after      int                     // claims' conversations named to a close before
	violations []string
}

const holdFor = 5 * time.Second

func (w *watchedStore) StartClaim(ctx context.Context, reqs []flowmetrics.ClaimRequest) func() ([]flowmetrics.Occurrence, error) {
	convs := map[string]bool{}
	for _, rq := range reqs {
		convs[rq.ConversationID] = true
	}
	w.mu.Lock()
	n := w.claims
	w.claims++
	for id := range convs {
		if w.closing[id] {
			w.violations = append(w.violations, fmt.Sprintf("claim %d of conversation %s started while its path was being closed", n, id))
		}
		if w.closed[id] {
			w.after++
		}
	}
	w.mu.Unlock()
	wait := w.Store.StartClaim(ctx, reqs)
	w.mu.Lock()
	if w.syncing == nil {
		w.syncing = map[int]map[string]bool{}
	}
	w.syncing[n] = convs
	w.mu.Unlock()
	w.applied <- n
	return func() ([]flowmetrics.Occurrence, error) {
		if n < w.held {
			w.hold(n)
		}
		fresh, err := wait()
		w.mu.Lock()
		delete(w.syncing, n)
		w.mu.Unlock()
		return fresh, err
	}
}

// hold waits, before claim n's sync returns, until claim n+1 is applied.
func (w *watchedStore) hold(n int) {
	w.mu.Lock()
	gaveUp := w.gaveUp
	w.mu.Unlock()
	if gaveUp {
		return
	}
	deadline := time.After(holdFor)
	for {
		select {
		case m := <-w.applied:
			if m == n+1 {
				w.mu.Lock()
				w.overlapped++
				w.mu.Unlock()
				return
			}
		case <-deadline:
			w.mu.Lock()
			w.gaveUp = true
			w.mu.Unlock()
			return
		}
	}
}

func (w *watchedStore) ClosePathsOf(ctx context.Context, ids []string, asOf time.Time, derive flowmetrics.Deriver) (int, error) {
	w.closeStarts(ids)
	n, err := w.Store.ClosePathsOf(ctx, ids, asOf, derive)
	w.closeApplied(ids, n)
	return n, err
}

// StartClosePathsOf: a close is at work on its conversations until it is
// applied; from then on a claim sees it.
func (w *watchedStore) StartClosePathsOf(ctx context.Context, ids []string, asOf time.Time, derive flowmetrics.Deriver) (int, func() error, error) {
	w.closeStarts(ids)
	n, wait, err := w.Store.StartClosePathsOf(ctx, ids, asOf, derive)
	w.closeApplied(ids, n)
	w.mu.Lock()
	w.started += n
	w.mu.Unlock()
	return n, wait, err
}

func (w *watchedStore) closeStarts(ids []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closing == nil {
		w.closing, w.closed = map[string]bool{}, map[string]bool{}
	}
	for _, id := range ids {
		for n, convs := range w.syncing {
			if convs[id] {
				w.violations = append(w.violations, fmt.Sprintf("the path of %s closed while claim %d of it was not durable", id, n))
			}
		}
		w.closing[id], w.closed[id] = true, true
	}
}

func (w *watchedStore) closeApplied(ids []string, n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range ids {
		delete(w.closing, id)
	}
	w.closes += n
}

func (w *watchedStore) closedDuringInput() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closes
}
