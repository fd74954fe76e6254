package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
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

// recordingSink keeps every point it accepted; failFor makes the next n
// sends fail, permanent makes them fail permanently.
type recordingSink struct {
	name      string
	mu        sync.Mutex
	points    []flowmetrics.Point
	sends     int
	failFor   int
	permanent bool
	closed    int
	calls     [][]flowmetrics.Point
}

func (s *recordingSink) Name() string { return s.name }
func (s *recordingSink) Send(ctx context.Context, pts []flowmetrics.Point) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sends++
	s.calls = append(s.calls, append([]flowmetrics.Point(nil), pts...))
	if s.failFor > 0 {
		s.failFor--
		if s.permanent {
			return flowmetrics.Permanent(errors.New("bad payload"))
		}
		return errors.New("backend down")
	}
	s.points = append(s.points, pts...)
	return nil
}
func (s *recordingSink) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed++
	s.mu.Unlock()
	return nil
}

func (s *recordingSink) total() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int64{}
	for _, p := range s.points {
		out[fmt.Sprintf("%s/%s@%s", p.Flow, p.Metric, p.Bucket.Format("15:04:05"))] += p.Count
	}
	return out
}

func decodeFile(t *testing.T, path string) []genesys.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var recs []genesys.Record
	if err := genesys.Decode(f, func(r genesys.Record) error { recs = append(recs, r); return nil }); err != nil {
		t.Fatal(err)
	}
	return recs
}

func event(conv string, names ...string) genesys.Record {
	return genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: conv, MetricNames: names}}
}

func newTest(t *testing.T, cfg Config, sinks ...flowmetrics.Sink) (*Pipeline, *telemetry.Metrics) {
	t.Helper()
	m := telemetry.New()
	cfg.RetryMin, cfg.RetryMax = time.Millisecond, 5*time.Millisecond
	p := New(memstore.New(store.Options{}), sinks, cfg, m, nil)
	if err := p.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p, m
}

func TestConversationSample(t *testing.T) {
	sink := &recordingSink{name: "rec"}
	p, m := newTest(t, Config{}, sink)
	res, err := p.Ingest(context.Background(), decodeFile(t, "../../examples/conversation.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	// The last record is the conversation's customer.end: accepted.
	if res.Read != 5 || res.Accepted != 5 || res.Skipped != 0 || res.Rejected != 0 || res.Occurrences != 3 || res.Malformed != 1 {
		t.Errorf("got %+v, want read 5 accepted 5 skipped 0 rejected 0 occurrences 3 malformed 1", res)
	}
	if err := p.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{
		"CustomerRouting/Unknown@08:18:00":     1,
		"CustomerRouting/Transferred@08:19:30": 1,
		"Billing Main/PaymentTaken@08:20:10":   1,
	}
	if got := sink.total(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := testutil.ToFloat64(m.Malformed.WithLabelValues("CustomerRouting")); got != 1 {
		t.Errorf("malformed{flow=CustomerRouting}: got %v, want 1", got)
	}
}

func TestRepeatsAcrossBatchesCountOnce(t *testing.T) {
	sink := &recordingSink{name: "rec"}
	p, m := newTest(t, Config{}, sink)
	ctx := context.Background()
	a := "FMetric_A(2026-11-20T09:31:48.900Z)"
	b := "FMetric_B(2026-11-20T09:31:49Z)"
	batches := [][]genesys.Record{
		{event("c1", a)},
		{event("c1", a), event("c1", a, b)},
		{event("c1", a, b)}, // all known: answered from the cache
		{event("c2", b)},
	}
	total := 0
	for _, b := range batches {
		res, err := p.Ingest(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		total += res.Occurrences
	}
	if total != 3 {
		t.Errorf("occurrences: got %d, want 3", total)
	}
	if got := testutil.ToFloat64(m.CacheHits); got < 1 {
		t.Errorf("cache hits: got %v, want at least 1", got)
	}
	p.Flush(ctx)
	var sum int64
	for _, n := range sink.total() {
		sum += n
	}
	if sum != 3 {
		t.Errorf("delivered: got %d, want 3", sum)
	}
}

func TestRejectedRecordsAreNamedAndCounted(t *testing.T) {
	p, m := newTest(t, Config{}, &recordingSink{name: "rec"})
	recs := decodeFile(t, "../../examples/conversation.ndjson")
	bad := genesys.DecodeValue([]byte(`{"not":"an event"}`))
	bad.Index, bad.Line = 7, 8
	res, err := p.Ingest(context.Background(), append(recs, bad))
	if err != nil {
		t.Fatal(err)
	}
	if res.Rejected != 1 || len(res.Errors) != 1 || res.Errors[0].Index != 7 || res.Errors[0].Line != 8 || res.Errors[0].Error == "" {
		t.Errorf("got rejected %d errors %+v, want one error naming index 7 line 8", res.Rejected, res.Errors)
	}
	if res.Occurrences != 3 {
		t.Errorf("the rest of the batch: got %d occurrences, want 3", res.Occurrences)
	}
	if got := testutil.ToFloat64(m.RecordsRejected.WithLabelValues(RejectReason(bad.Err))); got != 1 {
		t.Errorf("rejected counter: got %v, want 1", got)
	}
}

func TestFailingSinkKeepsPointsAndRetries(t *testing.T) {
	down := &recordingSink{name: "down", failFor: 3}
	up := &recordingSink{name: "up"}
	p, m := newTest(t, Config{}, down, up)
	ctx := context.Background()
	if _, err := p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)")}); err != nil {
		t.Fatal(err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := down.total()["F/A@09:31:40"]; got != 1 {
		t.Errorf("down sink after recovery: got %d, want 1", got)
	}
	if got := up.total()["F/A@09:31:40"]; got != 1 {
		t.Errorf("healthy sink: got %d, want 1", got)
	}
	if down.sends != 4 {
		t.Errorf("down sink sends: got %d, want 4 (3 failures, then success)", down.sends)
	}
	if got := testutil.ToFloat64(m.SinkBatchRetries.WithLabelValues("down")); got != 3 {
		t.Errorf("retries: got %v, want 3", got)
	}
}

func TestFlushGivesUpWithContext(t *testing.T) {
	down := &recordingSink{name: "down", failFor: 1 << 30}
	p, m := newTest(t, Config{}, down)
	ctx := context.Background()
	p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)")})
	fctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	err := p.Flush(fctx)
	if err == nil || !strings.Contains(err.Error(), "backend down") {
		t.Errorf("got %v, want the sink's error", err)
	}
	p.UpdateDepth(ctx)
	if got := testutil.ToFloat64(m.OutboxDepth.WithLabelValues("down")); got != 1 {
		t.Errorf("outbox depth while down: got %v, want 1", got)
	}
}

func TestPermanentFailureDropsOnlyThatBatch(t *testing.T) {
	s := &recordingSink{name: "s", failFor: 1, permanent: true}
	p, m := newTest(t, Config{}, s)
	ctx := context.Background()
	p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)")})
	p.Flush(ctx)
	p.Ingest(ctx, []genesys.Record{event("c2", "FMetric_A(2026-11-20T09:31:48Z)")})
	p.Flush(ctx)
	if got := s.total()["F/A@09:31:40"]; got != 1 {
		t.Errorf("delivered: got %d, want 1 (the second batch)", got)
	}
	if got := testutil.ToFloat64(m.OutboxDropped.WithLabelValues("s", "rejected_by_sink")); got != 1 {
		t.Errorf("dropped: got %v, want 1", got)
	}
}

func TestMaxPendingShedsOldest(t *testing.T) {
	s := &recordingSink{name: "s"}
	p, m := newTest(t, Config{MaxPending: 2}, s)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		p.Ingest(ctx, []genesys.Record{event(fmt.Sprintf("c%d", i), fmt.Sprintf("FMetric_M%d(2026-11-20T09:31:48Z)", i))})
	}
	p.Flush(ctx)
	got := s.total()
	if len(got) != 2 || got["F/M3@09:31:40"] != 1 || got["F/M4@09:31:40"] != 1 {
		t.Errorf("got %v, want only the newest two", got)
	}
	if n := testutil.ToFloat64(m.OutboxDropped.WithLabelValues("s", "outbox_full")); n != 3 {
		t.Errorf("dropped: got %v, want 3", n)
	}
}

func TestBackgroundDelivery(t *testing.T) {
	s := &recordingSink{name: "s"}
	p, _ := newTest(t, Config{FlushInterval: 10 * time.Millisecond}, s)
	p.Start()
	ctx := context.Background()
	p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)")})
	deadline := time.Now().Add(5 * time.Second)
	for len(s.total()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := s.total()["F/A@09:31:40"]; got != 1 {
		t.Errorf("got %d, want 1 delivered in the background", got)
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(ctx); err != nil {
		t.Errorf("second close: %v", err)
	}
	if s.closed != 1 {
		t.Errorf("sink closed %d times, want 1", s.closed)
	}
}

func TestAggregate(t *testing.T) {
	at := func(s string) time.Time { t, _ := time.Parse(time.RFC3339Nano, s); return t }
	occ := func(f, m, ts string) flowmetrics.Occurrence {
		return flowmetrics.Occurrence{Key: f + m + ts, Flow: f, Metric: m, Time: at(ts)}
	}
	entries := []flowmetrics.Entry{
		{Seq: 1, Occurrences: []flowmetrics.Occurrence{occ("F", "A", "2026-11-20T09:31:48.9Z"), occ("F", "A", "2026-11-20T09:31:40Z")}},
		{Seq: 2, Occurrences: []flowmetrics.Occurrence{occ("F", "A", "2026-11-20T09:31:50Z"), occ("E", "B", "2026-11-20T09:31:41Z")}},
	}
	tests := []struct {
		name   string
		bucket time.Duration
		want   string
	}{
		{"10s buckets", 10 * time.Second, "E/B@09:31:40=1 F/A@09:31:40=2 F/A@09:31:50=1"},
		{"1m buckets", time.Minute, "E/B@09:31:00=1 F/A@09:31:00=3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pts, n := Aggregate(entries, tt.bucket)
			var parts []string
			for _, p := range pts {
				if p.Width != tt.bucket {
					t.Errorf("width: got %v, want %v", p.Width, tt.bucket)
				}
				parts = append(parts, fmt.Sprintf("%s/%s@%s=%d", p.Flow, p.Metric, p.Bucket.Format("15:04:05"), p.Count))
			}
			if got := strings.Join(parts, " "); got != tt.want || n != 4 {
				t.Errorf("got %q (%d occurrences), want %q (4)", got, n, tt.want)
			}
		})
	}
}

func TestFailedBatchIsResentUnchanged(t *testing.T) {
	s := &recordingSink{name: "s", failFor: 1}
	p, _ := newTest(t, Config{}, s)
	ctx := context.Background()
	p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)")})
	fctx, cancel := context.WithTimeout(ctx, time.Millisecond)
	p.Flush(fctx) // fails once, then gives up with the context
	cancel()
	// More arrives before the retry; the retry must still be the same batch.
	p.Ingest(ctx, []genesys.Record{event("c2", "FMetric_A(2026-11-20T09:31:48Z)")})
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(s.calls) < 2 || fmt.Sprint(s.calls[0]) != fmt.Sprint(s.calls[1]) {
		t.Fatalf("got calls %v, want the failed batch resent unchanged", s.calls)
	}
	if got := s.total()["F/A@09:31:40"]; got != 2 {
		t.Errorf("delivered: got %d, want 2", got)
	}
}

// foldAfter admits the first n pairs and folds the rest, like the
// cardinality guard; with fail set, Admit fails like a store that lost
// its disk.
type foldAfter struct {
	n    int
	seen map[string]bool
	fail bool
}

func (g *foldAfter) Admit(_ context.Context, pairs []flowmetrics.Pair) error {
	if g.fail {
		return errors.New("disk gone")
	}
	for _, p := range pairs {
		if len(g.seen) < g.n {
			g.seen[p.Flow+"/"+p.Metric] = true
		}
	}
	return nil
}

func (g *foldAfter) Map(flow, metric string) (string, string) {
	if g.seen[flow+"/"+metric] {
		return flow, metric
	}
	return "overflow", "overflow"
}

func TestGuardFailureClaimsNothing(t *testing.T) {
	s := &recordingSink{name: "s"}
	g := &foldAfter{n: 1, seen: map[string]bool{}, fail: true}
	p, _ := newTest(t, Config{Guard: g}, s)
	ctx := context.Background()
	rec := event("c1", "FMetric_A(2026-11-20T09:31:48Z)")
	if _, err := p.Ingest(ctx, []genesys.Record{rec}); err == nil {
		t.Fatal("Ingest with a failing guard: got nil error, want the store's")
	}
	g.fail = false
	res, err := p.Ingest(ctx, []genesys.Record{rec})
	if err != nil || res.Occurrences != 1 {
		t.Fatalf("the retry: got %d occurrences (err %v), want 1", res.Occurrences, err)
	}
	p.Flush(ctx)
	if got, want := fmt.Sprint(s.total()), fmt.Sprint(map[string]int64{"F/A@09:31:40": 1}); got != want {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestGuardFoldsBeforeClaim(t *testing.T) {
	s := &recordingSink{name: "s"}
	p, m := newTest(t, Config{Guard: &foldAfter{n: 1, seen: map[string]bool{}}}, s)
	ctx := context.Background()
	res, err := p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)", "FMetric_B(2026-11-20T09:31:48Z)", "GMetric_C(2026-11-20T09:31:48Z)")})
	if err != nil || res.Occurrences != 3 {
		t.Fatalf("got %d occurrences (err %v), want 3", res.Occurrences, err)
	}
	p.Flush(ctx)
	want := map[string]int64{"F/A@09:31:40": 1, "overflow/overflow@09:31:40": 2}
	if got := s.total(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	// Repeats of folded attributes are not new: the overflow counter counts
	// occurrences, not sightings.
	p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_B(2026-11-20T09:31:48Z)", "GMetric_C(2026-11-20T09:31:48Z)")})
	if got := testutil.ToFloat64(m.Occurrences.WithLabelValues("overflow", "overflow")); got != 2 {
		t.Errorf("occurrences counter of the overflow series: got %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.Overflow); got != 2 {
		t.Errorf("overflow counter: got %v, want 2", got)
	}
}

// TestGuardAdmitsPairsInOrder: in a batch of many pairs (more than fold
// keeps at hand), each seen again and again, the guard is asked for them
// in the order they first come, each once, and a request refused whatever
// the store holds (more keys than a conversation may hold) takes no place:
// what the sink gets is the first pairs of the others, and the rest
// folded.
func TestGuardAdmitsPairsInOrder(t *testing.T) {
	const admitted = 40
	s := &recordingSink{name: "s"}
	p, _ := newTest(t, Config{Guard: &foldAfter{n: admitted, seen: map[string]bool{}}}, s)
	recs := []genesys.Record{event("big", names("R", 0, flowmetrics.MaxConversationKeys+1)...)}
	var order []string // pairs in the order they first come
	want := map[string]int64{}
	for j := range 600 {
		f := fmt.Sprintf("F%02d", (j*7)%80)
		recs = append(recs, event(fmt.Sprintf("c%d", j), f+"Metric_B(2026-11-20T09:31:48Z)", f+"Metric_A(2026-11-20T09:31:48Z)"))
		for _, m := range []string{"A", "B"} {
			pr := f + "/" + m
			if !slices.Contains(order, pr) {
				order = append(order, pr)
			}
			if slices.Index(order, pr) >= admitted {
				pr = "overflow/overflow"
			}
			want[pr+"@09:31:40"]++
		}
	}
	res, err := p.Ingest(context.Background(), recs)
	if err != nil || res.Rejected != 1 || res.Occurrences != 1200 {
		t.Fatalf("got %+v (err %v), want the big event rejected and 1200 occurrences", res, err)
	}
	p.Flush(context.Background())
	if got := s.total(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// ackFailsOnce is a store whose first Ack fails, as a full disk would.
type ackFailsOnce struct {
	flowmetrics.Store
	failed bool
}

func (s *ackFailsOnce) AckState(ctx context.Context, sink string, seq uint64, u flowmetrics.StateUpdate) error {
	if !s.failed {
		s.failed = true
		return errors.New("disk full")
	}
	return s.Store.AckState(ctx, sink, seq, u)
}

// countingSink is a StatefulSink that keeps the number of points it
// delivered in its state, as a sink of running totals would.
type countingSink struct {
	recordingSink
	total    int
	restored map[string][]byte
	changed  bool
}

func (s *countingSink) Restore(ctx context.Context, st map[string][]byte) error {
	s.restored = st
	if v, ok := st["total"]; ok {
		n, err := strconv.Atoi(string(v))
		if err != nil {
			return err
		}
		s.total = n
	}
	return nil
}

func (s *countingSink) Send(ctx context.Context, points []flowmetrics.Point) error {
	if err := s.recordingSink.Send(ctx, points); err != nil {
		return err
	}
	for _, p := range points {
		s.total += int(p.Count)
	}
	s.changed = true
	return nil
}

func (s *countingSink) TakeState() flowmetrics.StateUpdate {
	if !s.changed {
		return nil
	}
	s.changed = false
	return flowmetrics.StateUpdate{"total": []byte(strconv.Itoa(s.total))}
}

func TestStatefulSinkStateCommittedWithCursor(t *testing.T) {
	ctx := context.Background()
	st := &ackFailsOnce{Store: memstore.New(store.Options{})}
	sink := &countingSink{recordingSink: recordingSink{name: "s"}}
	p := New(st, []flowmetrics.Sink{sink}, Config{RetryMin: time.Millisecond, RetryMax: time.Millisecond}, telemetry.New(), nil)
	if err := p.Register(ctx); err != nil {
		t.Fatal(err)
	}
	if sink.restored == nil {
		t.Fatal("Register did not restore the sink's state")
	}
	p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)", "FMetric_B(2026-11-20T09:31:48Z)")})
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p.Ingest(ctx, []genesys.Record{event("c2", "FMetric_A(2026-11-20T09:31:48Z)")})
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if sink.sends != 2 {
		t.Errorf("sends: got %d, want 2 (a failed commit retries only the commit)", sink.sends)
	}
	state, err := st.SinkState(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(state["total"]); got != "3" {
		t.Errorf("committed total: got %q, want 3", got)
	}
	// A new pipeline (a restart) restores it.
	again := &countingSink{recordingSink: recordingSink{name: "s"}}
	if err := New(st, []flowmetrics.Sink{again}, Config{}, telemetry.New(), nil).Register(ctx); err != nil {
		t.Fatal(err)
	}
	if again.total != 3 {
		t.Errorf("restored total: got %d, want 3", again.total)
	}
}

// TestRestoreChangesCommittedBeforeFirstSend: what a sink's Restore changed
// (a baseline of a first start, a file cut back) is committed at once, at the
// unchanged cursor, so a crash before the first batch's commit finds it.
func TestRestoreChangesCommittedBeforeFirstSend(t *testing.T) {
	ctx := context.Background()
	st := memstore.New(store.Options{})
	sink := &countingSink{recordingSink: recordingSink{name: "s"}, changed: true}
	if err := New(st, []flowmetrics.Sink{sink}, Config{}, telemetry.New(), nil).Register(ctx); err != nil {
		t.Fatal(err)
	}
	state, err := st.SinkState(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(state["total"]); got != "0" {
		t.Errorf("state committed by Register: got %q, want the baseline 0", got)
	}
	if c, _ := st.Cursor(ctx, "s"); c != 0 {
		t.Errorf("cursor: got %d, want 0 (unchanged)", c)
	}
	if sink.sends != 0 {
		t.Errorf("sends: got %d, want 0", sink.sends)
	}
	// Nothing changed by Restore: nothing to commit, and a store that
	// fails its first AckState does not fail Register.
	quiet := &countingSink{recordingSink: recordingSink{name: "s"}}
	if err := New(&ackFailsOnce{Store: st}, []flowmetrics.Sink{quiet}, Config{}, telemetry.New(), nil).Register(ctx); err != nil {
		t.Errorf("Register with nothing to commit: got %v, want nil", err)
	}
}

func TestFailedAckDoesNotResend(t *testing.T) {
	sink := &recordingSink{name: "s"}
	m := telemetry.New()
	st := &ackFailsOnce{Store: memstore.New(store.Options{})}
	p := New(st, []flowmetrics.Sink{sink}, Config{RetryMin: time.Millisecond, RetryMax: time.Millisecond}, m, nil)
	ctx := context.Background()
	if err := p.Register(ctx); err != nil {
		t.Fatal(err)
	}
	p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)")})
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if sink.sends != 1 {
		t.Errorf("sends: got %d, want 1 (only the acknowledgement is retried)", sink.sends)
	}
	if got := testutil.ToFloat64(m.StoreErrors.WithLabelValues("ack")); got != 1 {
		t.Errorf("store ack errors: got %v, want 1", got)
	}
	if d, _ := st.OutboxDepth(ctx, "s"); d != 0 {
		t.Errorf("depth after the retried ack: got %d, want 0", d)
	}
}

// holdingSink holds every point it is sent until release, in its state,
// as the OTLP sink holds a window until its watermark.
type holdingSink struct {
	countingSink
	held    []flowmetrics.Point
	release bool
	empty   int // Sends with no points
}

func (s *holdingSink) Send(ctx context.Context, points []flowmetrics.Point) error {
	if len(points) == 0 {
		s.empty++
	}
	s.held = append(s.held, points...)
	if !s.release {
		s.changed = true
		return nil
	}
	err := s.countingSink.Send(ctx, s.held)
	s.held = nil
	return err
}

func (s *holdingSink) Due(now time.Time) bool { return s.release && len(s.held) > 0 }

func TestHolderSentWhenDueWithoutNewEntries(t *testing.T) {
	ctx := context.Background()
	st := memstore.New(store.Options{})
	sink := &holdingSink{countingSink: countingSink{recordingSink: recordingSink{name: "h"}}}
	p := New(st, []flowmetrics.Sink{sink}, Config{RetryMin: time.Millisecond, RetryMax: time.Millisecond}, telemetry.New(), nil)
	if err := p.Register(ctx); err != nil {
		t.Fatal(err)
	}
	p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)")})
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if sink.sends != 0 || sink.empty != 0 {
		t.Fatalf("before due: got %d deliveries and %d empty sends, want 0 and 0", sink.sends, sink.empty)
	}
	cursor, _ := st.Cursor(ctx, "h")
	sink.release = true
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if sink.sends != 1 || sink.empty != 1 {
		t.Errorf("once due: got %d deliveries and %d empty sends, want 1 and 1", sink.sends, sink.empty)
	}
	if got, _ := st.Cursor(ctx, "h"); got != cursor {
		t.Errorf("cursor: got %d, want %d (unchanged by an empty send)", got, cursor)
	}
	state, _ := st.SinkState(ctx, "h")
	if got := string(state["total"]); got != "1" {
		t.Errorf("committed total: got %q, want 1 (the empty send's state committed)", got)
	}
	// Nothing due any more: no further empty send.
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if sink.empty != 1 {
		t.Errorf("after: got %d empty sends, want 1", sink.empty)
	}
}

// blockingSink holds each Send until release is closed, and records whether
// the send's context was cancelled meanwhile.
type blockingSink struct {
	recordingSink
	started   chan struct{}
	release   chan struct{}
	cancelled bool
}

func (s *blockingSink) Send(ctx context.Context, pts []flowmetrics.Point) error {
	select {
	case s.started <- struct{}{}:
	default:
	}
	select {
	case <-s.release:
	case <-ctx.Done():
		s.mu.Lock()
		s.cancelled = true
		s.mu.Unlock()
		return ctx.Err()
	}
	return s.recordingSink.Send(ctx, pts)
}

// A stop lets the batch in flight finish and commits its cursor: cutting the
// request off could leave it taken by the backend and then resent.
func TestCloseFinishesTheSendInFlight(t *testing.T) {
	for _, tc := range []struct {
		name          string
		closeIn       time.Duration // Close's deadline
		wantCancelled bool
	}{
		{"within the deadline", 10 * time.Second, false},
		{"past the deadline", 50 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			st := memstore.New(store.Options{})
			sink := &blockingSink{recordingSink: recordingSink{name: "s"}, started: make(chan struct{}, 1), release: make(chan struct{})}
			p := New(st, []flowmetrics.Sink{sink}, Config{FlushInterval: time.Millisecond, RetryMin: time.Millisecond, RetryMax: time.Millisecond}, telemetry.New(), nil)
			if err := p.Register(ctx); err != nil {
				t.Fatal(err)
			}
			p.Start()
			p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)")})
			select {
			case <-sink.started:
			case <-time.After(10 * time.Second):
				t.Fatal("no send started")
			}
			closed := make(chan error, 1)
			cctx, cancel := context.WithTimeout(ctx, tc.closeIn)
			defer cancel()
			go func() { closed <- p.Close(cctx) }()
			if !tc.wantCancelled {
				time.Sleep(100 * time.Millisecond) // Close is waiting for the send
				close(sink.release)
			}
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("Close did not return")
			}
			sink.mu.Lock()
			cancelled, delivered := sink.cancelled, len(sink.points)
			sink.mu.Unlock()
			if cancelled != tc.wantCancelled {
				t.Errorf("send in flight cancelled: got %v, want %v", cancelled, tc.wantCancelled)
			}
			if !tc.wantCancelled {
				if delivered != 1 {
					t.Errorf("points delivered: got %d, want 1", delivered)
				}
				if d, _ := st.OutboxDepth(ctx, "s"); d != 0 {
					t.Errorf("depth after Close: got %d, want 0 (the finished batch's cursor committed)", d)
				}
			}
		})
	}
}

// TestHooksKeepTheSinkAsItIs: with OnSend and CursorPrefix (what serve's
// dashboard and a replay into a serve data directory use), the sink the
// pipeline drives is the sink itself, so a Holder still gets its due empty
// send and a StatefulSink its state, kept under the prefixed name; OnSend
// hears every send, failed ones included, under that name.
func TestHooksKeepTheSinkAsItIs(t *testing.T) {
	ctx := context.Background()
	st := memstore.New(store.Options{})
	sink := &holdingSink{countingSink: countingSink{recordingSink: recordingSink{name: "h"}}}
	failing := &recordingSink{name: "r", failFor: 1}
	type sent struct {
		name string
		ok   bool
	}
	var heard []sent
	cfg := Config{RetryMin: time.Millisecond, RetryMax: time.Millisecond, CursorPrefix: "replay-",
		OnSend: func(name string, err error) { heard = append(heard, sent{name, err == nil}) }}
	p := New(st, []flowmetrics.Sink{sink, failing}, cfg, telemetry.New(), nil)
	if got := p.Cursors(); !slices.Equal(got, []string{"replay-h", "replay-r"}) {
		t.Fatalf("cursors: got %q, want [replay-h replay-r]", got)
	}
	if err := p.Register(ctx); err != nil {
		t.Fatal(err)
	}
	p.Ingest(ctx, []genesys.Record{event("c1", "FMetric_A(2026-11-20T09:31:48Z)")})
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	sink.release = true // due now: the held point goes out with no new entry
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if sink.empty != 1 || sink.sends != 1 {
		t.Errorf("holder: got %d empty sends and %d deliveries, want 1 and 1", sink.empty, sink.sends)
	}
	want := []sent{{"replay-h", true}, {"replay-r", false}, {"replay-r", true}, {"replay-h", true}}
	if !slices.Equal(heard, want) {
		t.Errorf("OnSend heard %v, want %v", heard, want)
	}
	state, _ := st.SinkState(ctx, "replay-h")
	if got := string(state["total"]); got != "1" {
		t.Errorf("state under replay-h: got total %q, want 1", got)
	}
	if state, _ := st.SinkState(ctx, "h"); len(state) != 0 {
		t.Errorf("state under h: got %v, want none (the prefix names the cursor)", state)
	}
}

// claimRecorder is a store that records the keys of each claim request.
type claimRecorder struct {
	flowmetrics.Store
	keys [][]string
}

func (s *claimRecorder) Claim(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	for _, r := range reqs {
		var ks []string
		for _, o := range r.Occurrences {
			ks = append(ks, o.Key)
		}
		s.keys = append(s.keys, ks)
	}
	return s.Store.Claim(ctx, reqs)
}

// TestOnlyUnknownKeysReachTheStore: an event repeats every attribute of its
// participant so far, so the keys the cache knows are left out of the claim
// and the store looks up only the new ones.
func TestOnlyUnknownKeysReachTheStore(t *testing.T) {
	rec := &claimRecorder{Store: memstore.New(store.Options{})}
	p := New(rec, nil, Config{}, telemetry.New(), nil)
	ctx := context.Background()
	a := "FMetric_A(2026-11-20T09:31:48.900Z)"
	b := "FMetric_B(2026-11-20T09:31:49Z)"
	c := "FMetric_C(2026-11-20T09:31:50Z)"
	var total int
	for _, batch := range [][]genesys.Record{{event("c1", a)}, {event("c1", a, b)}, {event("c1", a, b, c)}, {event("c1", a, b, c)}} {
		res, err := p.Ingest(ctx, batch)
		if err != nil {
			t.Fatal(err)
		}
		total += res.Occurrences
	}
	if total != 3 {
		t.Errorf("occurrences: got %d, want 3", total)
	}
	if got, want := fmt.Sprint(rec.keys), fmt.Sprint([][]string{{a}, {b}, {c}}); got != want {
		t.Errorf("claimed keys: got %s, want %s (the last event is all known)", got, want)
	}
}

// TestPreparedAheadCountOnce: batches prepared before the batches ahead of
// them are committed (replay prepares the next batch while the store
// claims this one) still count each key once, whether it repeats within a
// batch or across batches prepared together. When the commits come, the
// keys the cache learned meanwhile stay out of the store's requests.
func TestPreparedAheadCountOnce(t *testing.T) {
	rec := &claimRecorder{Store: memstore.New(store.Options{})}
	sink := &recordingSink{name: "rec"}
	p := New(rec, []flowmetrics.Sink{sink}, Config{}, telemetry.New(), nil)
	ctx := context.Background()
	if err := p.Register(ctx); err != nil {
		t.Fatal(err)
	}
	a := "FMetric_A(2026-11-20T09:31:48.900Z)"
	b := "FMetric_B(2026-11-20T09:31:49Z)"
	c := "FMetric_C(2026-11-20T09:31:50Z)"
	// Every batch is prepared before the first is committed.
	batches := []*Prepared{
		p.Prepare(ctx, []genesys.Record{event("c1", a), event("c1", a, b)}), // a twice in one batch
		p.Prepare(ctx, []genesys.Record{event("c1", a, b), event("c2", a)}), // a and b again, a under c2
		p.Prepare(ctx, []genesys.Record{event("c1", a, b, c)}),
	}
	total := 0
	for _, b := range batches {
		res, err := p.Commit(ctx, b)
		if err != nil {
			t.Fatal(err)
		}
		if res.Read != res.Accepted {
			t.Errorf("result %+v: every record is accepted", res)
		}
		total += res.Occurrences
	}
	if total != 4 {
		t.Errorf("occurrences: got %d, want 4 (c1: a, b, c; c2: a)", total)
	}
	// The first batch asks for a twice (the store dedupes within a
	// claim); the second and third only for what the first claim did not
	// teach the cache.
	want := fmt.Sprint([][]string{{a}, {a, b}, {a}, {c}})
	if got := fmt.Sprint(rec.keys); got != want {
		t.Errorf("claimed keys: got %s, want %s", got, want)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, n := range sink.total() {
		sum += n
	}
	if sum != 4 {
		t.Errorf("delivered: got %d, want 4", sum)
	}
}

// TestKnownNamesLeftOutBeforeParsing: names the cache knows are left out
// before they are parsed, so the rest must come out as before: malformed
// names are counted and reported in every event that carries them, beside
// known keys or not, and an event's names in any order and repeated give
// the same claims.
func TestKnownNamesLeftOutBeforeParsing(t *testing.T) {
	rec := &claimRecorder{Store: memstore.New(store.Options{})}
	if total := ingestLeftOut(t, rec, Config{}); total != 3 {
		t.Errorf("occurrences: got %d, want 3", total)
	}
	if got, want := fmt.Sprint(rec.keys), fmt.Sprint([][]string{{leftA}, {leftB, leftC}}); got != want {
		t.Errorf("claimed keys: got %s, want %s", got, want)
	}
}

// The names of the tests of names left out before parsing (by the
// known-key cache, or by the store's own answers).
const (
	leftA   = "FMetric_A(2026-11-20T09:31:48.900Z)"
	leftB   = "FMetric_B(2026-11-20T09:31:49Z)"
	leftC   = "FMetric_C(2026-11-20T09:31:50Z)"
	leftBad = "FMetric_Bad(yesterday)"
)

// ingestLeftOut ingests, through a pipeline on st with cfg, one batch at
// a time, events of conversation c1 whose names are known from the second
// on, then more, and returns the occurrences counted. Every event's
// malformed name must be counted and reported, known names beside it or
// not: three of them.
func ingestLeftOut(t *testing.T, st flowmetrics.Store, cfg Config, more ...[]genesys.Record) (total int) {
	t.Helper()
	var reported []string
	cfg.OnMalformed = func(flow, name, reason string) { reported = append(reported, name) }
	p := New(st, nil, cfg, telemetry.New(), nil)
	other := "FMetric_Note" // not metric-shaped: neither a key nor malformed
	batches := append([][]genesys.Record{
		{event("c1", leftA, leftBad)},
		{event("c1", leftBad, leftA, other)},                      // a known: only bad is parsed
		{event("c1", leftC, leftA, leftB, leftA, leftBad, leftB)}, // unsorted and repeated: b and c are new
		{event("c1", leftB, leftC, leftA)},                        // all known
	}, more...)
	malformed := 0
	for _, batch := range batches {
		res, err := p.Ingest(context.Background(), batch)
		if err != nil {
			t.Fatal(err)
		}
		total += res.Occurrences
		malformed += res.Malformed
	}
	if malformed != 3 || len(reported) != 3 {
		t.Errorf("malformed: got %d counted and %d reported, want 3 and 3", malformed, len(reported))
	}
	return total
}

// TestAggregateAtRandom checks Aggregate against counting in a map, then
// sorting, on many occurrences: points of the same flow, metric and
// bucket from several entries, flows that sort before or after one
// another within a bucket, and times that fall on bucket edges.
func TestAggregateAtRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	start := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	flows, metrics := []string{"F", "E", "Billing Main", "F2"}, []string{"A", "B", "Transfer"}
	var entries []flowmetrics.Entry
	type key struct {
		bucket       time.Time
		flow, metric string
	}
	want := map[key]int64{}
	total := 0
	for e := range 300 {
		var occs []flowmetrics.Occurrence
		for range rng.IntN(5) {
			o := flowmetrics.Occurrence{Flow: flows[rng.IntN(len(flows))], Metric: metrics[rng.IntN(len(metrics))],
				Time: start.Add(time.Duration(rng.IntN(120_000)) * time.Millisecond * 5)}
			occs = append(occs, o)
			want[key{o.Time.Truncate(10 * time.Second), o.Flow, o.Metric}]++
			total++
		}
		entries = append(entries, flowmetrics.Entry{Seq: uint64(e + 1), Occurrences: occs})
	}
	pts, n := Aggregate(entries, 10*time.Second)
	if n != total {
		t.Errorf("occurrences: got %d, want %d", n, total)
	}
	if len(pts) != len(want) {
		t.Errorf("points: got %d, want %d", len(pts), len(want))
	}
	for i, p := range pts {
		if c := want[key{p.Bucket, p.Flow, p.Metric}]; c != p.Count {
			t.Errorf("%s/%s@%s: got %d, want %d", p.Flow, p.Metric, p.Bucket, p.Count, c)
		}
		if i > 0 {
			q := pts[i-1]
			if !(q.Bucket.Before(p.Bucket) || q.Bucket.Equal(p.Bucket) && (q.Flow < p.Flow || q.Flow == p.Flow && q.Metric < p.Metric)) {
				t.Errorf("point %d (%s/%s@%s) is not after the one before it (%s/%s@%s)", i, p.Flow, p.Metric, p.Bucket, q.Flow, q.Metric, q.Bucket)
			}
		}
	}
}

// TestLargeBatchAsSmallBatches: a batch large enough for Prepare to
// remember the names it parsed (memoBatch) counts what the same events
// count in batches too small for that: every event repeats its
// conversation's names so far, conversations share names, and some names
// are malformed.
func TestLargeBatchAsSmallBatches(t *testing.T) {
	var recs []genesys.Record
	for i := range 4 * memoBatch {
		conv := fmt.Sprintf("c%d", i%40)
		var names []string
		for j := range 1 + i/40%6 {
			names = append(names, fmt.Sprintf("F%dMetric_Step%d(2026-11-20T09:%02d:00Z)", j%2, j, i%40/4)) // four conversations a name
		}
		if i%7 == 0 {
			names = append(names, "FMetric_Bad(soon)")
		}
		slices.Reverse(names)
		recs = append(recs, event(conv, names...))
	}
	run := func(size int) (Result, map[string]int64) {
		sink := &recordingSink{name: "rec"}
		p, _ := newTest(t, Config{}, sink)
		var total Result
		for rest := recs; len(rest) > 0; {
			n := min(size, len(rest))
			res, err := p.Ingest(context.Background(), rest[:n])
			if err != nil {
				t.Fatal(err)
			}
			total.Add(res)
			rest = rest[n:]
		}
		if err := p.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		return total, sink.total()
	}
	big, bigTotals := run(len(recs))
	small, smallTotals := run(10)
	if big.Occurrences != small.Occurrences || big.Malformed != small.Malformed || big.Occurrences == 0 || big.Malformed == 0 {
		t.Errorf("one batch: %d occurrences, %d malformed; batches of 10: %d, %d", big.Occurrences, big.Malformed, small.Occurrences, small.Malformed)
	}
	if fmt.Sprint(bigTotals) != fmt.Sprint(smallTotals) {
		t.Errorf("delivered: one batch %v, batches of 10 %v", bigTotals, smallTotals)
	}
}

// TestAggregatePackedAsByStrings: Aggregate, which sorts its occurrences
// as packed integers, gives what sorting them by bucket and strings gives
// (aggregateByStrings), for flows and metrics that share their strings or
// not, buckets of every width, and times from seconds to centuries apart
// (the widest beyond what Aggregate packs, so it takes the same way).
func TestAggregatePackedAsByStrings(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	names := []string{"", "F", "E", "Billing Main", "Après Vente", "F2", "A", "Transfer"}
	start := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	spans := []time.Duration{time.Second, time.Hour, 1000 * 24 * time.Hour, math.MaxInt64}
	widths := []time.Duration{0, 500 * time.Millisecond, time.Second, 10 * time.Second, time.Minute, 7 * time.Hour}
	for round := range 400 {
		var entries []flowmetrics.Entry
		span, width := spans[rng.IntN(len(spans))], widths[rng.IntN(len(widths))]
		for e := range rng.IntN(8) {
			var occs []flowmetrics.Occurrence
			for range rng.IntN(40) {
				o := flowmetrics.Occurrence{Flow: names[rng.IntN(3)], Metric: names[rng.IntN(len(names))]}
				if rng.IntN(2) == 0 {
					// The same text in a string of its own.
					o.Flow = strings.Clone(o.Flow)
				}
				switch {
				case span == math.MaxInt64 && rng.IntN(2) == 0:
					o.Time = time.Unix(rng.Int64N(1<<62)-1<<61, 0).Add(time.Duration(rng.Int64N(int64(time.Second))))
				default:
					o.Time = start.Add(time.Duration(rng.Int64N(int64(min(span, 2000*24*time.Hour)))))
				}
				occs = append(occs, o)
			}
			entries = append(entries, flowmetrics.Entry{Seq: uint64(e + 1), Occurrences: occs})
		}
		n := 0
		for _, e := range entries {
			n += len(e.Occurrences)
		}
		got, gotN := Aggregate(entries, width)
		want, wantN := aggregateByStrings(entries, width, n)
		if gotN != wantN || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("round %d (%d occurrences, width %v): got %d, %v; want %d, %v", round, n, width, gotN, got, wantN, want)
		}
	}
}

// TestOccurrencesCounterPerPair: the occurrences counter of each
// flow/metric pair, added once per pair and claim, counts each new
// occurrence of the pair once, whether its strings are shared or not.
func TestOccurrencesCounterPerPair(t *testing.T) {
	p, m := newTest(t, Config{})
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 8))
	flows, metrics := []string{"F", "Après Vente", "G"}, []string{"A", "B", "Transfer"}
	want := map[[2]string]int{}
	seen := map[string]bool{}
	for batch := range 5 {
		var recs []genesys.Record
		for i := range 300 {
			var names []string
			for range 1 + rng.IntN(4) {
				f, mt := flows[rng.IntN(len(flows))], metrics[rng.IntN(len(metrics))]
				name := fmt.Sprintf("%sMetric_%s(2026-11-20T09:%02d:%02dZ)", f, mt, rng.IntN(60), rng.IntN(60))
				conv := fmt.Sprintf("c%d", (batch*300+i)%97)
				if !seen[conv+"/"+name] && !slices.Contains(names, name) {
					seen[conv+"/"+name] = true
					want[[2]string{f, mt}]++
				}
				names = append(names, name)
			}
			recs = append(recs, event(fmt.Sprintf("c%d", (batch*300+i)%97), names...))
		}
		if _, err := p.Ingest(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range flows {
		for _, mt := range metrics {
			if got := testutil.ToFloat64(m.Occurrences.WithLabelValues(f, mt)); got != float64(want[[2]string{f, mt}]) {
				t.Errorf("%s/%s: got %v, want %d", f, mt, got, want[[2]string{f, mt}])
			}
		}
	}
}
