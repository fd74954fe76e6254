package dashboard

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// SinkName is the name the Recorder gives itself as a sink.
const SinkName = "dashboard"

const (
	// DefaultWindow is the span of attribute time the Recorder keeps in
	// slots when NewRecorder is given a window ≤ 0.
	DefaultWindow = time.Hour
	// MaxSeries bounds the flow/metric pairs the Recorder keeps apart. The
	// pipeline's cardinality guard (1000 pairs by default) normally folds
	// pairs long before this; the bound only keeps a misconfigured guard
	// from growing the Recorder without limit.
	MaxSeries = 2000
	// slotsPerWindow is how many slots a window is cut into: one sparkline
	// point each. 120 keeps memory at ~4 KB per series (2000 series: ~8 MB)
	// and gives 30 s slots for the default hour.
	slotsPerWindow = 120
	// recentSpan is what "last 5 min" means, rounded up to whole slots.
	recentSpan = 5 * time.Minute
)

// Recorder is a flowmetrics.Sink that remembers, in memory, what the pipeline
// delivered: per flow/metric pair, the counts of the recent slots of
// attribute time and the total since the Recorder was made. It is what the
// dashboard shows.
//
// Time is the attribute's time (the points' Bucket), placed relative to the
// Recorder's clock: points older than the window count only in the totals;
// points ahead of the clock (a skewed flow clock) count in the current slot,
// so they are seen rather than waiting in the future. Slots that fall out of
// the window are reused, so memory per series is fixed.
//
// The first MaxSeries pairs are kept apart; points of later pairs are
// summed in one "other" row. Pairs stay for the life of the process.
//
// A Recorder is safe for concurrent use. Send never fails: the dashboard
// must not hold back the outbox of the real sinks.
type Recorder struct {
	now       func() time.Time
	window    time.Duration
	slot      time.Duration
	n         int // slots in the window
	maxSeries int

	mu     sync.Mutex
	series map[pair]*series
	other  *series // nil until a pair beyond maxSeries is seen
	total  int64
}

type pair struct{ flow, metric string }

// series is a ring of slots: cell i holds the count of absolute slot
// abs[i], where i == abs[i] mod n. A cell holding an older slot is stale
// and reads as zero, which is how slots out of the window are pruned.
type series struct {
	abs   []int64
	count []int64
	total int64
}

// NewRecorder returns a Recorder keeping window (DefaultWindow if ≤ 0) of
// attribute time before now(), in 120 slots of at least one second each.
// now is the clock (time.Now if nil).
func NewRecorder(window time.Duration, now func() time.Time) *Recorder {
	if window <= 0 {
		window = DefaultWindow
	}
	if now == nil {
		now = time.Now
	}
	slot := max((window / slotsPerWindow).Truncate(time.Second), time.Second)
	n := int((window + slot - 1) / slot)
	return &Recorder{
		now:       now,
		window:    window,
		slot:      slot,
		n:         n,
		maxSeries: MaxSeries,
		series:    make(map[pair]*series),
	}
}

// Name returns "dashboard".
func (r *Recorder) Name() string { return SinkName }

// Send records the points. It always returns nil.
func (r *Recorder) Send(_ context.Context, points []flowmetrics.Point) error {
	cur := r.slotOf(r.now())
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range points {
		if p.Count <= 0 {
			continue
		}
		s := r.seriesFor(pair{p.Flow, p.Metric})
		r.total += p.Count
		s.total += p.Count
		abs := min(r.slotOf(p.Bucket), cur)
		if abs <= cur-int64(r.n) {
			continue // older than the window: totals only
		}
		i := mod(abs, int64(r.n))
		if s.abs[i] != abs {
			s.abs[i], s.count[i] = abs, 0
		}
		s.count[i] += p.Count
	}
	return nil
}

// Close does nothing; it is safe to call twice.
func (r *Recorder) Close(context.Context) error { return nil }

// seriesFor returns the series of k, or the "other" series when k is new and
// the Recorder is full. r.mu is held.
func (r *Recorder) seriesFor(k pair) *series {
	if s, ok := r.series[k]; ok {
		return s
	}
	if len(r.series) >= r.maxSeries {
		if r.other == nil {
			r.other = r.newSeries()
		}
		return r.other
	}
	s := r.newSeries()
	r.series[k] = s
	return s
}

func (r *Recorder) newSeries() *series {
	s := &series{abs: make([]int64, r.n), count: make([]int64, r.n)}
	for i := range s.abs {
		s.abs[i] = -1 << 63 // no slot yet
	}
	return s
}

// Snapshot is what a Recorder holds at one moment.
type Snapshot struct {
	Now    time.Time
	Window time.Duration
	// Slot is the width of one slot; Start is the start of the oldest slot
	// in the window, and the newest slot holds Now.
	Slot  time.Duration
	Start time.Time
	// Series are sorted by flow, then metric.
	Series []SeriesSnapshot
	// Other sums the pairs beyond MaxSeries; nil when there were none.
	Other *SeriesSnapshot
	// Total is every occurrence recorded since the Recorder was made.
	Total int64
}

// SeriesSnapshot is one flow/metric pair (Flow and Metric empty for Other).
type SeriesSnapshot struct {
	Flow, Metric string
	// Counts holds one count per slot, oldest first.
	Counts []int64
	// Recent sums the slots of the last 5 minutes (rounded up to whole
	// slots, and at most the window); InWindow sums every slot.
	Recent, InWindow int64
	Total            int64
}

// Snapshot copies what the Recorder holds, read at its clock's now.
func (r *Recorder) Snapshot() Snapshot {
	now := r.now()
	cur := r.slotOf(now)
	first := cur - int64(r.n) + 1
	snap := Snapshot{
		Now:    now.UTC(),
		Window: r.window,
		Slot:   r.slot,
		Start:  time.Unix(first*int64(r.slot/time.Second), 0).UTC(),
	}
	recent := min(int64((recentSpan+r.slot-1)/r.slot), int64(r.n))

	r.mu.Lock()
	defer r.mu.Unlock()
	read := func(s *series) SeriesSnapshot {
		out := SeriesSnapshot{Counts: make([]int64, r.n), Total: s.total}
		for abs := first; abs <= cur; abs++ {
			i := mod(abs, int64(r.n))
			if s.abs[i] != abs {
				continue
			}
			c := s.count[i]
			out.Counts[abs-first] = c
			out.InWindow += c
			if abs > cur-recent {
				out.Recent += c
			}
		}
		return out
	}
	snap.Series = make([]SeriesSnapshot, 0, len(r.series))
	for k, s := range r.series {
		ss := read(s)
		ss.Flow, ss.Metric = k.flow, k.metric
		snap.Series = append(snap.Series, ss)
	}
	slices.SortFunc(snap.Series, func(a, b SeriesSnapshot) int {
		return cmp.Or(cmp.Compare(a.Flow, b.Flow), cmp.Compare(a.Metric, b.Metric))
	})
	if r.other != nil {
		o := read(r.other)
		snap.Other = &o
	}
	snap.Total = r.total
	return snap
}

// slotOf returns the absolute, epoch-aligned slot index holding t.
func (r *Recorder) slotOf(t time.Time) int64 {
	// Seconds, not nanoseconds: a flow's clock may be centuries off, and
	// UnixNano overflows outside 1678–2262.
	return floorDiv(t.Unix(), int64(r.slot/time.Second))
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}
