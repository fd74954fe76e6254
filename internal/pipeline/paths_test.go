package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// pathSink is a recordingSink that also takes path points; failPaths makes
// the next n SendPaths fail.
type pathSink struct {
	recordingSink
	pmu       sync.Mutex
	paths     []flowmetrics.PathPoint
	failPaths int
}

func (s *pathSink) SendPaths(ctx context.Context, pts []flowmetrics.PathPoint) error {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	if s.failPaths > 0 {
		s.failPaths--
		return errors.New("paths backend down")
	}
	s.paths = append(s.paths, pts...)
	return nil
}

func (s *pathSink) pathList() string {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	var out []string
	for _, p := range s.paths {
		out = append(out, fmt.Sprintf("%s %s/%s %s", p.Kind, p.Flow, p.Metric, p.Conversation))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func endEvent(conv string) genesys.Record {
	return genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: conv, Ended: true}}
}

// exitsOnly derives one exit per conversation: its keys joined.
func exitsOnly(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
	k := append([]string(nil), cp.Keys...)
	sort.Strings(k)
	return []flowmetrics.PathPoint{{Kind: flowmetrics.PathExit, Flow: "F", Metric: strings.Join(k, ","), Conversation: cp.ConversationID}}
}

func TestPathsThroughThePipeline(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	st := memstore.New(store.Options{Now: clock, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}})
	ps := &pathSink{recordingSink: recordingSink{name: "paths"}}
	ps.failPaths = 2
	plain := &recordingSink{name: "plain"}
	m := telemetry.New()
	p := New(st, []flowmetrics.Sink{ps, plain}, Config{Derive: exitsOnly, Now: clock, RetryMin: time.Millisecond, RetryMax: 2 * time.Millisecond}, m, nil)
	if err := p.Register(ctx); err != nil {
		t.Fatal(err)
	}
	a := "FMetric_A(2026-11-20T08:59:00Z)"
	b := "FMetric_B(2026-11-20T08:59:30Z)"
	// The end first, then the attributes; a duplicate end.
	if _, err := p.Ingest(ctx, []genesys.Record{endEvent("c1"), event("c1", a), event("c1", b), endEvent("c1"), event("c2", a)}); err != nil {
		t.Fatal(err)
	}
	if n, err := p.ClosePaths(ctx, now.Add(59*time.Second), 0); err != nil || n != 0 {
		t.Fatalf("close before the grace: %d, %v", n, err)
	}
	if n, err := p.ClosePaths(ctx, now.Add(time.Minute), 1); err != nil || n != 1 {
		t.Fatalf("close at the grace: %d, %v", n, err)
	}
	// A late attribute of c1: an occurrence, counted as late.
	late := "FMetric_C(2026-11-20T08:59:40Z)"
	res, err := p.Ingest(ctx, []genesys.Record{event("c1", late)})
	if err != nil || res.Occurrences != 1 {
		t.Fatalf("late attribute: %+v, %v", res, err)
	}
	if n, err := p.ClosePaths(ctx, now.Add(2*time.Hour), 1); err != nil || n != 1 {
		t.Fatalf("close c2 at its idle timeout: %d, %v", n, err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := ps.pathList(), fmt.Sprintf("exit F/%s c2; exit F/%s,%s c1", a, a, b); got != want {
		t.Errorf("path points: got %s, want %s", got, want)
	}
	// The counts went out once each, although SendPaths failed twice.
	if got := ps.total(); len(got) != 3 || got["F/A@08:59:00"] != 2 {
		t.Errorf("counts of the path sink: got %v, want F/A twice, B and C once", got)
	}
	if got := plain.total(); len(got) != 3 || got["F/A@08:59:00"] != 2 {
		t.Errorf("counts of the plain sink: got %v", got)
	}
	for name, got := range map[string]float64{
		"late":          testutil.ToFloat64(m.PathLate),
		"ends":          testutil.ToFloat64(m.PathEnds),
		"closed end":    testutil.ToFloat64(m.PathsClosed.WithLabelValues("end")),
		"closed idle":   testutil.ToFloat64(m.PathsClosed.WithLabelValues("idle")),
		"exits":         testutil.ToFloat64(m.PathPoints.WithLabelValues("exit")),
		"not delivered": testutil.ToFloat64(m.PathsUnsupported.WithLabelValues("plain")),
	} {
		want := map[string]float64{"late": 1, "ends": 2, "closed end": 1, "closed idle": 1, "exits": 2, "not delivered": 2}[name]
		if got != want {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}
}

func TestEndEventsWithPathsOff(t *testing.T) {
	sink := &recordingSink{name: "rec"}
	p, _ := newTest(t, Config{}, sink)
	res, err := p.Ingest(context.Background(), []genesys.Record{endEvent("c1")})
	if err != nil || res.Accepted != 1 {
		t.Fatalf("got %+v, %v; want the end event accepted", res, err)
	}
	if n, err := p.ClosePaths(context.Background(), time.Now().Add(24*time.Hour), 0); n != 0 || err != nil {
		t.Errorf("ClosePaths with paths off: %d, %v", n, err)
	}
}

// claimCounter is a store that counts the claim requests of each
// conversation that reach it.
type claimCounter struct {
	flowmetrics.Store
	mu   sync.Mutex
	reqs map[string]int
}

func (c *claimCounter) Claim(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	c.mu.Lock()
	for _, r := range reqs {
		c.reqs[r.ConversationID]++
	}
	c.mu.Unlock()
	return c.Store.Claim(ctx, reqs)
}

// TestPathIdleCountsFromTheLastEvent: a conversation whose events keep
// repeating attributes the known-key cache answers stays open past the
// idle timeout; one that goes silent closes at it. The store hears of the
// repeating one at most once per step, not once per event.
func TestPathIdleCountsFromTheLastEvent(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	opts := &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}
	st := &claimCounter{Store: memstore.New(store.Options{Now: clock, Paths: opts}), reqs: map[string]int{}}
	ps := &pathSink{recordingSink: recordingSink{name: "paths"}}
	p := New(st, []flowmetrics.Sink{ps}, Config{Derive: exitsOnly, PathTouch: opts.Step(), CacheTTL: 24 * time.Hour, Now: clock}, telemetry.New(), nil)
	if err := p.Register(ctx); err != nil {
		t.Fatal(err)
	}
	a := "FMetric_A(2026-11-20T08:59:00Z)"
	ingest := func(recs ...genesys.Record) {
		t.Helper()
		if _, err := p.Ingest(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	closeNow := func() int {
		t.Helper()
		n, err := p.ClosePaths(ctx, now, 0)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	ingest(event("busy", a), event("silent", a))
	start := now
	// Three idle timeouts of an event a minute, all repeating a.
	for now.Sub(start) < 3*opts.Idle {
		now = now.Add(time.Minute)
		ingest(event("busy", a))
		if n := closeNow(); n != 0 && now.Sub(start) < opts.Idle {
			t.Fatalf("closed %d paths %v after the start, before any idle timeout", n, now.Sub(start))
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := ps.pathList(), "exit F/"+a+" silent"; got != want {
		t.Errorf("after three idle timeouts of repeats: closed %q, want only %q", got, want)
	}
	// The first request, then one per step at most.
	if got, max := st.reqs["busy"], 1+int(3*opts.Idle/opts.Step())+1; got > max {
		t.Errorf("busy: the store got %d requests for 180 events, want at most %d (one per step)", got, max)
	}
	// Silent now: closed between idle and idle+step after its last event.
	last := now
	now = last.Add(opts.Idle - time.Second)
	if n := closeNow(); n != 0 {
		t.Errorf("busy closed %d before idle after its last event", n)
	}
	now = last.Add(opts.Idle + opts.Step())
	if n := closeNow(); n != 1 {
		t.Errorf("busy: closed %d at idle+step after its last event, want 1", n)
	}
}
