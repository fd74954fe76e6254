package dashboard

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// clock is a settable clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// t0 is 15 s into the minute 09:00.
var t0 = time.Date(2026, 3, 5, 9, 0, 15, 0, time.UTC)

func pt(flow, metric string, at time.Time, n int64) flowmetrics.Point {
	return flowmetrics.Point{Flow: flow, Metric: metric, Bucket: flowmetrics.BucketStart(at, 10*time.Second), Width: 10 * time.Second, Count: n}
}

// counts returns the non-zero buckets of a pair, by their distance from the
// newest bucket (0 = the one holding now).
func counts(p PairSeries) map[int]int64 {
	out := map[int]int64{}
	for i, c := range p.Counts {
		if c != 0 {
			out[len(p.Counts)-1-i] = c
		}
	}
	return out
}

func find(s Series, flow, metric string) (PairSeries, bool) {
	for _, p := range s.Pairs {
		if p.Flow == flow && p.Metric == metric {
			return p, true
		}
	}
	return PairSeries{}, false
}

func TestRecorderRanges(t *testing.T) {
	points := []flowmetrics.Point{
		pt("A", "x", t0, 2),                                  // now
		pt("A", "x", t0.Add(-25*time.Second), 1),             // 08:59:50 bucket
		pt("A", "x", t0.Add(-14*time.Minute), 3),             // in 15m
		pt("A", "x", t0.Add(-50*time.Minute), 4),             // in 1h, not 15m
		pt("A", "x", t0.Add(-5*time.Hour), 5),                // in 6h
		pt("A", "x", t0.Add(-23*time.Hour), 6),               // in 24h only
		pt("A", "x", t0.Add(-25*time.Hour), 7),               // total only
		pt("A", "x", t0.Add(3*time.Hour), 8),                 // a skewed clock: now
		pt("B", "y", t0.Add(-2*time.Minute), 1),              // another pair
		pt("B", "y", t0.Add(-2*time.Minute), 0),              // nothing
		pt("B", "z", t0.Add(-48*time.Hour), 1),               // total only, for a new pair
		pt("B", "y", t0.Add(-30*time.Second), -3),            // ignored
		pt("C", "w", t0.Add(-90*time.Minute+time.Second), 1), // 6h/24h only
	}
	for _, tc := range []struct {
		rng     string
		buckets int
		flow    string
		metric  string
		want    map[int]int64
		inRange int64
	}{
		// 10 s buckets: now is 09:00:10–20 (bucket 0).
		{"15m", 90, "A", "x", map[int]int64{0: 10, 2: 1, 84: 3}, 14},
		// 30 s buckets: now is 09:00:00–30.
		{"1h", 120, "A", "x", map[int]int64{0: 10, 1: 1, 28: 3, 100: 4}, 18},
		// 5 min buckets: now is 09:00–09:05; 08:59:50 is in 08:55.
		{"6h", 72, "A", "x", map[int]int64{0: 10, 1: 1, 3: 3, 10: 4, 60: 5}, 23},
		// 15 min buckets: 09:00–09:15 is 0; 08:46:15 (−14m) is 1.
		{"24h", 96, "A", "x", map[int]int64{0: 10, 1: 1 + 3, 4: 4, 20: 5, 92: 6}, 29},
		{"1h", 120, "B", "y", map[int]int64{4: 1}, 1},
		{"1h", 120, "B", "z", map[int]int64{}, 0},
		{"1h", 120, "C", "w", map[int]int64{}, 0},
		{"6h", 72, "C", "w", map[int]int64{18: 1}, 1},
	} {
		t.Run(tc.rng+" "+tc.flow+tc.metric, func(t *testing.T) {
			r := NewRecorder(func() time.Time { return t0 })
			if err := r.Send(context.Background(), points); err != nil {
				t.Fatal(err)
			}
			rg, _ := RangeByName(tc.rng)
			s := r.Read(rg)
			if s.Total != 39 {
				t.Errorf("total: got %d, want 39", s.Total)
			}
			p, ok := find(s, tc.flow, tc.metric)
			if !ok {
				t.Fatalf("no pair %s/%s in %+v", tc.flow, tc.metric, s.Pairs)
			}
			if len(p.Counts) != tc.buckets {
				t.Errorf("buckets: got %d, want %d", len(p.Counts), tc.buckets)
			}
			want := maps.Clone(tc.want)
			maps.DeleteFunc(want, func(_ int, v int64) bool { return v == 0 })
			if got := counts(p); !maps.Equal(got, want) {
				t.Errorf("counts by age: got %v, want %v", got, want)
			}
			if p.InRange != tc.inRange {
				t.Errorf("in range: got %d, want %d", p.InRange, tc.inRange)
			}
		})
	}
}

func TestRecorderRates(t *testing.T) {
	c := &clock{t: t0} // 09:00:15
	r := NewRecorder(c.Now)
	// Two per minute for the two hours before the last two minutes, then
	// three per 10 s bucket in the last minute: an incident.
	var points []flowmetrics.Point
	for m := 120; m >= 2; m-- {
		points = append(points, pt("A", "x", t0.Add(-time.Duration(m)*time.Minute), 2))
	}
	for s := 0; s <= 70; s += 10 {
		points = append(points, pt("A", "x", t0.Add(-time.Duration(s)*time.Second), 3))
	}
	points = append(points, pt("B", "new", t0.Add(-30*time.Second), 5))
	r.Send(context.Background(), points)
	s := r.Read(Ranges[1])
	// Now: the buckets from 08:59:20 to 09:00:15, the current one
	// (09:00:10) up to now: 55 s, 6 buckets of 3. Usual: the minutes from
	// 07:59 to 08:58, 2 each (the minute of 08:59:20 is not in it).
	a, _ := find(s, "A", "x")
	if a.NowCount != 18 || a.NowMinutes != 55.0/60 || a.RateNow != 18/(55.0/60) || a.RateUsual != 2 {
		t.Errorf("A: %d in %v min, rate now %v, usual %v; want 18 in 55 s, %v, 2", a.NowCount, a.NowMinutes, a.RateNow, 18/(55.0/60), a.RateUsual)
	}
	if a.Last != flowmetrics.BucketStart(t0, 10*time.Second) {
		t.Errorf("A last seen: got %v, want %v", a.Last, flowmetrics.BucketStart(t0, 10*time.Second))
	}
	b, _ := find(s, "B", "new")
	if b.NowCount != 5 || b.RateUsual != -1 {
		t.Errorf("B: %d now, usual %v, want 5 and -1 (no history)", b.NowCount, b.RateUsual)
	}
	// Seen only before the hour: its usual rate is 0 over the hour, not
	// unknown.
	c.Set(t0.Add(3 * time.Hour))
	a, _ = find(r.Read(Ranges[1]), "A", "x")
	if a.RateUsual != 0 || a.NowCount != 0 {
		t.Errorf("A three hours later: now %d, usual %v, want 0 and 0", a.NowCount, a.RateUsual)
	}
}

// store applies state updates as the pipeline commits them.
type store map[string][]byte

func (s store) apply(t *testing.T, u flowmetrics.StateUpdate) {
	t.Helper()
	for k, v := range u {
		if len(k) > 512 || len(v) > 64<<10 {
			t.Fatalf("state key %q (%d bytes) or value (%d bytes) too large", k, len(k), len(v))
		}
		if v == nil {
			delete(s, k)
		} else {
			s[k] = slices.Clone(v)
		}
	}
}

func TestRecorderRestore(t *testing.T) {
	c := &clock{t: t0}
	r := NewRecorder(c.Now)
	st := store{}
	ctx := context.Background()
	long := strings.Repeat("Ω", 400) // names far beyond a state key's length
	for i := range 200 {
		c.Set(t0.Add(time.Duration(i) * 37 * time.Second))
		now := c.Now()
		r.Send(ctx, []flowmetrics.Point{
			pt("Billing", "Paid", now.Add(-time.Duration(i%50)*time.Minute), int64(i%3+1)),
			pt(long, long, now, 1),
		})
		if i%7 == 0 {
			r.Malformed("Billing", fmt.Sprintf("BillingMetric_Pay(2026-03-05 09:%02d:00Z)", i%60), "time has a space")
		}
		st.apply(t, r.TakeState())
	}
	if u := r.TakeState(); u != nil {
		t.Errorf("TakeState with nothing new: got %d keys, want nil", len(u))
	}

	r2 := NewRecorder(c.Now)
	if err := r2.Restore(ctx, maps.Clone(st)); err != nil {
		t.Fatal(err)
	}
	for _, rg := range Ranges {
		if got, want := r2.Read(rg), r.Read(rg); !reflect.DeepEqual(got, want) {
			t.Errorf("%s after restore:\ngot  %+v\nwant %+v", rg.Name, got.Pairs, want.Pairs)
		}
	}
	m1, l1 := r.MalformedNames()
	m2, l2 := r2.MalformedNames()
	if !reflect.DeepEqual(m1, m2) || l1 != l2 {
		t.Errorf("malformed after restore: got %+v, want %+v", m2, m1)
	}
	if len(m1) != 1 || len(m1[0].Names) != 1 || m1[0].Names[0].Count != 29 {
		t.Errorf("malformed: got %+v, want one shape seen 29 times", m1)
	}
	// A restored Recorder goes on from there.
	r2.Send(ctx, []flowmetrics.Point{pt("Billing", "Paid", c.Now(), 1)})
	st.apply(t, r2.TakeState())
	r3 := NewRecorder(c.Now)
	r3.Restore(ctx, st)
	if got, want := r3.Read(Ranges[3]).Total, r.Read(Ranges[3]).Total+1; got != want {
		t.Errorf("total after a second restart: got %d, want %d", got, want)
	}
}

// The sink state stays bounded: after two days of steady traffic it holds
// only the chunks of the spans, and restoring much later drops the rest.
func TestRecorderStateBounded(t *testing.T) {
	c := &clock{t: t0}
	r := NewRecorder(c.Now)
	st := store{}
	ctx := context.Background()
	const pairs = 10
	maxKeys := 0
	for m := 0; m < 48*60; m++ {
		c.Set(t0.Add(time.Duration(m) * time.Minute))
		var pts []flowmetrics.Point
		for p := range pairs {
			pts = append(pts, pt("F", fmt.Sprint(p), c.Now(), 1))
		}
		r.Send(ctx, pts)
		st.apply(t, r.TakeState())
		maxKeys = max(maxKeys, len(st))
	}
	// Per pair: its name, ≤ 26 hourly chunks, ≤ 8 ten-minute chunks.
	if bound := pairs * (1 + 26 + 8); maxKeys > bound {
		t.Errorf("state keys: up to %d, want ≤ %d", maxKeys, bound)
	}
	var bytes int
	for k, v := range st {
		bytes += len(k) + len(v)
	}
	t.Logf("state after 48 h of %d pairs at 1/min: %d keys, %d bytes (peak %d keys)", pairs, len(st), bytes, maxKeys)

	// Two days later, restoring forgets every bucket (the pairs too, once
	// the Recorder is crowded; here it is not, so they stay with totals).
	c.Set(c.Now().Add(48 * time.Hour))
	r2 := NewRecorder(c.Now)
	r2.Restore(ctx, maps.Clone(st))
	st.apply(t, r2.TakeState())
	for k := range st {
		if !strings.HasPrefix(k, "n/") {
			t.Errorf("state key %q survived 48 h of silence", k)
		}
	}
	if got := r2.Read(Ranges[3]).Total; got != 48*60*pairs {
		t.Errorf("total: got %d, want %d", got, 48*60*pairs)
	}
}

func TestRecorderRestoreSkipsBadState(t *testing.T) {
	r := NewRecorder(func() time.Time { return t0 })
	good := NewRecorder(func() time.Time { return t0 })
	good.Send(context.Background(), []flowmetrics.Point{pt("A", "x", t0, 3)})
	st := store(good.TakeState())
	id := seriesID("A", "x")
	st["f/"+id+"/notanumber"] = []byte{1}
	st["c/ffffffffffffffff/1"] = []byte{1}                         // no such pair
	st["f/"+id+"/1"] = []byte{0xff}                                // not 60 varints
	st["n/0000000000000000"] = []byte(`{"flow":"B","metric":"y"}`) // id does not match
	st["x/abc"] = []byte("{")
	st["zz"] = []byte("?")
	if err := r.Restore(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	if r.restoreSkipped != 6 {
		t.Errorf("skipped: got %d, want 6", r.restoreSkipped)
	}
	u := r.TakeState()
	for _, k := range []string{"f/" + id + "/notanumber", "c/ffffffffffffffff/1", "f/" + id + "/1", "n/0000000000000000", "x/abc", "zz"} {
		if v, ok := u[k]; !ok || v != nil {
			t.Errorf("bad key %q: got update %v %v, want a deletion", k, v, ok)
		}
	}
	if p, _ := find(r.Read(Ranges[0]), "A", "x"); p.InRange != 3 {
		t.Errorf("good pair: got %d, want 3", p.InRange)
	}
}

func TestRecorderOverflow(t *testing.T) {
	r := NewRecorder(func() time.Time { return t0 })
	r.maxSeries = 2
	r.Send(context.Background(), []flowmetrics.Point{pt("A", "1", t0, 1), pt("A", "2", t0, 2), pt("B", "1", t0, 3), pt("C", "1", t0, 4)})
	var got []string
	for _, p := range r.Read(Ranges[0]).Pairs {
		got = append(got, fmt.Sprintf("%s/%s=%d", p.Flow, p.Metric, p.InRange))
	}
	if want := []string{"A/1=1", "A/2=2", "overflow/overflow=7"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestMalformedCaps(t *testing.T) {
	r := NewRecorder(func() time.Time { return t0 })
	for i := range MaxMalformedPerFlow + 10 {
		r.Malformed("A", fmt.Sprintf("AMetric_x%d(bad)", i), "why")
		r.Malformed("A", fmt.Sprintf("AMetric_x%d(worse)", i), "why") // the same shape
	}
	for i := range MaxMalformed {
		r.Malformed(fmt.Sprint("F", i), "Metric_y()", "why")
	}
	flows, lost := r.MalformedNames()
	var a MalformedFlow
	names := 0
	for _, f := range flows {
		names += len(f.Names)
		if f.Flow == "A" {
			a = f
		}
	}
	if len(a.Names) != MaxMalformedPerFlow || a.NotKept != 20 || a.Names[0].Count != 2 {
		t.Errorf("flow A: got %d names, %d not kept, first seen %d×; want %d, 20, 2×", len(a.Names), a.NotKept, a.Names[0].Count, MaxMalformedPerFlow)
	}
	if names != MaxMalformed || lost != MaxMalformedPerFlow {
		t.Errorf("in all: got %d names and %d lost, want %d and %d", names, lost, MaxMalformed, MaxMalformedPerFlow)
	}
	r.Malformed("Z", strings.Repeat("é", 1000)+"(x)", "why")
	for _, tc := range []struct{ in, want string }{
		{"AMetric_B(2026-01-01 00:00Z)", "AMetric_B(…)"},
		{"AMetric_B(x)(y)", "AMetric_B(x)(…)"},
		{"AMetric_B", "AMetric_B"},
	} {
		if got := Shape(tc.in); got != tc.want {
			t.Errorf("Shape(%q): got %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := cut(strings.Repeat("é", 1000)); len(got) > maxNameBytes+3 || !strings.HasSuffix(got, "é…") {
		t.Errorf("cut: got %d bytes ending %q, want ≤ %d ending é…", len(got), got[len(got)-5:], maxNameBytes+3)
	}
}

// statefulSink is a StatefulSink that fails when told to.
type statefulSink struct {
	fail     error
	restored map[string][]byte
}

func (s *statefulSink) Name() string { return "datadog" }
func (s *statefulSink) Send(context.Context, []flowmetrics.Point) error {
	return s.fail
}
func (s *statefulSink) Close(context.Context) error { return nil }
func (s *statefulSink) Restore(_ context.Context, st map[string][]byte) error {
	s.restored = st
	return nil
}
func (s *statefulSink) TakeState() flowmetrics.StateUpdate {
	return flowmetrics.StateUpdate{"k": []byte("v")}
}

type plainSink struct{}

func (plainSink) Name() string                                    { return "jsonl" }
func (plainSink) Send(context.Context, []flowmetrics.Point) error { return nil }
func (plainSink) Close(context.Context) error                     { return nil }

func TestWatch(t *testing.T) {
	c := &clock{t: t0}
	r := NewRecorder(c.Now)
	inner := &statefulSink{}
	w := r.Watch(inner)
	ws, ok := w.(flowmetrics.StatefulSink)
	if !ok {
		t.Fatal("a watched StatefulSink is not a StatefulSink")
	}
	if _, ok := r.Watch(plainSink{}).(flowmetrics.StatefulSink); ok {
		t.Error("a watched plain sink claims to be a StatefulSink")
	}
	ws.Restore(context.Background(), map[string][]byte{"a": nil})
	if _, ok := inner.restored["a"]; !ok || string(ws.TakeState()["k"]) != "v" || w.Name() != "datadog" {
		t.Error("Restore, TakeState or Name not passed through")
	}
	w.Send(context.Background(), nil)
	c.Set(t0.Add(time.Minute))
	inner.fail = errors.New("datadog: 503 Service Unavailable")
	if err := w.Send(context.Background(), nil); err != inner.fail {
		t.Errorf("Send: got %v, want the sink's error", err)
	}
	got := r.Statuses()
	want := []SinkStatus{
		{Name: "datadog", LastSuccess: t0, LastError: t0.Add(time.Minute), Error: "datadog: 503 Service Unavailable"},
		{Name: "jsonl"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("statuses: got %+v, want %+v", got, want)
	}
}

// holdingSink is a StatefulSink that holds points until a time, as the
// OTLP sink holds its windows.
type holdingSink struct {
	statefulSink
	due bool
}

func (h *holdingSink) Due(time.Time) bool { return h.due }

func TestWatchKeepsAHolder(t *testing.T) {
	r := NewRecorder((&clock{t: t0}).Now)
	inner := &holdingSink{due: true}
	h, ok := r.Watch(inner).(flowmetrics.Holder)
	if !ok {
		t.Fatal("a watched flowmetrics.Holder is not a Holder: the pipeline would never send its held windows without new traffic")
	}
	if !h.Due(t0) {
		t.Error("Due not passed through")
	}
	if _, ok := r.Watch(&statefulSink{}).(flowmetrics.Holder); ok {
		t.Error("a watched StatefulSink that holds nothing claims to be a Holder")
	}
}

// TestMalformedDoesNotWaitOnSeries: ingest reports malformed names while
// the pipeline sends, pages read and the state is written, all under the
// series lock; the report must not wait for it. (Before, a state write of
// 1,000 changed names held that lock for about half a second:
// BenchmarkMalformedDuringTakeState.)
func TestMalformedDoesNotWaitOnSeries(t *testing.T) {
	r := NewRecorder(func() time.Time { return t0 })
	r.mu.Lock() // as a long Send, Read or TakeState would
	done := make(chan struct{})
	go func() {
		r.Malformed("A", "AMetric_x(bad)", "why")
		r.MalformedNames()
		r.Changed()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("Malformed waited on the series lock")
	}
	r.mu.Unlock()
	<-done
	// And its state is still written, once.
	u := r.TakeState()
	if len(u) != 1 || u[malKey("A", "AMetric_x(…)")] == nil {
		t.Errorf("state after one malformed name: got %v, want its x/ key", u)
	}
	if u := r.TakeState(); u != nil {
		t.Errorf("second TakeState: got %v, want nothing", u)
	}
}
