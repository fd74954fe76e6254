package memstore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
	"weak"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T, opts store.Options) flowmetrics.Store {
			s := memstore.New(opts)
			t.Cleanup(func() { s.Close() })
			return s
		}, PathsOpenOnKnownKeys: true,
	})
}

// BenchmarkConversationMemory reports the memory the store holds per
// conversation (a UUID id, three keys claimed by three events, its path
// open), after its outbox is delivered: what a replay into the memory store
// keeps to its end, however many events repeat the keys. Go heap and
// blocks mapped outside it (whole huge pages: the last of each kind is
// partly empty), and their sum.
func BenchmarkConversationMemory(b *testing.B) {
	const convs = 100_000
	for range b.N {
		now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
		s := memstore.New(store.Options{Now: func() time.Time { return now }, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}})
		before := heapAlloc()
		for event := range 3 {
			reqs := make([]flowmetrics.ClaimRequest, 0, 1000)
			for i := range convs {
				t := now.Add(time.Duration(event) * time.Minute)
				key := fmt.Sprintf("CustomerRouting Metric_Step%d(%s)", event, t.Format("2006-01-02T15:04:05.000Z"))
				reqs = append(reqs, flowmetrics.ClaimRequest{
					ConversationID: fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", i),
					Occurrences:    []flowmetrics.Occurrence{{Key: key, Flow: "CustomerRouting", Metric: fmt.Sprintf("Step%d", event), Time: t}},
				})
				if len(reqs) == cap(reqs) {
					if _, err := s.Claim(context.Background(), reqs); err != nil {
						b.Fatal(err)
					}
					reqs = reqs[:0]
					now = now.Add(time.Millisecond)
				}
			}
		}
		if err := s.Register(context.Background(), nil); err != nil { // delivers the outbox
			b.Fatal(err)
		}
		after := heapAlloc()
		mapped := memstore.MappedBytes(s)
		b.ReportMetric(float64(after-before)/convs, "heap-bytes/conversation")
		b.ReportMetric(float64(mapped)/convs, "mapped-bytes/conversation")
		b.ReportMetric(float64(after-before+int64(mapped))/convs, "bytes/conversation")
		runtime.KeepAlive(s)
	}
}

func heapAlloc() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// Once every sink has acknowledged an outbox entry, nothing in the store
// keeps its occurrences alive: their keys may share a whole decoded record.
func TestDeliveredEntriesAreReleased(t *testing.T) {
	ctx := context.Background()
	s := memstore.New(store.Options{})
	defer s.Close()
	if err := s.Register(ctx, []string{"sink"}); err != nil {
		t.Fatal(err)
	}
	// A key of its own allocation, which only the claim's outbox entry
	// holds (the store keeps its own copy of the keys it holds).
	key := strings.Clone("CustomerRouting Metric_Start(2026-11-01T00:00:10.000Z)")
	held := weak.Make(unsafe.StringData(key))
	occ := flowmetrics.Occurrence{Key: key, Flow: "CustomerRouting", Metric: "Start", Time: time.Date(2026, 11, 1, 0, 0, 10, 0, time.UTC)}
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c1", Occurrences: []flowmetrics.Occurrence{occ}}}); err != nil {
		t.Fatal(err)
	}
	key, occ = "", flowmetrics.Occurrence{}
	entries, err := s.ReadOutbox(ctx, 0, 10)
	if err != nil || len(entries) != 1 {
		t.Fatalf("got entries %v, error %v, want one entry", entries, err)
	}
	if err := s.AckState(ctx, "sink", entries[0].Seq, nil); err != nil {
		t.Fatal(err)
	}
	entries = nil
	runtime.GC()
	if held.Value() != nil {
		t.Errorf("the key of a delivered occurrence is still alive")
	}
}

// BenchmarkClaimAtRandom claims events of conversations taken at random
// among the many a store holds, as a replay of a shuffled archive does:
// each event repeats a key its conversation holds and brings a new one,
// 2,000 events a claim (replay's batch), paths on. It reports the time per
// event; the store's lookups each find a conversation at a random place
// in hundreds of megabytes.
func BenchmarkClaimAtRandom(b *testing.B) {
	const convs, batch = 500_000, 2000
	ctx := context.Background()
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := memstore.New(store.Options{Now: func() time.Time { return now }, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}})
	defer s.Close()
	if err := s.Register(ctx, nil); err != nil {
		b.Fatal(err)
	}
	id := func(i int) string { return fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", i) }
	occ := func(step int) flowmetrics.Occurrence {
		t := now.Add(time.Duration(step) * time.Second)
		return flowmetrics.Occurrence{Key: fmt.Sprintf("CustomerRouting Metric_Step%d(%s)", step, t.Format("2006-01-02T15:04:05.000Z")), Flow: "CustomerRouting", Metric: fmt.Sprintf("Step%d", step), Time: t}
	}
	claim := func(reqs []flowmetrics.ClaimRequest) {
		if _, err := s.Claim(ctx, reqs); err != nil {
			b.Fatal(err)
		}
		if err := s.Register(ctx, nil); err != nil { // delivers the outbox
			b.Fatal(err)
		}
	}
	reqs := make([]flowmetrics.ClaimRequest, 0, batch)
	for i := range convs {
		reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: id(i), Occurrences: []flowmetrics.Occurrence{occ(0)}})
		if len(reqs) == batch {
			claim(reqs)
			reqs = reqs[:0]
		}
	}
	// The events, made before the timer starts: conversation at random,
	// a key it holds and a new one (of the 1,000 steps, most new).
	rnd := rand.New(rand.NewPCG(17, 17))
	events := make([][]flowmetrics.ClaimRequest, 64)
	for k := range events {
		for range batch {
			step := 1 + rnd.IntN(1000)
			events[k] = append(events[k], flowmetrics.ClaimRequest{ConversationID: id(rnd.IntN(convs)), Occurrences: []flowmetrics.Occurrence{occ(0), occ(step)}})
		}
	}
	b.ResetTimer()
	n := 0
	for b.Loop() {
		claim(events[n%len(events)])
		n++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*batch), "ns/event")
}

// TestCloseManyPathsInOrder closes thousands of paths in one call, as a
// replay does at its end (their points are then derived in parts, one per
// processor): each path is derived once, from its own keys, and the outbox
// entry holds the points in the order the paths closed (by deadline).
func TestCloseManyPathsInOrder(t *testing.T) {
	const convs = 3000
	ctx := context.Background()
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	s := memstore.New(store.Options{Now: func() time.Time { return now }, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}})
	defer s.Close()
	if err := s.Register(ctx, []string{"sink"}); err != nil {
		t.Fatal(err)
	}
	id := func(i int) string { return fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", i) }
	for i := range convs {
		// One conversation a second: their deadlines are in this order.
		now = t0.Add(time.Duration(i) * time.Second)
		var occs []flowmetrics.Occurrence
		for k := range 1 + i%3 {
			occs = append(occs, storetest.Occ("F", fmt.Sprintf("M%d", k), now))
		}
		if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: id(i), Occurrences: occs}}); err != nil {
			t.Fatal(err)
		}
	}
	var calls atomic.Int64
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		calls.Add(1)
		var pts []flowmetrics.PathPoint
		for _, k := range slices.Sorted(slices.Values(cp.Keys)) {
			pts = append(pts, flowmetrics.PathPoint{Kind: flowmetrics.PathStep, Metric: k, Conversation: cp.ConversationID})
		}
		return pts
	}
	n, err := s.ClosePaths(ctx, now.Add(2*time.Hour), convs+1, derive)
	if err != nil || n != convs || calls.Load() != convs {
		t.Fatalf("closed %d (derived %d), error %v; want all %d, each derived once", n, calls.Load(), err, convs)
	}
	entries, err := s.ReadOutbox(ctx, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var got []flowmetrics.PathPoint
	for _, e := range entries {
		got = append(got, e.Paths...)
	}
	var want []flowmetrics.PathPoint
	for i := range convs {
		at := t0.Add(time.Duration(i) * time.Second)
		var keys []string
		for k := range 1 + i%3 {
			keys = append(keys, storetest.Occ("F", fmt.Sprintf("M%d", k), at).Key)
		}
		want = append(want, derive(flowmetrics.ClosedPath{ConversationID: id(i), Keys: keys})...)
	}
	if !slices.Equal(got, want) {
		t.Errorf("outbox points: got %d, want %d in the order the paths closed", len(got), len(want))
	}
}

// TestOutboxWhileDeriving: while a close call derives its points, the
// outbox can be read and acknowledged (a sink delivers the entry of the
// call before meanwhile), and the close's own entry follows the entries
// of the claims before it.
func TestOutboxWhileDeriving(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := memstore.New(store.Options{Now: func() time.Time { return now }, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}})
	defer s.Close()
	if err := s.Register(ctx, []string{"sink"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c", Occurrences: []flowmetrics.Occurrence{storetest.Occ("F", "M", now)}}}); err != nil {
		t.Fatal(err)
	}
	delivered := make(chan error, 1)
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		// Delivery of what is in the outbox, in another goroutine,
		// waited for here: before, it waited for the derivation.
		go func() {
			entries, err := s.ReadOutbox(ctx, 0, 10)
			if err == nil && len(entries) != 1 {
				err = fmt.Errorf("read %d entries, want the claim's", len(entries))
			}
			if err == nil {
				err = s.AckState(ctx, "sink", entries[0].Seq, nil)
			}
			delivered <- err
		}()
		select {
		case err := <-delivered:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(time.Minute):
			t.Error("the outbox was not read while a path was derived")
		}
		return []flowmetrics.PathPoint{{Kind: flowmetrics.PathExit, Flow: "F", Metric: "M", Conversation: cp.ConversationID}}
	}
	if n, err := s.ClosePaths(ctx, now.Add(2*time.Hour), 10, derive); err != nil || n != 1 {
		t.Fatalf("closed %d, error %v; want 1", n, err)
	}
	entries, err := s.ReadOutbox(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Seq != 2 || len(entries[0].Paths) != 1 {
		t.Errorf("outbox after the close: %+v; want the close's entry alone, seq 2", entries)
	}
}
