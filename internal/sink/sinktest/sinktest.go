// Package sinktest is the conformance suite every sink passes: Run with a
// Backend that builds the sink on its own test backend. What a sink's
// backend then holds is checked by the sink's own tests, by the backend's
// rules; the suite checks the contract of flowmetrics.Sink and its optional
// interfaces, the same way for every sink.
//
// A new kind of point is added in one place: Kinds. Every sink that
// declares it accepts the kind is then sent it by Run. Path points are
// sent to every flowmetrics.PathSink, one batch of each PathKind
// (PathPoints).
package sinktest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// Kind is one kind of point sinks are sent, with a sample batch of it.
type Kind struct {
	Name   string
	Points func() []flowmetrics.Point
}

// Kinds are the kinds of points the pipeline sends, each with a sample
// batch. Add a new kind here, and to the Accepts of each sink that takes it.
var Kinds = []Kind{
	{Name: "count", Points: func() []flowmetrics.Point {
		// Recent buckets, so sinks with a time window (Datadog) keep them.
		b := flowmetrics.BucketStart(time.Now().Add(-time.Minute), 10*time.Second)
		return []flowmetrics.Point{
			{Flow: "CustomerRouting", Metric: "Unknown", Bucket: b, Width: 10 * time.Second, Count: 3},
			{Flow: "Billing Main", Metric: "PaymentTaken", Bucket: b, Width: 10 * time.Second, Count: 1},
			{Flow: "Größe", Metric: "Ärger", Bucket: b.Add(10 * time.Second), Width: 10 * time.Second, Count: 2},
		}
	}},
}

// PathPoints is a sample of path points, keyed by kind: one batch for each
// flowmetrics.PathKind, stamped a minute ago (inside every backend's time
// window), with names that need folding (spaces, non-ASCII, slashes).
func PathPoints() map[flowmetrics.PathKind][]flowmetrics.PathPoint {
	at := time.Now().Add(-time.Minute).Truncate(time.Millisecond).UTC()
	return map[flowmetrics.PathKind][]flowmetrics.PathPoint{
		flowmetrics.PathExit: {
			{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: at, Conversation: "c1"},
			{Kind: flowmetrics.PathExit, Flow: "Größe", Metric: "Ärger", Time: at.Add(time.Second), Conversation: "c2"},
		},
		flowmetrics.PathStep: {
			{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 30, Time: at, Conversation: "c1"},
			{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 0.25, Time: at, Conversation: "c2"},
		},
		flowmetrics.PathTiming: {
			{Kind: flowmetrics.PathTiming, Name: "ivr_to_agent", Seconds: 93.25, Time: at, Conversation: "c1"},
		},
		flowmetrics.PathFunnel: {
			{Kind: flowmetrics.PathFunnel, Name: "callback", Step: "Main IVR/Entered", Time: at, Conversation: "c1"},
			{Kind: flowmetrics.PathFunnel, Name: "callback", Step: "Callback/Offered", Time: at.Add(time.Second), Conversation: "c1"},
		},
		flowmetrics.PathExperiment: {
			{Kind: flowmetrics.PathExperiment, Name: "callback_offer", Variant: "B", Step: "Callback/OfferB", Time: at, Conversation: "c1"},
		},
	}
}

// pathKinds are the kinds of path points, in order.
var pathKinds = []flowmetrics.PathKind{flowmetrics.PathExit, flowmetrics.PathStep, flowmetrics.PathTiming, flowmetrics.PathFunnel, flowmetrics.PathExperiment}

// Backend is one sink under test.
type Backend struct {
	// New builds a fresh sink on a fresh test backend; the suite closes
	// it. Each call is a separate sink, as a restart builds a new one.
	New func(t *testing.T) flowmetrics.Sink
	// Accepts names the Kinds the sink takes; nil means every kind.
	Accepts []string
}

// Run runs the suite against b.
func Run(t *testing.T, b Backend) {
	t.Run("NameStable", func(t *testing.T) { testName(t, b) })
	t.Run("EmptySend", func(t *testing.T) { testEmptySend(t, b) })
	t.Run("Kinds", func(t *testing.T) { testKinds(t, b) })
	t.Run("CloseTwice", func(t *testing.T) { testCloseTwice(t, b) })
	t.Run("SendAfterClose", func(t *testing.T) { testSendAfterClose(t, b) })
	t.Run("StateRoundTrip", func(t *testing.T) { testState(t, b) })
	t.Run("PathKinds", func(t *testing.T) { testPathKinds(t, b) })
	t.Run("EmptySendPaths", func(t *testing.T) { testEmptySendPaths(t, b) })
	t.Run("SendPathsAfterClose", func(t *testing.T) { testSendPathsAfterClose(t, b) })
}

func (b Backend) accepts(kind string) bool {
	if b.Accepts == nil {
		return true
	}
	for _, k := range b.Accepts {
		if k == kind {
			return true
		}
	}
	return false
}

// open builds a sink that the test closes at its end.
func (b Backend) open(t *testing.T) flowmetrics.Sink {
	t.Helper()
	s := b.New(t)
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// testName: Name is the durable key of the sink's cursor and state: not
// empty, and the same from call to call and from one build to the next.
func testName(t *testing.T, b Backend) {
	s1, s2 := b.open(t), b.open(t)
	name := s1.Name()
	if name == "" || strings.TrimSpace(name) != name {
		t.Fatalf("Name: got %q, want a non-empty name without surrounding space", name)
	}
	if again := s1.Name(); again != name {
		t.Errorf("Name: got %q, then %q; want the same", name, again)
	}
	if other := s2.Name(); other != name {
		t.Errorf("Name of a second sink built alike: got %q, want %q (the store would lose its cursor)", other, name)
	}
}

// testEmptySend: a Send with no points succeeds (the pipeline makes one
// when a Holder is due).
func testEmptySend(t *testing.T, b Backend) {
	s := b.open(t)
	restore(t, s)
	if err := s.Send(ctx(t), nil); err != nil {
		t.Errorf("Send(nil): got %v, want nil", err)
	}
	if err := s.Send(ctx(t), []flowmetrics.Point{}); err != nil {
		t.Errorf("Send(empty): got %v, want nil", err)
	}
}

// testKinds: each kind of point the sink accepts is delivered.
func testKinds(t *testing.T, b Backend) {
	for _, k := range Kinds {
		if !b.accepts(k.Name) {
			continue
		}
		t.Run(k.Name, func(t *testing.T) {
			s := b.open(t)
			restore(t, s)
			if err := s.Send(ctx(t), k.Points()); err != nil {
				t.Errorf("Send of %s points: got %v, want nil", k.Name, err)
			}
			if ss, ok := s.(flowmetrics.StatefulSink); ok {
				if err := flowmetrics.CheckState(ss.TakeState()); err != nil {
					t.Errorf("TakeState after a send of %s points: %v", k.Name, err)
				}
			}
		})
	}
}

// testCloseTwice: Close is safe to call twice.
func testCloseTwice(t *testing.T, b Backend) {
	s := b.New(t)
	restore(t, s)
	if err := s.Send(ctx(t), Kinds[0].Points()); err != nil {
		t.Fatalf("Send: %v", err)
	}
	if err := s.Close(ctx(t)); err != nil {
		t.Errorf("first Close: got %v, want nil", err)
	}
	if err := s.Close(ctx(t)); err != nil {
		t.Errorf("second Close: got %v, want nil", err)
	}
}

// testSendAfterClose: a Send after Close returns at once, without a panic.
func testSendAfterClose(t *testing.T, b Backend) {
	s := b.New(t)
	restore(t, s)
	if err := s.Close(ctx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				t.Errorf("Send after Close panicked: %v", r)
			}
		}()
		s.Send(ctx(t), Kinds[0].Points())
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Send after Close: still running after 5s")
	}
}

// testState: what a StatefulSink's TakeState returns is within the
// store's limits, and a sink built again and given that state back takes
// it as its own: it deletes none of its keys as unreadable.
func testState(t *testing.T, b Backend) {
	s := b.open(t)
	ss, ok := s.(flowmetrics.StatefulSink)
	if !ok {
		t.Skip("not a flowmetrics.StatefulSink")
	}
	committed := map[string][]byte{}
	commit := func(u flowmetrics.StateUpdate) {
		t.Helper()
		if err := flowmetrics.CheckState(u); err != nil {
			t.Fatalf("TakeState: %v", err)
		}
		for k, v := range u {
			if v == nil {
				delete(committed, k)
			} else {
				committed[k] = v
			}
		}
	}
	if err := ss.Restore(ctx(t), map[string][]byte{}); err != nil {
		t.Fatalf("Restore of an empty state: %v", err)
	}
	commit(ss.TakeState())
	for _, k := range Kinds {
		if b.accepts(k.Name) {
			if err := ss.Send(ctx(t), k.Points()); err != nil {
				t.Fatalf("Send of %s points: %v", k.Name, err)
			}
			commit(ss.TakeState())
		}
	}
	if ps, ok := s.(flowmetrics.PathSink); ok {
		// Path points change a sink's state as counts do (running totals
		// of exits and funnels): the state round trip carries them too.
		sample := PathPoints()
		for _, kind := range pathKinds {
			if err := ps.SendPaths(ctx(t), sample[kind]); err != nil {
				t.Fatalf("SendPaths of %s points: %v", kind, err)
			}
			commit(ss.TakeState())
		}
	}
	if again := ss.TakeState(); len(again) != 0 {
		t.Errorf("TakeState right after TakeState: got %d keys, want none (it forgets what it returned)", len(again))
	}

	next, ok := b.open(t).(flowmetrics.StatefulSink)
	if !ok {
		t.Fatal("a second sink built alike is not a StatefulSink")
	}
	if err := next.Restore(ctx(t), clone(committed)); err != nil {
		t.Fatalf("Restore of the committed state: %v", err)
	}
	for k, v := range next.TakeState() {
		if _, had := committed[k]; had && v == nil {
			t.Errorf("after Restore of its own state, the sink deletes key %q as if it could not read it", k)
		}
	}
}

// pathSink returns b's sink as a PathSink, or skips: a sink that is not
// one does not get path points (the pipeline counts them as not
// delivered).
func pathSink(t *testing.T, s flowmetrics.Sink) flowmetrics.PathSink {
	t.Helper()
	ps, ok := s.(flowmetrics.PathSink)
	if !ok {
		t.Skip("not a flowmetrics.PathSink")
	}
	return ps
}

// testPathKinds: a PathSink takes every kind of path point, and its state
// after each stays within the store's limits.
func testPathKinds(t *testing.T, b Backend) {
	pathSink(t, b.open(t)) // skips early for a sink without paths
	sample := PathPoints()
	for _, kind := range pathKinds {
		t.Run(kind.String(), func(t *testing.T) {
			s := b.open(t)
			ps := pathSink(t, s)
			restore(t, s)
			if err := ps.SendPaths(ctx(t), sample[kind]); err != nil {
				t.Errorf("SendPaths of %s points: got %v, want nil", kind, err)
			}
			if ss, ok := s.(flowmetrics.StatefulSink); ok {
				if err := flowmetrics.CheckState(ss.TakeState()); err != nil {
					t.Errorf("TakeState after a send of %s points: %v", kind, err)
				}
			}
		})
	}
	t.Run("mixed", func(t *testing.T) {
		// One batch of every kind, as the pipeline sends a batch of
		// several closed paths.
		s := b.open(t)
		ps := pathSink(t, s)
		restore(t, s)
		var all []flowmetrics.PathPoint
		for _, kind := range pathKinds {
			all = append(all, sample[kind]...)
		}
		if err := ps.SendPaths(ctx(t), all); err != nil {
			t.Errorf("SendPaths of every kind at once: got %v, want nil", err)
		}
	})
}

// testEmptySendPaths: SendPaths with no points succeeds.
func testEmptySendPaths(t *testing.T, b Backend) {
	s := b.open(t)
	ps := pathSink(t, s)
	restore(t, s)
	if err := ps.SendPaths(ctx(t), nil); err != nil {
		t.Errorf("SendPaths(nil): got %v, want nil", err)
	}
	if err := ps.SendPaths(ctx(t), []flowmetrics.PathPoint{}); err != nil {
		t.Errorf("SendPaths(empty): got %v, want nil", err)
	}
}

// testSendPathsAfterClose: a SendPaths after Close returns at once,
// without a panic.
func testSendPathsAfterClose(t *testing.T, b Backend) {
	s := b.New(t)
	ps := pathSink(t, s)
	restore(t, s)
	if err := s.Close(ctx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil {
				t.Errorf("SendPaths after Close panicked: %v", r)
			}
		}()
		ps.SendPaths(ctx(t), PathPoints()[flowmetrics.PathExit])
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("SendPaths after Close: still running after 5s")
	}
}

// restore gives a StatefulSink an empty state, as the pipeline does
// before any Send, and commits nothing.
func restore(t *testing.T, s flowmetrics.Sink) {
	t.Helper()
	if ss, ok := s.(flowmetrics.StatefulSink); ok {
		if err := ss.Restore(ctx(t), map[string][]byte{}); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		ss.TakeState()
	}
}

func clone(m map[string][]byte) map[string][]byte {
	out := make(map[string][]byte, len(m))
	for k, v := range m {
		out[k] = append([]byte(nil), v...)
	}
	return out
}
