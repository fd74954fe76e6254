package pipeline

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// heldRecorder is the memory store (a KeyHolder) recording the keys of
// each claim request that reaches it, and counting them per conversation.
type heldRecorder struct {
	*memstore.Store
	mu    sync.Mutex
	keys  [][]string
	reqs  map[string]int
	occs  int
	asked int
}

func newHeldRecorder(opts store.Options) *heldRecorder {
	return &heldRecorder{Store: memstore.New(opts), reqs: map[string]int{}}
}

func (s *heldRecorder) Claim(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	s.mu.Lock()
	for _, r := range reqs {
		var ks []string
		for _, o := range r.Occurrences {
			ks = append(ks, o.Key)
		}
		s.keys = append(s.keys, ks)
		s.reqs[r.ConversationID]++
		s.occs += len(r.Occurrences)
	}
	s.mu.Unlock()
	return s.Store.Claim(ctx, reqs)
}

func (s *heldRecorder) HeldKeys(qs []flowmetrics.KeyQuery, margin time.Duration) {
	s.mu.Lock()
	s.asked += len(qs)
	s.mu.Unlock()
	s.Store.HeldKeys(qs, margin)
}

// notHolder hides the memory store's HeldKeys: every name reaches Claim.
type notHolder struct{ flowmetrics.Store }

// noCache turns the known-key cache off, as over the memory store.
var noCache = Config{CacheConversations: -1}

// TestHeldNamesLeftOutOverMemory: with the cache off, the names the memory
// store holds are left out before they are parsed, as the cache's are:
// malformed names are still counted and reported in every event that
// carries them, and an event's names in any order and repeated give the
// same claims.
func TestHeldNamesLeftOutOverMemory(t *testing.T) {
	rec := newHeldRecorder(store.Options{})
	// Another conversation's a is new.
	if total := ingestLeftOut(t, rec, noCache, []genesys.Record{event("c2", leftA)}); total != 4 {
		t.Errorf("occurrences: got %d, want 4", total)
	}
	if got, want := fmt.Sprint(rec.keys), fmt.Sprint([][]string{{leftA}, {leftB, leftC}, {leftA}}); got != want {
		t.Errorf("claimed keys: got %s, want %s", got, want)
	}
}

// TestHeldAnswersOutliveTheirClaim: a name counts as held only if its
// conversation is still held a margin later, so that the claim of a batch
// prepared just before the conversation expires finds the name new again,
// as it would have without asking.
func TestHeldAnswersOutliveTheirClaim(t *testing.T) {
	now := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	const retention = time.Hour
	rec := newHeldRecorder(store.Options{Now: clock, Retention: retention})
	cfg := noCache
	cfg.Now = clock
	p := New(rec, nil, cfg, telemetry.New(), nil)
	ctx := context.Background()
	a := "FMetric_A(2026-11-20T08:59:00Z)"
	count := func(b *Prepared) int {
		t.Helper()
		res, err := p.Commit(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		return res.Occurrences
	}
	if n := count(p.Prepare(ctx, []genesys.Record{event("c1", a)})); n != 1 {
		t.Fatalf("first claim: %d occurrences", n)
	}
	// Well before the expiry: held, left out.
	now = now.Add(retention / 2)
	if n := count(p.Prepare(ctx, []genesys.Record{event("c1", a)})); n != 0 || len(rec.keys) != 1 {
		t.Fatalf("held: %d occurrences, %d claims, want none and the first", n, len(rec.keys))
	}
	// Prepared a moment before the conversation expires, claimed after
	// (within the margin): counted again, since the conversation started
	// over.
	now = now.Add(retention/2 - 10*time.Second)
	b := p.Prepare(ctx, []genesys.Record{event("c1", a)})
	now = now.Add(20 * time.Second)
	if n := count(b); n != 1 {
		t.Errorf("claimed after the expiry: %d occurrences, want 1 (the conversation started over)", n)
	}
}

// TestHeldPathsAsEveryEvent: over the memory store with paths on, an event
// whose names the store holds reaches it only when it would change the
// conversation's path, so paths close exactly when they would if every
// event reached the store, and a conversation that keeps repeating its
// names costs the store a request per step or so, not one per event.
func TestHeldPathsAsEveryEvent(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	opts := &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}
	type run struct {
		p   *Pipeline
		st  *heldRecorder
		out *pathSink
	}
	open := func(hide bool) run {
		st := newHeldRecorder(store.Options{Now: clock, Paths: opts})
		var s flowmetrics.Store = st
		if hide {
			s = notHolder{st}
		}
		ps := &pathSink{recordingSink: recordingSink{name: "paths"}}
		cfg := noCache
		cfg.Derive, cfg.PathTouch, cfg.Now = exitsOnly, opts.Step(), clock
		p := New(s, []flowmetrics.Sink{ps}, cfg, telemetry.New(), nil)
		if err := p.Register(ctx); err != nil {
			t.Fatal(err)
		}
		return run{p, st, ps}
	}
	held, every := open(false), open(true)
	if held.p.holder == nil || every.p.holder != nil {
		t.Fatal("the holder is asked only when the store is one")
	}
	both := func(f func(r run) int) (int, int) { return f(held), f(every) }
	ingest := func(recs ...genesys.Record) {
		t.Helper()
		both(func(r run) int {
			if _, err := r.p.Ingest(ctx, recs); err != nil {
				t.Fatal(err)
			}
			return 0
		})
	}
	closeNow := func() {
		t.Helper()
		h, e := both(func(r run) int {
			n, err := r.p.ClosePaths(ctx, now, 0)
			if err != nil {
				t.Fatal(err)
			}
			return n
		})
		if h != e {
			t.Fatalf("at %v: closed %d paths, %d with every event reaching the store", now, h, e)
		}
	}
	a := "FMetric_A(2026-11-20T08:59:00Z)"
	b := "FMetric_B(2026-11-20T09:30:00Z)"
	ingest(event("busy", a), event("silent", a), event("ends", a))
	start := now
	// Three idle timeouts of an event a minute repeating a, then b too;
	// one conversation ends on the way.
	for i := 0; now.Sub(start) < 3*opts.Idle; i++ {
		now = now.Add(time.Minute)
		switch {
		case i == 30:
			ingest(event("busy", a, b), endEvent("ends"))
		case i > 30:
			ingest(event("busy", b, a), event("ends", a))
		default:
			ingest(event("busy", a))
		}
		closeNow()
	}
	// Then silence until every path closed.
	for range 2 * int(opts.Idle/time.Minute) {
		now = now.Add(time.Minute)
		closeNow()
	}
	for _, r := range []run{held, every} {
		if err := r.p.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if h, e := held.out.pathList(), every.out.pathList(); h != e || e == "" {
		t.Errorf("paths: got %q, want %q", h, e)
	}
	// At most two requests a step: the one that moves the deadline, and
	// those within the margin before it (not Quiet, as a claim then
	// might move it).
	if got, max := held.st.reqs["busy"], 1+2*int(3*opts.Idle/opts.Step())+1; got > max {
		t.Errorf("busy: the store got %d requests for %d events, want at most %d", got, every.st.reqs["busy"], max)
	}
	if held.st.asked == 0 {
		t.Error("the store was never asked")
	}
}

// TestHeldExactUnderConcurrentIngest: Ingest calls from several goroutines
// over the memory store, each event repeating its conversation's names so
// far, in batches large and small and prepared ahead of their commits,
// count each well-formed name of each conversation once; the names the
// store holds are left out of the claims.
func TestHeldExactUnderConcurrentIngest(t *testing.T) {
	rec := newHeldRecorder(store.Options{})
	sink := &recordingSink{name: "rec"}
	p := New(rec, []flowmetrics.Sink{sink}, noCache, telemetry.New(), nil)
	ctx := context.Background()
	if err := p.Register(ctx); err != nil {
		t.Fatal(err)
	}
	const convs, steps, workers = 300, 8, 4
	name := func(c, s int) string {
		if s == 5 && c%3 == 0 {
			return fmt.Sprintf("F%dMetric_Bad(step %d)", c%4, s)
		}
		return fmt.Sprintf("F%dMetric_S%d(2026-11-20T09:%02d:%02dZ)", c%4, s, s, c%60)
	}
	// Every event of every conversation, each worker's in its own order:
	// conversation c's event s carries names 0..s.
	want := map[string]int64{}
	wellFormed := 0
	for c := range convs {
		for s := range steps {
			if !(s == 5 && c%3 == 0) {
				want[fmt.Sprintf("F%d/S%d@09:%02d:%02d", c%4, s, s, c%60/10*10)]++
				wellFormed++
			}
		}
	}
	var wg sync.WaitGroup
	results := make([]Result, workers)
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			var recs []genesys.Record
			for c := range convs {
				for s := range steps {
					var ns []string
					for k := range s + 1 {
						ns = append(ns, name(c, k))
					}
					recs = append(recs, event(fmt.Sprintf("c%03d", c), ns...))
				}
			}
			rng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
			var ahead *Prepared
			for len(recs) > 0 {
				n := min(len(recs), 1+rng.IntN(3*memoBatch))
				b := p.Prepare(ctx, recs[:n])
				recs = recs[n:]
				if ahead != nil {
					res, err := p.Commit(ctx, ahead)
					if err != nil {
						t.Error(err)
						return
					}
					results[w].Add(res)
				}
				ahead = b
			}
			res, err := p.Commit(ctx, ahead)
			if err != nil {
				t.Error(err)
			}
			results[w].Add(res)
		})
	}
	wg.Wait()
	var total Result
	for _, r := range results {
		total.Add(r)
	}
	names := workers * convs * steps * (steps + 1) / 2
	if total.Occurrences != wellFormed {
		t.Errorf("occurrences: got %d, want %d", total.Occurrences, wellFormed)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := sink.total(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delivered:\n got %v\nwant %v", got, want)
	}
	// Many names were held by the time their event was prepared.
	if rec.occs*4 > names*3 {
		t.Errorf("claimed %d occurrences of %d names: the held ones should be left out", rec.occs, names)
	}
}

// TestHeldNotAskedWhenFewAre: large batches whose events seldom have held
// names (each a new conversation here) stop asking the store after a
// trial, and the next few large batches do not ask; small batches always
// do.
func TestHeldNotAskedWhenFewAre(t *testing.T) {
	rec := newHeldRecorder(store.Options{})
	p := New(rec, nil, noCache, telemetry.New(), nil)
	ctx := context.Background()
	n := 0
	batch := func(size int) []genesys.Record {
		var recs []genesys.Record
		for range size {
			recs = append(recs, event(fmt.Sprintf("c%d", n), "FMetric_A(2026-11-20T09:31:48.900Z)"))
			n++
		}
		return recs
	}
	ingest := func(recs []genesys.Record) {
		t.Helper()
		res, err := p.Ingest(ctx, recs)
		if err != nil || res.Occurrences != len(recs) {
			t.Fatalf("got %+v, %v; want every event's name counted", res, err)
		}
	}
	asked := func() int {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.asked
	}
	ingest(batch(4 * heldTrial))
	if got := asked(); got != heldTrial {
		t.Fatalf("asked about %d events of the first batch, want the trial's %d", got, heldTrial)
	}
	for range heldRest {
		ingest(batch(2 * memoBatch))
		ingest(batch(10)) // a small batch asks
	}
	if got, want := asked(), heldTrial+heldRest*10; got != want {
		t.Fatalf("asked about %d events, want %d: none of the large batches after the trial", got, want)
	}
	ingest(batch(2 * memoBatch))
	if got, want := asked(), heldTrial+heldRest*10+2*memoBatch; got != want {
		t.Errorf("asked about %d events, want %d: the batch after the rest asks again", got, want)
	}
}
