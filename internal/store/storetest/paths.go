package storetest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// The path settings of the path tests.
const (
	grace = time.Minute
	idle  = time.Hour
)

func pathOpts(clock *Clock) store.Options {
	return store.Options{Retention: 48 * time.Hour, Now: clock.Now, Paths: &flowmetrics.PathOptions{Grace: grace, Idle: idle}}
}

// recordDerive is a Deriver that records what it was given and returns one
// point per key (the key as Metric) plus one exit point per conversation.
type recordDerive struct {
	mu    sync.Mutex
	calls map[string][]flowmetrics.ClosedPath
}

func newRecordDerive() *recordDerive {
	return &recordDerive{calls: map[string][]flowmetrics.ClosedPath{}}
}

func (r *recordDerive) derive(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
	r.mu.Lock()
	r.calls[cp.ConversationID] = append(r.calls[cp.ConversationID], cp)
	r.mu.Unlock()
	keys := append([]string(nil), cp.Keys...)
	sort.Strings(keys)
	var out []flowmetrics.PathPoint
	for _, k := range keys {
		out = append(out, flowmetrics.PathPoint{Kind: flowmetrics.PathStep, Flow: "F", Metric: k, Seconds: 1.5, Time: t0, Conversation: cp.ConversationID})
	}
	return append(out, flowmetrics.PathPoint{Kind: flowmetrics.PathExit, Flow: "F", Metric: "end", Name: fmt.Sprint(cp.Ended), Time: t0.Add(time.Second), Conversation: cp.ConversationID})
}

func (r *recordDerive) closedKeys(conv string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, cp := range r.calls[conv] {
		k := append([]string(nil), cp.Keys...)
		sort.Strings(k)
		out = append(out, fmt.Sprintf("%v%v", cp.Ended, k))
	}
	return strings.Join(out, " ")
}

func end(conv string) flowmetrics.ClaimRequest {
	return flowmetrics.ClaimRequest{ConversationID: conv, Ended: true}
}

func mustClose(t *testing.T, s flowmetrics.Store, asOf time.Time, d *recordDerive) int {
	t.Helper()
	n, err := s.ClosePaths(context.Background(), asOf, 0, d.derive)
	if err != nil {
		t.Fatalf("close paths: %v", err)
	}
	return n
}

func mustClaimReqs(t *testing.T, s flowmetrics.Store, reqs ...flowmetrics.ClaimRequest) []flowmetrics.Occurrence {
	t.Helper()
	got, err := s.Claim(context.Background(), reqs)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	return got
}

func pathPoints(es []flowmetrics.Entry) []flowmetrics.PathPoint {
	var out []flowmetrics.PathPoint
	for _, e := range es {
		out = append(out, e.Paths...)
	}
	return out
}

func runPaths(t *testing.T, h Harness) {
	if h.SkipPaths != "" {
		t.Run("PathsUnsupported", func(t *testing.T) {
			s := h.Open(t, pathOpts(NewClock(t0)))
			_, err := s.ClosePaths(context.Background(), t0, 0, newRecordDerive().derive)
			if !errors.Is(err, flowmetrics.ErrPathsUnsupported) {
				t.Errorf("ClosePaths: got %v, want ErrPathsUnsupported (%s)", err, h.SkipPaths)
			}
		})
		return
	}
	t.Run("PathsOff", func(t *testing.T) { testPathsOff(t, h) })
	t.Run("PathClosesAfterEndAndGrace", func(t *testing.T) { testPathEnd(t, h) })
	t.Run("PathClosesAfterIdle", func(t *testing.T) { testPathIdle(t, h) })
	if h.PathsOpenOnKnownKeys {
		t.Run("PathStaysOpenOnKnownKeys", func(t *testing.T) { testPathOpenOnKnownKeys(t, h) })
	}
	t.Run("PathLateAttributes", func(t *testing.T) { testPathLate(t, h) })
	t.Run("PathClosesOnceUnderConcurrency", func(t *testing.T) { testPathConcurrent(t, h) })
	t.Run("PathLimitAndIndex", func(t *testing.T) { testPathLimit(t, h) })
	t.Run("PathClosesByName", func(t *testing.T) { testPathByName(t, h) })
	t.Run("PathRetention", func(t *testing.T) { testPathRetention(t, h) })
	if h.Reopen != nil {
		t.Run("PathDurable", func(t *testing.T) { testPathDurable(t, h) })
	}
}

func testPathsOff(t *testing.T, h Harness) {
	s := h.Open(t, store.Options{})
	if _, err := s.ClosePaths(context.Background(), t0, 0, newRecordDerive().derive); !errors.Is(err, flowmetrics.ErrPathsUnsupported) {
		t.Errorf("ClosePaths without PathOptions: got %v, want ErrPathsUnsupported", err)
	}
	// An end event is harmless without paths.
	a := Occ("F", "A", t0)
	if got := mustClaimReqs(t, s, end("c1"), req("c1", a)); !equalKeys(got, a) {
		t.Errorf("claim with an end request: got %q, want F/A", keys(got))
	}
}

func testPathEnd(t *testing.T, h Harness) {
	clock := NewClock(t0)
	s := h.Open(t, pathOpts(clock))
	if err := s.Register(context.Background(), []string{"x"}); err != nil {
		t.Fatal(err)
	}
	d := newRecordDerive()
	a, b := Occ("F", "A", t0), Occ("F", "B", t0.Add(time.Second))
	mustClaimReqs(t, s, req("c1", a))
	mustClaimReqs(t, s, end("c1"))
	endAt := clock.Now()
	clock.Advance(grace / 2)
	// Attributes still in flight within the grace period belong to the path
	// and do not postpone the close; neither does a repeated end event.
	mustClaimReqs(t, s, req("c1", b), end("c1"))
	if n := mustClose(t, s, endAt.Add(grace-time.Nanosecond), d); n != 0 {
		t.Errorf("closed %d before the grace period passed, want 0", n)
	}
	if n := mustClose(t, s, endAt.Add(grace), d); n != 1 {
		t.Errorf("closed %d at end+grace, want 1", n)
	}
	if n := mustClose(t, s, endAt.Add(10*idle), d); n != 0 {
		t.Errorf("closed %d more later, want 0", n)
	}
	want := fmt.Sprintf("true[%s %s]", a.Key, b.Key)
	if got := d.closedKeys("c1"); got != want {
		t.Errorf("derived from: got %s, want %s", got, want)
	}
	pts := pathPoints(readAll(t, s, 0))
	if len(pts) != 3 || pts[2].Kind != flowmetrics.PathExit || pts[0].Seconds != 1.5 || pts[2].Conversation != "c1" || !pts[2].Time.Equal(t0.Add(time.Second)) {
		t.Errorf("outbox path points: got %+v, want the derived 2 steps and 1 exit, as derived", pts)
	}
	if depth, _ := s.OutboxDepth(context.Background(), "x"); depth != 2+3 {
		t.Errorf("depth: got %d, want 5 (2 occurrences, 3 path points)", depth)
	}
	// An end event before any attribute: the path still closes after the
	// grace, with the keys that came in between.
	c := Occ("G", "C", t0)
	mustClaimReqs(t, s, end("c2"))
	mustClaimReqs(t, s, req("c2", c))
	mustClose(t, s, clock.Now().Add(grace), d)
	if got, want := d.closedKeys("c2"), fmt.Sprintf("true[%s]", c.Key); got != want {
		t.Errorf("end first: derived from %s, want %s", got, want)
	}
}

func testPathIdle(t *testing.T, h Harness) {
	clock := NewClock(t0)
	s := h.Open(t, pathOpts(clock))
	d := newRecordDerive()
	step := pathOpts(clock).Paths.Step()
	a, b := Occ("F", "A", t0), Occ("F", "B", t0)
	mustClaimReqs(t, s, req("c1", a))
	clock.Advance(idle / 2)
	// A new key pushes the idle deadline.
	mustClaimReqs(t, s, req("c1", b))
	last := clock.Now()
	if n := mustClose(t, s, last.Add(idle-time.Nanosecond), d); n != 0 {
		t.Errorf("closed %d before the idle timeout, want 0", n)
	}
	clock.Advance(step / 2)
	mustClaimReqs(t, s, req("c1", a, b))
	if n := mustClose(t, s, last.Add(idle+step), d); n != 1 {
		t.Errorf("closed %d a step after the idle timeout, want 1", n)
	}
	if got, want := d.closedKeys("c1"), fmt.Sprintf("false[%s %s]", a.Key, b.Key); got != want {
		t.Errorf("derived from %s, want %s", got, want)
	}

	// A new key less than a step after the previous one moves the deadline
	// though a store may leave its index entry where it was: the path is
	// still not closed before its deadline.
	mustClaimReqs(t, s, req("c3", a))
	clock.Advance(step / 2)
	mustClaimReqs(t, s, req("c3", b))
	last = clock.Now()
	if n := mustClose(t, s, last.Add(idle-step/2), d); n != 0 {
		t.Errorf("c3: closed %d at the first key's deadline, want 0", n)
	}
	if n := mustClose(t, s, last.Add(idle-time.Nanosecond), d); n != 0 {
		t.Errorf("c3: closed %d before the idle timeout, want 0", n)
	}
	if n := mustClose(t, s, last.Add(idle+step), d); n != 1 {
		t.Errorf("c3: closed %d a step after the idle timeout, want 1", n)
	}
}

// testPathOpenOnKnownKeys: requests that bring only known keys keep a path
// open: it closes no earlier than idle after the last of them, and no
// later than a step after that.
func testPathOpenOnKnownKeys(t *testing.T, h Harness) {
	clock := NewClock(t0)
	s := h.Open(t, pathOpts(clock))
	d := newRecordDerive()
	step := pathOpts(clock).Paths.Step()
	a := Occ("F", "A", t0)
	mustClaimReqs(t, s, req("c2", a))
	for range 3 {
		clock.Advance(idle / 2)
		mustClaimReqs(t, s, req("c2", a))
		if n := mustClose(t, s, clock.Now(), d); n != 0 {
			t.Fatalf("closed %d while requests kept coming", n)
		}
	}
	last := clock.Now()
	if n := mustClose(t, s, last.Add(idle-time.Nanosecond), d); n != 0 {
		t.Errorf("closed %d before idle after the last request, want 0", n)
	}
	if n := mustClose(t, s, last.Add(idle+step), d); n != 1 {
		t.Errorf("closed %d a step after idle after the last request, want 1", n)
	}
	if got, want := d.closedKeys("c2"), fmt.Sprintf("false[%s]", a.Key); got != want {
		t.Errorf("derived from %s, want %s", got, want)
	}

	// Known keys a step and a half after the request that last moved
	// the deadline (to idle and a step after it): they come after that
	// deadline's idle start, so the path stays open until idle after
	// them too, though the deadline moves by less than a step.
	mustClaimReqs(t, s, req("c4", a))
	clock.Advance(idle / 2)
	mustClaimReqs(t, s, req("c4", a))
	clock.Advance(step + step/2)
	mustClaimReqs(t, s, req("c4", a))
	last = clock.Now()
	if n := mustClose(t, s, last.Add(idle-time.Nanosecond), d); n != 0 {
		t.Errorf("c4: closed %d before idle after the last request, want 0", n)
	}
	if n := mustClose(t, s, last.Add(idle+step), d); n != 1 {
		t.Errorf("c4: closed %d a step after idle after the last request, want 1", n)
	}
}

func testPathLate(t *testing.T, h Harness) {
	clock := NewClock(t0)
	s := h.Open(t, pathOpts(clock))
	d := newRecordDerive()
	a, b := Occ("F", "A", t0), Occ("F", "B", t0)
	mustClaimReqs(t, s, req("c1", a), end("c1"))
	if n := mustClose(t, s, clock.Now().Add(grace), d); n != 1 {
		t.Fatalf("closed %d, want 1", n)
	}
	clock.Advance(2 * grace)
	got := mustClaimReqs(t, s, req("c1", a, b), end("c1"))
	if len(got) != 1 || got[0].Key != b.Key || !got[0].AfterClose {
		t.Errorf("late attribute: got %+v, want F/B new with AfterClose", got)
	}
	if got := mustClaimReqs(t, s, req("c9", a)); len(got) != 1 || got[0].AfterClose {
		t.Errorf("another conversation's key: got %+v, want new without AfterClose", got)
	}
	if n := mustClose(t, s, clock.Now().Add(100*idle), d); n != 1 {
		t.Errorf("closed %d after the late attribute, want 1 (c9 only)", n)
	}
	if got := d.closedKeys("c1"); strings.Count(got, "[") != 1 {
		t.Errorf("c1 derived %s, want once", got)
	}
}

func testPathConcurrent(t *testing.T, h Harness) {
	clock := NewClock(t0)
	s := h.Open(t, pathOpts(clock))
	d := newRecordDerive()
	const convs = 60
	var wg sync.WaitGroup
	for i := 0; i < convs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := fmt.Sprintf("c%d", i)
			// Duplicates of the same requests, concurrently.
			for j := 0; j < 3; j++ {
				if _, err := s.Claim(context.Background(), []flowmetrics.ClaimRequest{req(c, Occ("F", "A", t0), Occ("F", "B", t0)), end(c)}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	total := 0
	var mu sync.Mutex
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n, err := s.ClosePaths(context.Background(), clock.Now().Add(grace), 7, d.derive)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				total += n
				mu.Unlock()
				if n == 0 {
					return
				}
			}
		}()
	}
	wg.Wait()
	if total != convs {
		t.Errorf("closed %d paths, want %d", total, convs)
	}
	for i := 0; i < convs; i++ {
		c := fmt.Sprintf("c%d", i)
		if got := strings.Count(d.closedKeys(c), "["); got != 1 {
			t.Errorf("%s derived %d times, want 1", c, got)
		}
	}
	exits := 0
	for _, p := range pathPoints(readAll(t, s, 0)) {
		if p.Kind == flowmetrics.PathExit {
			exits++
		}
	}
	if exits != convs {
		t.Errorf("outbox holds %d exits, want %d", exits, convs)
	}
}

func testPathLimit(t *testing.T, h Harness) {
	clock := NewClock(t0)
	s := h.Open(t, pathOpts(clock))
	d := newRecordDerive()
	// Due times in reverse order of claiming: the index, not the claim
	// order, decides.
	for i := 0; i < 10; i++ {
		mustClaimReqs(t, s, req(fmt.Sprintf("late%d", i), Occ("F", "A", t0)))
	}
	clock.Advance(time.Minute)
	for i := 0; i < 10; i++ {
		mustClaimReqs(t, s, end(fmt.Sprintf("early%d", i)))
	}
	n, err := s.ClosePaths(context.Background(), clock.Now().Add(grace), 4, d.derive)
	if err != nil || n != 4 {
		t.Fatalf("close with limit 4: got %d (%v)", n, err)
	}
	n, err = s.ClosePaths(context.Background(), clock.Now().Add(grace), 100, d.derive)
	if err != nil || n != 6 {
		t.Fatalf("close the rest of the ended: got %d (%v), want 6", n, err)
	}
	for i := 0; i < 10; i++ {
		if c := fmt.Sprintf("late%d", i); d.closedKeys(c) != "" {
			t.Errorf("%s closed before its idle timeout", c)
		}
	}
	// Ended conversations with no keys close with no points.
	if pts := pathPoints(readAll(t, s, 0)); len(pts) != 10 {
		t.Errorf("got %d path points, want 10 exits of keyless paths", len(pts))
	}
}

// testPathByName: a store that closes named paths (flowmetrics.PathCloser)
// closes those due, once, whether named or found in its index, and leaves
// the others open.
func testPathByName(t *testing.T, h Harness) {
	clock := NewClock(t0)
	s := h.Open(t, pathOpts(clock))
	pc, ok := s.(flowmetrics.PathCloser)
	if !ok {
		t.Skip("the store does not close named paths")
	}
	d := newRecordDerive()
	closeOf := func(asOf time.Time, ids ...string) int {
		t.Helper()
		n, err := pc.ClosePathsOf(context.Background(), ids, asOf, d.derive)
		if err != nil {
			t.Fatalf("ClosePathsOf: %v", err)
		}
		return n
	}
	a, b := Occ("F", "A", t0), Occ("F", "B", t0)
	mustClaimReqs(t, s, req("ended", a), end("ended"), req("open", b))
	if n := closeOf(clock.Now().Add(grace-time.Nanosecond), "ended", "open", "unknown"); n != 0 {
		t.Errorf("closed %d before the grace passed, want 0", n)
	}
	if n := closeOf(clock.Now().Add(grace), "ended", "ended", "open", "unknown"); n != 1 {
		t.Errorf("closed %d at end+grace, want 1 (the ended one)", n)
	}
	if n := closeOf(clock.Now().Add(10*idle), "ended"); n != 0 {
		t.Errorf("closed %d again, want 0", n)
	}
	if n := mustClose(t, s, clock.Now().Add(grace), d); n != 0 {
		t.Errorf("the index closed %d more at end+grace, want 0", n)
	}
	if n := mustClose(t, s, clock.Now().Add(2*idle), d); n != 1 {
		t.Errorf("the index closed %d after the idle timeout, want 1 (the open one)", n)
	}
	if got, want := d.closedKeys("ended"), fmt.Sprintf("true[%s]", a.Key); got != want {
		t.Errorf("ended: derived from %s, want %s", got, want)
	}
	if got, want := d.closedKeys("open"), fmt.Sprintf("false[%s]", b.Key); got != want {
		t.Errorf("open: derived from %s, want %s", got, want)
	}
	exits := map[string]int{}
	for _, p := range pathPoints(readAll(t, s, 0)) {
		if p.Kind == flowmetrics.PathExit {
			exits[p.Conversation]++
		}
	}
	if exits["ended"] != 1 || exits["open"] != 1 || len(exits) != 2 {
		t.Errorf("outbox exits per conversation: %v, want one each of ended and open", exits)
	}
}

func testPathRetention(t *testing.T, h Harness) {
	clock := NewClock(t0)
	opts := pathOpts(clock)
	s := h.Open(t, opts)
	d := newRecordDerive()
	a := Occ("F", "A", t0)
	mustClaimReqs(t, s, req("c1", a), end("c1"))
	mustClose(t, s, clock.Now().Add(grace), d)
	clock.Advance(opts.Retention + time.Second)
	if sw, ok := s.(interface {
		Sweep(context.Context) (int, error)
	}); ok {
		if _, err := sw.Sweep(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// After the retention the conversation starts over, path included.
	if got := mustClaimReqs(t, s, req("c1", a)); len(got) != 1 || got[0].AfterClose {
		t.Errorf("after retention: got %+v, want F/A new, not after a close", got)
	}
	mustClose(t, s, clock.Now().Add(idle+opts.Paths.Step()), d)
	if got := strings.Count(d.closedKeys("c1"), "["); got != 2 {
		t.Errorf("closed %d times, want 2 (once per lifetime)", got)
	}
}

func testPathDurable(t *testing.T, h Harness) {
	clock := NewClock(t0)
	s := h.Open(t, pathOpts(clock))
	d := newRecordDerive()
	a := Occ("F", "A", t0)
	mustClaimReqs(t, s, req("c1", a), end("c1"), req("c2", a), end("c3"))
	mustClose(t, s, clock.Now().Add(grace), d) // c1 and c3; c2 waits for its idle timeout
	s = h.Reopen(t, s, pathOpts(clock))
	if n := mustClose(t, s, clock.Now().Add(grace), d); n != 0 {
		t.Errorf("closed %d again after reopening, want 0", n)
	}
	if got := mustClaimReqs(t, s, req("c1", Occ("F", "B", t0))); len(got) != 1 || !got[0].AfterClose {
		t.Errorf("late key after reopening: got %+v, want new with AfterClose", got)
	}
	if n := mustClose(t, s, clock.Now().Add(idle+pathOpts(clock).Paths.Step()), d); n != 1 {
		t.Errorf("closed %d a step after c2's idle timeout after reopening, want 1", n)
	}
	if got := len(pathPoints(readAll(t, s, 0))); got != 2+1+2 {
		t.Errorf("outbox path points after reopening: got %d, want 5", got)
	}
}
