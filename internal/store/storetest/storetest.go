// Package storetest is the conformance suite every flowmetrics.Store passes:
// exactly-once claims under concurrency, retention, and the outbox contract.
package storetest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// Harness opens the store under test.
type Harness struct {
	// Open returns a new, empty store using opts.
	Open func(t *testing.T, opts store.Options) flowmetrics.Store
	// Reopen closes s and opens the same store again with opts. Nil for
	// stores that do not outlive their process.
	Reopen func(t *testing.T, s flowmetrics.Store, opts store.Options) flowmetrics.Store
	// SkipSinkState, when not empty, skips the sink-state tests with this
	// reason: the backend under test cannot run them (dynalite has no
	// TransactWriteItems) and another run of the suite covers them.
	SkipSinkState string
	// Another opens a second writer on the same store as s (another Lambda
	// instance on the same table), for stores that several writers
	// share; nil for the others.
	Another func(t *testing.T, s flowmetrics.Store) flowmetrics.Store
	// SkipPaths, when not empty, says why the store does not close
	// conversation paths: the suite then checks that ClosePaths says
	// flowmetrics.ErrPathsUnsupported.
	SkipPaths string
	// PathsOpenOnKnownKeys says that a claim request bringing only known
	// keys keeps the conversation's path open (the idle timeout counts
	// from the last request, not the last new key), which the suite then
	// checks.
	PathsOpenOnKnownKeys bool
}

// Clock is a settable clock for retention tests.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock starts at t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

var t0 = time.Date(2026, 11, 20, 9, 31, 48, 0, time.UTC)

// Occ builds an occurrence whose key is derived from flow and metric.
func Occ(flow, metric string, at time.Time) flowmetrics.Occurrence {
	return flowmetrics.Occurrence{
		Key:  fmt.Sprintf("%sMetric_%s(%s)", flow, metric, at.UTC().Format(time.RFC3339Nano)),
		Flow: flow, Metric: metric, Time: at.UTC(),
	}
}

func req(conv string, occs ...flowmetrics.Occurrence) flowmetrics.ClaimRequest {
	return flowmetrics.ClaimRequest{ConversationID: conv, Occurrences: occs}
}

func keys(occs []flowmetrics.Occurrence) []string {
	out := make([]string, len(occs))
	for i, o := range occs {
		out[i] = o.Key
	}
	return out
}

func equalKeys(got []flowmetrics.Occurrence, want ...flowmetrics.Occurrence) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i].Key != want[i].Key || got[i].Flow != want[i].Flow || got[i].Metric != want[i].Metric || !got[i].Time.Equal(want[i].Time) {
			return false
		}
	}
	return true
}

// Run runs the whole suite.
func Run(t *testing.T, h Harness) {
	t.Run("ClaimNewOnce", func(t *testing.T) { testClaimNewOnce(t, h) })
	t.Run("ConcurrentOverlappingClaims", func(t *testing.T) { testConcurrent(t, h) })
	t.Run("Retention", func(t *testing.T) { testRetention(t, h) })
	t.Run("Outbox", func(t *testing.T) { testOutbox(t, h) })
	t.Run("OutboxNeverSkipsUnderConcurrency", func(t *testing.T) { testOutboxConcurrent(t, h) })
	t.Run("SinkState", func(t *testing.T) { skipState(t, h); testSinkState(t, h) })
	t.Run("ConversationBounds", func(t *testing.T) { testConversationBounds(t, h) })
	if h.Reopen != nil {
		t.Run("Durable", func(t *testing.T) { testDurable(t, h) })
		t.Run("SinkStateDurable", func(t *testing.T) { skipState(t, h); testSinkStateDurable(t, h) })
	}
	runPaths(t, h)
	runPairs(t, h)
}

func skipState(t *testing.T, h Harness) {
	if h.SkipSinkState != "" {
		t.Skip(h.SkipSinkState)
	}
}

func stateString(st map[string][]byte) string {
	ks := make([]string, 0, len(st))
	for k := range st {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	for _, k := range ks {
		fmt.Fprintf(&b, "%s=%s;", k, st[k])
	}
	return b.String()
}

func testSinkState(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Open(t, store.Options{})
	if err := s.Register(ctx, []string{"a", "ab", "b"}); err != nil {
		t.Fatal(err)
	}
	st, err := s.SinkState(ctx, "a")
	if err != nil || st == nil || len(st) != 0 {
		t.Fatalf("fresh state: got %v, %v; want an empty map", st, err)
	}
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("c1", Occ("F", "A", t0), Occ("F", "B", t0))}); err != nil {
		t.Fatal(err)
	}
	es := readAll(t, s, 0)
	if err := s.AckState(ctx, "a", es[0].Seq, flowmetrics.StateUpdate{"x": []byte("1"), "y": []byte("2")}); err != nil {
		t.Fatal(err)
	}
	if err := s.AckState(ctx, "ab", 0, flowmetrics.StateUpdate{"x": []byte("other")}); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Cursor(ctx, "a"); c != es[0].Seq {
		t.Errorf("cursor a: got %d, want %d", c, es[0].Seq)
	}
	// An update whose seq does not advance the cursor still applies; nil
	// deletes.
	if err := s.AckState(ctx, "a", es[0].Seq, flowmetrics.StateUpdate{"x": nil, "z": []byte("3")}); err != nil {
		t.Fatal(err)
	}
	st, _ = s.SinkState(ctx, "a")
	if got, want := stateString(st), "y=2;z=3;"; got != want {
		t.Errorf("state a: got %q, want %q", got, want)
	}
	st, _ = s.SinkState(ctx, "ab")
	if got, want := stateString(st), "x=other;"; got != want {
		t.Errorf("state ab (a name sharing a's prefix): got %q, want %q", got, want)
	}
	st, _ = s.SinkState(ctx, "b")
	if len(st) != 0 {
		t.Errorf("state b: got %q, want empty", stateString(st))
	}
	// The returned map is the caller's: changing it changes nothing stored.
	st, _ = s.SinkState(ctx, "a")
	st["y"][0] = 'X'
	st2, _ := s.SinkState(ctx, "a")
	if got := string(st2["y"]); got != "2" {
		t.Errorf("state changed through a returned map: got y=%q, want 2", got)
	}
	if err := s.AckState(ctx, "a", es[0].Seq, flowmetrics.StateUpdate{strings.Repeat("k", flowmetrics.MaxStateKey+1): []byte("v")}); err == nil {
		t.Error("a key over MaxStateKey was accepted")
	}
	if err := s.AckState(ctx, "nobody", es[0].Seq, flowmetrics.StateUpdate{"x": []byte("1")}); err == nil {
		t.Error("AckState of an unregistered sink succeeded")
	}
	// A sink that is no longer registered loses its state.
	if err := s.Register(ctx, []string{"ab", "b"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(ctx, []string{"a", "ab", "b"}); err != nil {
		t.Fatal(err)
	}
	st, _ = s.SinkState(ctx, "a")
	if len(st) != 0 {
		t.Errorf("state of a sink unregistered and registered again: got %q, want empty", stateString(st))
	}
	st, _ = s.SinkState(ctx, "ab")
	if got, want := stateString(st), "x=other;"; got != want {
		t.Errorf("state ab after a was unregistered: got %q, want %q", got, want)
	}
}

func testSinkStateDurable(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Open(t, store.Options{})
	if err := s.Register(ctx, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("c1", Occ("F", "A", t0))}); err != nil {
		t.Fatal(err)
	}
	es := readAll(t, s, 0)
	if err := s.AckState(ctx, "a", es[0].Seq, flowmetrics.StateUpdate{"offset": []byte("42"), "gone": []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := s.AckState(ctx, "a", es[0].Seq, flowmetrics.StateUpdate{"gone": nil}); err != nil {
		t.Fatal(err)
	}
	s = h.Reopen(t, s, store.Options{})
	if err := s.Register(ctx, []string{"a"}); err != nil {
		t.Fatal(err)
	}
	st, err := s.SinkState(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := stateString(st), "offset=42;"; got != want {
		t.Errorf("state after reopen: got %q, want %q", got, want)
	}
	if c, _ := s.Cursor(ctx, "a"); c != es[0].Seq {
		t.Errorf("cursor after reopen: got %d, want %d", c, es[0].Seq)
	}
}

func testClaimNewOnce(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Open(t, store.Options{})
	a := Occ("CustomerRouting", "Unknown", t0)
	b := Occ("CustomerRouting", "Transferred", t0.Add(time.Minute))
	c := Occ("Billing Main", "PaymentTaken", t0.Add(2*time.Minute))

	steps := []struct {
		name string
		reqs []flowmetrics.ClaimRequest
		want []flowmetrics.Occurrence
	}{
		{"first sight is new", []flowmetrics.ClaimRequest{req("conv-1", a)}, []flowmetrics.Occurrence{a}},
		{"repeat is not new", []flowmetrics.ClaimRequest{req("conv-1", a)}, nil},
		{"only the unknown key of a mix is new", []flowmetrics.ClaimRequest{req("conv-1", a, b)}, []flowmetrics.Occurrence{b}},
		{"a key repeated within a request counts once", []flowmetrics.ClaimRequest{req("conv-1", c, c)}, []flowmetrics.Occurrence{c}},
		{"conversations are independent", []flowmetrics.ClaimRequest{req("conv-2", a), req("conv-3", a, b)}, []flowmetrics.Occurrence{a, a, b}},
		{"same conversation twice in one batch", []flowmetrics.ClaimRequest{req("conv-4", a), req("conv-4", a, b)}, []flowmetrics.Occurrence{a, b}},
		{"empty request", []flowmetrics.ClaimRequest{req("conv-5")}, nil},
		{"everything known", []flowmetrics.ClaimRequest{req("conv-1", c, b, a), req("conv-4", b)}, nil},
	}
	for _, st := range steps {
		got, err := s.Claim(ctx, st.reqs)
		if err != nil {
			t.Fatalf("%s: claim: %v", st.name, err)
		}
		if !equalKeys(got, st.want...) {
			t.Errorf("%s: got %q, want %q", st.name, keys(got), keys(st.want))
		}
	}
}

func testConcurrent(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Open(t, store.Options{})
	const (
		workers = 8
		convs   = 16
		metrics = 24
		rounds  = 6
	)
	var mu sync.Mutex
	won := map[string]int{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				// Each worker claims overlapping windows of keys of every
				// conversation, in a different order, several times.
				var reqs []flowmetrics.ClaimRequest
				for c := 0; c < convs; c++ {
					conv := fmt.Sprintf("conv-%d", (c+w)%convs)
					var occs []flowmetrics.Occurrence
					for m := (w + r) % 4; m < metrics; m += 1 + (w+r)%3 {
						// Keys differ per conversation so that each new
						// key returned names its conversation.
						occs = append(occs, Occ(conv, fmt.Sprintf("M%d", m), t0))
					}
					reqs = append(reqs, req(conv, occs...))
				}
				got, err := s.Claim(ctx, reqs)
				if err != nil {
					errs <- err
					return
				}
				// Attribute each new key to its conversation by replaying
				// the request order.
				mu.Lock()
				i := 0
				for _, rq := range reqs {
					seen := map[string]bool{}
					for _, o := range rq.Occurrences {
						if i < len(got) && got[i].Key == o.Key && !seen[o.Key] {
							won[rq.ConversationID+"|"+o.Key]++
							seen[o.Key] = true
							i++
						}
					}
				}
				if i != len(got) {
					errs <- fmt.Errorf("claim returned %d occurrences not in request order", len(got)-i)
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(won) != convs*metrics {
		t.Errorf("got %d distinct keys claimed, want %d", len(won), convs*metrics)
	}
	for k, n := range won {
		if n != 1 {
			t.Errorf("key %s: claimed as new %d times, want 1", k, n)
		}
	}
}

func testRetention(t *testing.T, h Harness) {
	ctx := context.Background()
	clock := NewClock(t0)
	const retention = 48 * time.Hour
	s := h.Open(t, store.Options{Retention: retention, Now: clock.Now})
	a := Occ("F", "A", t0)
	b := Occ("F", "B", t0)
	mustClaim := func(step string, want []flowmetrics.Occurrence, reqs ...flowmetrics.ClaimRequest) {
		t.Helper()
		got, err := s.Claim(ctx, reqs)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if !equalKeys(got, want...) {
			t.Errorf("%s: got %q, want %q", step, keys(got), keys(want))
		}
	}
	mustClaim("first claim", []flowmetrics.Occurrence{a}, req("c1", a))
	clock.Advance(retention - time.Hour)
	mustClaim("before retention the key is known", nil, req("c1", a))
	// A new key is a change: it restarts the conversation's retention.
	mustClaim("a new key", []flowmetrics.Occurrence{b}, req("c1", b))
	clock.Advance(2 * time.Hour)
	mustClaim("retention counts from the last change", nil, req("c1", a, b))
	clock.Advance(retention)
	mustClaim("after retention the conversation starts over", []flowmetrics.Occurrence{a}, req("c1", a))
	if sw, ok := s.(interface {
		Sweep(context.Context) (int, error)
	}); ok {
		mustClaim("other conversation", []flowmetrics.Occurrence{a}, req("c2", a))
		clock.Advance(retention + time.Second)
		n, err := sw.Sweep(ctx)
		if err != nil {
			t.Fatalf("sweep: %v", err)
		}
		if n != 2 {
			t.Errorf("sweep removed %d conversations, want 2", n)
		}
		n, err = sw.Sweep(ctx)
		if err != nil || n != 0 {
			t.Errorf("second sweep removed %d (err %v), want 0", n, err)
		}
	}
}

func readAll(t *testing.T, s flowmetrics.Store, after uint64) []flowmetrics.Entry {
	t.Helper()
	var out []flowmetrics.Entry
	for {
		es, err := s.ReadOutbox(context.Background(), after, 3)
		if err != nil {
			t.Fatalf("read outbox: %v", err)
		}
		if len(es) == 0 {
			return out
		}
		for _, e := range es {
			if e.Seq <= after {
				t.Fatalf("read outbox after %d returned seq %d", after, e.Seq)
			}
			after = e.Seq
		}
		out = append(out, es...)
	}
}

func countOcc(es []flowmetrics.Entry) int {
	n := 0
	for _, e := range es {
		n += len(e.Occurrences)
	}
	return n
}

func testOutbox(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Open(t, store.Options{})
	if err := s.Register(ctx, []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req(fmt.Sprintf("c%d", i), Occ("F", "A", t0), Occ("F", "B", t0))}); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing new: no entry.
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("c0", Occ("F", "A", t0))}); err != nil {
		t.Fatal(err)
	}
	es := readAll(t, s, 0)
	if len(es) != 5 || countOcc(es) != 10 {
		t.Fatalf("got %d entries with %d occurrences, want 5 with 10", len(es), countOcc(es))
	}
	o := es[0].Occurrences[0]
	if o.Flow != "F" || o.Metric != "A" || !o.Time.Equal(t0) || o.Key == "" {
		t.Errorf("outbox occurrence: got %+v, want flow F metric A at %v with its key", o, t0)
	}
	depth := func(sink string) int64 {
		d, err := s.OutboxDepth(ctx, sink)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := depth("a"); d != 10 {
		t.Errorf("depth a: got %d, want 10", d)
	}
	if err := s.AckState(ctx, "a", es[2].Seq, nil); err != nil {
		t.Fatal(err)
	}
	if d := depth("a"); d != 4 {
		t.Errorf("depth a after ack of 3 entries: got %d, want 4", d)
	}
	if d := depth("b"); d != 10 {
		t.Errorf("depth b: got %d, want 10", d)
	}
	if c, _ := s.Cursor(ctx, "a"); c != es[2].Seq {
		t.Errorf("cursor a: got %d, want %d", c, es[2].Seq)
	}
	// b still needs everything, so a reader from 0 still sees it all.
	if got := len(readAll(t, s, 0)); got != 5 {
		t.Errorf("entries kept for b: got %d, want 5", got)
	}
	if err := s.AckState(ctx, "b", es[3].Seq, nil); err != nil {
		t.Fatal(err)
	}
	// Entries both sinks delivered are discarded.
	if got := readAll(t, s, 0); len(got) != 2 || got[0].Seq != es[3].Seq {
		t.Errorf("after both acked: got %d entries, want 2 starting at %d", len(got), es[3].Seq)
	}
	// A sink registered later starts at the end; one no longer registered
	// holds nothing back.
	if err := s.Register(ctx, []string{"a", "c"}); err != nil {
		t.Fatal(err)
	}
	if d := depth("c"); d != 0 {
		t.Errorf("depth of newly registered sink: got %d, want 0", d)
	}
	if err := s.AckState(ctx, "a", es[4].Seq, nil); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s, 0); len(got) != 0 {
		t.Errorf("after the remaining sinks acked: got %d entries, want 0", len(got))
	}
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("c9", Occ("F", "Z", t0))}); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s, es[4].Seq); len(got) != 1 || got[0].Seq <= es[4].Seq {
		t.Errorf("new entry after discards: got %+v, want one with seq > %d", got, es[4].Seq)
	}
}

func testOutboxConcurrent(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Open(t, store.Options{})
	if err := s.Register(ctx, []string{"reader"}); err != nil {
		t.Fatal(err)
	}
	const writers, perWriter = 6, 60
	var claimed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWriter; i++ {
				got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req(fmt.Sprintf("w%d-%d", w, i), Occ("F", "A", t0), Occ("F", "B", t0))})
				if err != nil {
					t.Error(err)
					return
				}
				claimed.Add(int64(len(got)))
			}
		}(w)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var read int64
	var cursor uint64
	drain := func() {
		for {
			es, err := s.ReadOutbox(ctx, cursor, 7)
			if err != nil {
				t.Fatal(err)
			}
			if len(es) == 0 {
				return
			}
			for _, e := range es {
				read += int64(len(e.Occurrences))
				cursor = e.Seq
			}
			if err := s.AckState(ctx, "reader", cursor, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		drain()
	}
	drain()
	if want := int64(writers * perWriter * 2); claimed.Load() != want || read != want {
		t.Errorf("claimed %d and read %d occurrences, want %d of each", claimed.Load(), read, want)
	}
}

func testDurable(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Open(t, store.Options{})
	if err := s.Register(ctx, []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	a, b := Occ("F", "A", t0), Occ("F", "B", t0)
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("c1", a)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("c1", b)}); err != nil {
		t.Fatal(err)
	}
	es := readAll(t, s, 0)
	if err := s.AckState(ctx, "a", es[0].Seq, nil); err != nil {
		t.Fatal(err)
	}
	s = h.Reopen(t, s, store.Options{})
	if err := s.Register(ctx, []string{"a", "b"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("c1", a, b, Occ("F", "C", t0))})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Metric != "C" {
		t.Errorf("after reopen: got new %q, want only F/C", keys(got))
	}
	ca, _ := s.Cursor(ctx, "a")
	cb, _ := s.Cursor(ctx, "b")
	if ca != es[0].Seq || cb != 0 {
		t.Errorf("cursors after reopen: got a=%d b=%d, want a=%d b=0", ca, cb, es[0].Seq)
	}
	after := readAll(t, s, 0)
	if len(after) != 3 || after[2].Seq <= es[1].Seq {
		var seqs []uint64
		for _, e := range after {
			seqs = append(seqs, e.Seq)
		}
		sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
		t.Errorf("outbox after reopen: got seqs %v, want the 2 old entries then a new one after %d", seqs, es[1].Seq)
	}
	if d, _ := s.OutboxDepth(ctx, "a"); d != 2 {
		t.Errorf("depth a after reopen: got %d, want 2", d)
	}
}
