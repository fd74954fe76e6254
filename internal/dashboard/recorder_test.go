package dashboard

import (
	"context"
	"fmt"
	"slices"
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

// t0 is 15 s into the slot 09:00:00–09:00:30.
var t0 = time.Date(2023, 3, 5, 9, 0, 15, 0, time.UTC)

func pt(flow, metric string, at time.Time, n int64) flowmetrics.Point {
	return flowmetrics.Point{Flow: flow, Metric: metric, Bucket: at, Width: 10 * time.Second, Count: n}
}

// want is what one series should hold: slot counts by their offset from the
// newest slot (0 = current, 1 = the one before, …).
type want struct {
	flow, metric            string
	slots                   map[int]int64
	recent, inWindow, total int64
}

func TestRecorder(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sends  [][]flowmetrics.Point
		now    time.Time // clock at Snapshot (sends happen at t0)
		want   []want
		other  *want
		total  int64
		maxSer int
	}{
		{
			name:  "empty",
			now:   t0,
			want:  nil,
			total: 0,
		},
		{
			name: "slots, last 5 min and window",
			sends: [][]flowmetrics.Point{{
				pt("CustomerRouting", "Unknown", t0.Add(-10*time.Second), 2),                // current slot
				pt("CustomerRouting", "Unknown", t0.Add(-40*time.Second), 1),                // previous slot
				pt("CustomerRouting", "Unknown", t0.Add(-4*time.Minute-40*time.Second), 3),  // 9 slots back: inside 5 min
				pt("CustomerRouting", "Unknown", t0.Add(-5*time.Minute-10*time.Second), 4),  // 10 back: outside
				pt("CustomerRouting", "Unknown", t0.Add(-59*time.Minute-30*time.Second), 5), // oldest slot
			}, {
				pt("CustomerRouting", "Unknown", t0.Add(-10*time.Second), 1), // same slot, later batch: summed
				pt("Billing Main", "PaymentTaken", t0.Add(-20*time.Minute), 7),
			}},
			now: t0,
			want: []want{
				{"Billing Main", "PaymentTaken", map[int]int64{40: 7}, 0, 7, 7},
				{"CustomerRouting", "Unknown", map[int]int64{0: 3, 1: 1, 9: 3, 10: 4, 119: 5}, 7, 16, 16},
			},
			total: 23,
		},
		{
			name: "older than the window counts only in totals",
			sends: [][]flowmetrics.Point{{
				pt("F", "M", t0.Add(-time.Hour), 1), // exactly one window back: just out
				pt("F", "M", t0.Add(-48*time.Hour), 2),
			}},
			now:   t0,
			want:  []want{{"F", "M", nil, 0, 0, 3}},
			total: 3,
		},
		{
			name:  "ahead of the clock counts in the current slot",
			sends: [][]flowmetrics.Point{{pt("F", "M", t0.Add(3*time.Minute), 1), pt("F", "M", time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC), 1)}},
			now:   t0,
			want:  []want{{"F", "M", map[int]int64{0: 2}, 2, 2, 2}},
			total: 2,
		},
		{
			name:  "slots age out as the clock moves",
			sends: [][]flowmetrics.Point{{pt("F", "M", t0.Add(-time.Minute), 1), pt("F", "M", t0.Add(-50*time.Minute), 2)}},
			now:   t0.Add(30 * time.Minute),
			want:  []want{{"F", "M", map[int]int64{62: 1}, 0, 1, 3}},
			total: 3,
		},
		{
			name:  "all pruned after a window, totals stay",
			sends: [][]flowmetrics.Point{{pt("F", "M", t0, 1)}},
			now:   t0.Add(time.Hour),
			want:  []want{{"F", "M", nil, 0, 0, 1}},
			total: 1,
		},
		{
			name:  "non-positive counts are ignored",
			sends: [][]flowmetrics.Point{{pt("F", "M", t0, 0), pt("F", "M", t0, -3)}},
			now:   t0,
			total: 0,
		},
		{
			name:   "pairs beyond the limit go to other",
			maxSer: 2,
			sends: [][]flowmetrics.Point{
				{pt("A", "1", t0, 1), pt("A", "2", t0, 1), pt("A", "3", t0, 5)},
				{pt("B", "1", t0.Add(-2*time.Minute), 2), pt("A", "1", t0, 1)}, // a kept pair stays kept
			},
			now: t0,
			want: []want{
				{"A", "1", map[int]int64{0: 2}, 2, 2, 2},
				{"A", "2", map[int]int64{0: 1}, 1, 1, 1},
			},
			other: &want{"", "", map[int]int64{0: 5, 4: 2}, 7, 7, 7},
			total: 10,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &clock{t: t0}
			r := NewRecorder(time.Hour, c.Now)
			if tc.maxSer > 0 {
				r.maxSeries = tc.maxSer
			}
			for _, b := range tc.sends {
				if err := r.Send(context.Background(), b); err != nil {
					t.Fatalf("Send: got %v, want nil", err)
				}
			}
			c.Set(tc.now)
			s := r.Snapshot()
			if s.Total != tc.total {
				t.Errorf("Total: got %d, want %d", s.Total, tc.total)
			}
			if len(s.Series) != len(tc.want) {
				t.Fatalf("got %d series, want %d: %+v", len(s.Series), len(tc.want), s.Series)
			}
			for i, w := range tc.want {
				check(t, s.Series[i], w)
			}
			switch {
			case tc.other == nil && s.Other != nil:
				t.Errorf("Other: got %+v, want nil", *s.Other)
			case tc.other != nil && s.Other == nil:
				t.Errorf("Other: got nil, want %+v", *tc.other)
			case tc.other != nil:
				check(t, *s.Other, *tc.other)
			}
		})
	}
}

func check(t *testing.T, got SeriesSnapshot, w want) {
	t.Helper()
	name := w.flow + "/" + w.metric
	if got.Flow != w.flow || got.Metric != w.metric {
		t.Errorf("series: got %q/%q, want %s", got.Flow, got.Metric, name)
	}
	wantCounts := make([]int64, 120)
	for back, n := range w.slots {
		wantCounts[119-back] = n
	}
	if !slices.Equal(got.Counts, wantCounts) {
		t.Errorf("%s counts: got %v, want %v", name, got.Counts, wantCounts)
	}
	if got.Recent != w.recent || got.InWindow != w.inWindow || got.Total != w.total {
		t.Errorf("%s: got recent %d, window %d, total %d; want %d, %d, %d",
			name, got.Recent, got.InWindow, got.Total, w.recent, w.inWindow, w.total)
	}
}

func TestNewRecorderSlots(t *testing.T) {
	for _, tc := range []struct {
		window   time.Duration
		wantWin  time.Duration
		wantSlot time.Duration
		wantN    int
	}{
		{0, time.Hour, 30 * time.Second, 120},
		{-time.Minute, time.Hour, 30 * time.Second, 120},
		{2 * time.Hour, 2 * time.Hour, time.Minute, 120},
		{time.Minute, time.Minute, time.Second, 60},
		{10*time.Minute + 500*time.Millisecond, 10*time.Minute + 500*time.Millisecond, 5 * time.Second, 121},
	} {
		t.Run(tc.window.String(), func(t *testing.T) {
			r := NewRecorder(tc.window, func() time.Time { return t0 })
			s := r.Snapshot()
			if s.Window != tc.wantWin || s.Slot != tc.wantSlot || r.n != tc.wantN {
				t.Errorf("got window %v, slot %v, %d slots; want %v, %v, %d", s.Window, s.Slot, r.n, tc.wantWin, tc.wantSlot, tc.wantN)
			}
			if got, want := s.Start.Add(time.Duration(r.n)*s.Slot), flowmetrics.BucketStart(t0, s.Slot).Add(s.Slot); !got.Equal(want) {
				t.Errorf("slots end at %v, want %v (the end of the slot holding now)", got, want)
			}
			if r.Name() != "dashboard" {
				t.Errorf("Name: got %q, want dashboard", r.Name())
			}
		})
	}
}

// TestRecorderConcurrent sends from many goroutines while snapshots are
// taken and the clock moves; run with -race.
func TestRecorderConcurrent(t *testing.T) {
	c := &clock{t: t0}
	r := NewRecorder(time.Hour, c.Now)
	r.maxSeries = 50
	const workers, sends = 8, 500
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range sends {
				r.Send(context.Background(), []flowmetrics.Point{
					pt(fmt.Sprintf("Flow%d", w), fmt.Sprintf("M%d", i%10), t0.Add(-time.Duration(i)*time.Second), 1),
				})
			}
		})
	}
	wg.Go(func() {
		for i := range 200 {
			c.Set(t0.Add(time.Duration(i) * time.Second))
			r.Snapshot()
		}
	})
	wg.Wait()
	c.Set(t0)
	s := r.Snapshot()
	if s.Total != workers*sends {
		t.Errorf("Total: got %d, want %d", s.Total, workers*sends)
	}
	var sum int64
	for _, ss := range s.Series {
		sum += ss.Total
	}
	if s.Other != nil {
		sum += s.Other.Total
	}
	if sum != s.Total {
		t.Errorf("series totals sum to %d, want %d", sum, s.Total)
	}
	if len(s.Series) != 50 || s.Other == nil {
		t.Errorf("got %d series and other %v, want 50 and an other row (80 pairs sent)", len(s.Series), s.Other != nil)
	}
}
