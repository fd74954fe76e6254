package otlp

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
)

// The drainer sends the sink an empty batch when a held window is due.
var _ flowmetrics.Holder = (*Sink)(nil)

// held returns a sink on clk that a pipeline restored (so it keeps open
// windows in its state rather than sending them at Close).
func held(t *testing.T, c *collector, clk *fakeClock, cfg Config) *Sink {
	t.Helper()
	cfg.Endpoint, cfg.Now = c.srv.URL, clk.Now
	s := newSink(t, cfg, naming.Config{})
	if err := s.Restore(context.Background(), map[string][]byte{}); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestWatermark: a bucket is sent once its end plus the watermark has
// passed, not before, and Due says when.
func TestWatermark(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0.Add(15 * time.Second)}
	s := held(t, c, clk, Config{})
	ctx := context.Background()
	if err := s.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 2)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 3)}); err != nil {
		t.Fatal(err)
	}
	if n := len(c.requests()); n != 0 {
		t.Fatalf("got %d requests before the watermark, want 0", n)
	}
	end := t0.Add(10 * time.Second)
	if s.Due(end.Add(defaultWatermark - time.Nanosecond)) {
		t.Error("Due just before the watermark: got true, want false")
	}
	if !s.Due(end.Add(defaultWatermark)) {
		t.Error("Due at the watermark: got false, want true")
	}
	clk.Set(end.Add(defaultWatermark))
	if err := s.Send(ctx, nil); err != nil { // closes it
		t.Fatal(err)
	}
	if n := len(c.requests()); n != 0 {
		t.Fatalf("got %d requests when closing, want 0 (sent once its closing is committed)", n)
	}
	if !s.Due(clk.Now()) {
		t.Error("Due with a closed window: got false, want true")
	}
	if err := s.Send(ctx, nil); err != nil {
		t.Fatal(err)
	}
	want := []win{{"F", "M", t0, end, 5}}
	if got := c.windows(); len(got) != 1 || got[0] != want[0] {
		t.Errorf("got %+v, want %+v (both batches in one window)", got, want)
	}
	if s.Due(clk.Now().Add(time.Hour)) {
		t.Error("Due after sending: got true, want false")
	}
}

// TestLateGoesToNextWindow: occurrences of a bucket already sent are
// counted in the stream's next window, never in a second copy of theirs.
func TestLateGoesToNextWindow(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0.Add(50 * time.Second)}
	s := held(t, c, clk, Config{})
	ctx := context.Background()
	s.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 2)})
	// Late for t0; on time for t0+20s (not yet due); and a late one
	// that goes to the next window, t0+10s (due at once).
	deliver(ctx, s, []flowmetrics.Point{pt("F", "M", t0, 3), pt("F", "M", t0.Add(20*time.Second), 1)})
	got := c.windows()
	want := []win{
		{"F", "M", t0, t0.Add(10 * time.Second), 2},
		{"F", "M", t0.Add(10 * time.Second), t0.Add(20 * time.Second), 3},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("window %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if n := testutil.ToFloat64(s.m.PointsAdjusted.WithLabelValues(Name, ReasonLate)); n != 3 {
		t.Errorf("got %v late occurrences counted, want 3", n)
	}
	// Late for t0 and t0+10s again: they join the open t0+20s window.
	s.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 1), pt("F", "M", t0.Add(10*time.Second), 1)})
	clk.Set(t0.Add(20*time.Second + 10*time.Second + defaultWatermark))
	deliver(ctx, s, nil)
	got = c.windows()
	if len(got) != 3 || got[2] != (win{"F", "M", t0.Add(20 * time.Second), t0.Add(30 * time.Second), 3}) {
		t.Errorf("got %+v, want a third window [t0+20s, t0+30s) of 3", got)
	}
	checkAdvancing(t, got)
}

// checkAdvancing fails when a stream's windows overlap or go back.
func checkAdvancing(t *testing.T, ws []win) {
	t.Helper()
	last := map[string]time.Time{}
	for _, w := range ws {
		k := w.flow + "|" + w.metric
		if w.start.Before(last[k]) || !w.end.After(w.start) {
			t.Errorf("%s: window [%v, %v) overlaps the last one, ending %v", k, w.start, w.end, last[k])
		}
		last[k] = w.end
	}
}

// TestRestart: the state taken after each Send, restored in a new sink,
// keeps the open windows and the sent ends, so the new sink neither
// loses nor repeats a window.
func TestRestart(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0.Add(45 * time.Second)}
	ctx := context.Background()
	a := held(t, c, clk, Config{})
	// t0 is due at once; t0+10s and t0+20s stay open.
	deliver(ctx, a, []flowmetrics.Point{pt("F", "M", t0, 1), pt("F", "M", t0.Add(10*time.Second), 2), pt("G", "N", t0.Add(20*time.Second), 4)})
	state := map[string][]byte{}
	for k, v := range a.TakeState() {
		if v == nil {
			delete(state, k)
		} else {
			state[k] = v
		}
	}
	if len(c.windows()) != 1 {
		t.Fatalf("got %d windows sent before the restart, want 1", len(c.windows()))
	}
	for k, v := range state {
		if len(k) > flowmetrics.MaxStateKey || len(v) > flowmetrics.MaxStateValue {
			t.Errorf("state key %q (%d bytes) over the limits", k, len(v))
		}
	}

	b := held(t, c, clk, Config{})
	if err := b.Restore(ctx, state); err != nil {
		t.Fatal(err)
	}
	b.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 5)}) // late for the window sent before the restart
	clk.Set(t0.Add(time.Hour))
	deliver(ctx, b, nil)
	got := c.windows()
	checkAdvancing(t, got)
	totals := map[string]int64{}
	for _, w := range got {
		totals[w.flow+"|"+w.metric] += w.value
	}
	if totals["F|M"] != 8 || totals["G|N"] != 4 {
		t.Errorf("got totals %v, want F|M 8 and G|N 4", totals)
	}
}

// TestCumulative: each point carries the stream's total since its first
// window, with that window's start.
func TestCumulative(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0.Add(time.Hour)}
	s := held(t, c, clk, Config{Temporality: Cumulative})
	ctx := context.Background()
	s.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 2), pt("F", "M", t0.Add(20*time.Second), 3)})
	s.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 1)}) // late: the next window
	s.Send(ctx, nil)
	got := c.windows()
	want := []win{
		{"F", "M", t0, t0.Add(10 * time.Second), 2},
		{"F", "M", t0, t0.Add(30 * time.Second), 5},
		{"F", "M", t0, t0.Add(40 * time.Second), 6},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("point %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	if temp := c.requests()[0].ResourceMetrics[0].ScopeMetrics[0].Metrics[0].GetSum().AggregationTemporality; temp.String() != "AGGREGATION_TEMPORALITY_CUMULATIVE" {
		t.Errorf("got temporality %v, want CUMULATIVE", temp)
	}
}

// TestFuture: a bucket more than ten minutes ahead is counted in the
// present's, so a wrong clock cannot hold windows open for years.
func TestFuture(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0}
	s := held(t, c, clk, Config{})
	s.Send(context.Background(), []flowmetrics.Point{pt("F", "M", t0.AddDate(5, 0, 0), 2)})
	clk.Set(t0.Add(time.Minute))
	deliver(context.Background(), s, nil)
	if got := c.windows(); len(got) != 1 || !got[0].start.Equal(t0) || got[0].value != 2 {
		t.Errorf("got %+v, want one window at t0 of 2", got)
	}
	if n := testutil.ToFloat64(s.m.PointsAdjusted.WithLabelValues(Name, ReasonFuture)); n != 2 {
		t.Errorf("got %v future occurrences counted, want 2", n)
	}
}

// TestCoalesce: a stream never holds more than maxOpen windows; the
// oldest merge, nothing is lost and nothing overlaps.
func TestCoalesce(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0}
	s := held(t, c, clk, Config{})
	var points []flowmetrics.Point
	for i := 0; i < maxOpen+44; i++ {
		points = append(points, flowmetrics.Point{Flow: "F", Metric: "M", Bucket: t0.Add(time.Duration(i) * time.Second), Width: time.Second, Count: 1})
	}
	s.Send(context.Background(), points)
	for _, st := range s.ws.streams {
		if len(st.Open) > maxOpen {
			t.Errorf("got %d open windows, want ≤ %d", len(st.Open), maxOpen)
		}
	}
	if n := testutil.ToFloat64(s.m.PointsAdjusted.WithLabelValues(Name, ReasonCoalesced)); n != 44 {
		t.Errorf("got %v coalesced, want 44", n)
	}
	up := s.TakeState()
	for k, v := range up {
		if len(v) > flowmetrics.MaxStateValue {
			t.Errorf("state %s: %d bytes, want ≤ %d", k, len(v), flowmetrics.MaxStateValue)
		}
	}
	clk.Set(t0.Add(time.Hour))
	deliver(context.Background(), s, nil)
	got := c.windows()
	checkAdvancing(t, got)
	var total int64
	for _, w := range got {
		total += w.value
	}
	if total != int64(len(points)) {
		t.Errorf("got %d occurrences sent, want %d", total, len(points))
	}
}

// TestForget: a stream idle for a day leaves the state; the floor keeps
// its end, so a late occurrence for it cannot overlap what it sent.
func TestForget(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0.Add(time.Minute)}
	s := held(t, c, clk, Config{})
	ctx := context.Background()
	s.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 1)})
	s.TakeState()
	clk.Set(t0.Add(25 * time.Hour))
	s.Send(ctx, []flowmetrics.Point{pt("G", "N", t0.Add(25*time.Hour-time.Minute), 1)})
	up := s.TakeState()
	if v, ok := up[streamKey("genesys.flow.metric", "F", "M")]; !ok || v != nil {
		t.Errorf("got %q for the idle stream, want it deleted", v)
	}
	if string(up[floorKey]) == "" {
		t.Error("got no floor, want the forgotten stream's end")
	}
	s.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 1)})
	clk.Add(time.Hour)
	deliver(ctx, s, nil)
	got := c.windows()
	checkAdvancing(t, got)
	if len(got) != 3 {
		t.Errorf("got %d windows, want 3 (F, G, then F's late one)", len(got))
	}
}

// TestFlushOnClose: when nothing commits the state (no Restore, or the
// memory store), Close sends the open windows; with a restored state it
// leaves them for the next start.
func TestFlushOnClose(t *testing.T) {
	tests := []struct {
		name      string
		restore   bool
		flush     bool
		wantSent  int
		wantState bool
	}{
		{"not restored", false, false, 1, false},
		{"memory store", true, true, 1, false},
		{"durable store", true, false, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCollector(t)
			clk := &fakeClock{now: t0}
			s, err := New(Config{Endpoint: c.srv.URL, Now: clk.Now}, sink.Deps{Log: quiet, Ephemeral: tt.flush})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close(context.Background()) })
			if tt.restore {
				s.Restore(context.Background(), nil)
			}
			s.Send(context.Background(), []flowmetrics.Point{pt("F", "M", t0, 3)})
			if err := s.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := len(c.windows()); got != tt.wantSent {
				t.Errorf("got %d windows sent at Close, want %d", got, tt.wantSent)
			}
		})
	}
}

// TestRestoreBadState: an unreadable key is dropped and reported, and the
// floor moves to the present, so nothing overlaps what it held.
func TestRestoreBadState(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0.Add(time.Minute)}
	s := held(t, c, clk, Config{})
	bad := map[string][]byte{streamKey("genesys.flow.metric", "F", "M"): []byte("{not json")}
	if err := s.Restore(context.Background(), bad); err != nil {
		t.Fatalf("got %v, want nil (skipped)", err)
	}
	if n := testutil.ToFloat64(s.m.PointsAdjusted.WithLabelValues(Name, "state_unreadable")); n != 1 {
		t.Errorf("got %v unreadable keys counted, want 1", n)
	}
	up := s.TakeState()
	if v, ok := up[streamKey("genesys.flow.metric", "F", "M")]; !ok || v != nil {
		t.Errorf("got %q, want the bad key deleted", v)
	}
	s.Send(context.Background(), []flowmetrics.Point{pt("F", "M", t0, 1)})
	clk.Add(time.Hour)
	deliver(context.Background(), s, nil)
	got := c.windows()
	if len(got) != 1 || got[0].start.Before(t0.Add(time.Minute)) {
		t.Errorf("got %+v, want one window starting at the restore time or later", got)
	}
}

func TestStreamKey(t *testing.T) {
	a := streamKey("n", "a|b", "c")
	if a == streamKey("n", "a", "b|c") {
		t.Error("got the same key for different flow/metric splits")
	}
	if long := streamKey("n", strings.Repeat("x", 10000), "m"); len(long) > flowmetrics.MaxStateKey {
		t.Errorf("got a key of %d bytes, want ≤ %d", len(long), flowmetrics.MaxStateKey)
	}
}

// TestResendAfterCrashIsIdentical: a window is sent only after its closing
// is committed, so when the process dies after the collector took it but
// before its delivery was committed, the next start sends the very same
// point (start, end, value), even if late occurrences for it arrived in
// between: those go to the next window.
func TestResendAfterCrashIsIdentical(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0.Add(time.Minute)}
	ctx := context.Background()
	a := held(t, c, clk, Config{})
	a.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 3)}) // closes t0
	committed := map[string][]byte{}
	for k, v := range a.TakeState() {
		committed[k] = v
	}
	a.Send(ctx, nil) // sends it; the process dies before this is committed
	b := held(t, c, clk, Config{})
	b.Restore(ctx, committed)
	b.Send(ctx, []flowmetrics.Point{pt("F", "M", t0, 2)}) // the outbox again, and a late one
	clk.Add(time.Hour)
	deliver(ctx, b, nil)
	got := c.windows()
	if len(got) != 3 || got[0] != got[1] {
		t.Fatalf("got %+v, want the t0 window twice, identical, then the late one", got)
	}
	if got[2] != (win{"F", "M", t0.Add(10 * time.Second), t0.Add(20 * time.Second), 2}) {
		t.Errorf("got %+v, want the late occurrences in [t0+10s, t0+20s)", got[2])
	}
}

// TestNameTooLong: a stream whose names could not fit one state value is
// dropped and counted, and the rest of the batch goes on.
func TestNameTooLong(t *testing.T) {
	c := newCollector(t)
	clk := &fakeClock{now: t0.Add(time.Hour)}
	s := held(t, c, clk, Config{})
	long := strings.Repeat("<", maxIdentity/6) // escaped as \u003c in the state
	if err := deliver(context.Background(), s, []flowmetrics.Point{pt(long, "M", t0, 2), pt("F", "M", t0, 1)}); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(s.m.OutboxDropped.WithLabelValues(Name, "name_too_long")); n != 2 {
		t.Errorf("got %v dropped as name_too_long, want 2", n)
	}
	if got := c.windows(); len(got) != 1 || got[0].flow != "F" {
		t.Errorf("got %+v, want the F window only", got)
	}
	for k, v := range s.TakeState() {
		if len(v) > flowmetrics.MaxStateValue {
			t.Errorf("state %s: %d bytes", k, len(v))
		}
	}
}

// TestStateValueBound: the largest stream the sink keeps (names at the
// limit, the most open and closed windows) fits one state value.
func TestStateValueBound(t *testing.T) {
	c := newCollector(t, reply{status: 503}) // the closed windows cannot leave
	clk := &fakeClock{now: t0.Add(time.Millisecond)}
	s := held(t, c, clk, Config{Watermark: time.Nanosecond})
	flow := strings.Repeat("<", maxIdentity/6-200)
	batch := func(from int) []flowmetrics.Point {
		var points []flowmetrics.Point
		for i := from; i < from+maxOpen; i++ {
			points = append(points, flowmetrics.Point{Flow: flow, Metric: "M", Bucket: t0.Add(time.Duration(i) * time.Second), Width: time.Second, Count: 1 << 40})
		}
		return points
	}
	if err := s.Send(context.Background(), batch(-maxOpen)); err != nil { // all closed
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), batch(0)); err == nil { // all open; the send fails
		t.Fatal("got nil, want the 503")
	}
	for _, st := range s.ws.streams {
		if len(st.Closed) != maxOpen || len(st.Open) != maxOpen {
			t.Fatalf("got %d closed and %d open windows, want %d each", len(st.Closed), len(st.Open), maxOpen)
		}
	}
	up := s.TakeState()
	if len(up) != 1 {
		t.Fatalf("got %d keys, want 1 (the name should fit)", len(up))
	}
	for k, v := range up {
		if len(v) > flowmetrics.MaxStateValue {
			t.Errorf("state %s: %d bytes, want ≤ %d", k, len(v), flowmetrics.MaxStateValue)
		}
		t.Logf("largest stream state: %d bytes", len(v))
	}
}
