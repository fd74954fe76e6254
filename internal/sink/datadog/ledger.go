package datadog

import (
	"encoding/binary"
	"hash/fnv"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// Datadog accepts points from one hour in the past to ten minutes in the
// future. Points are kept a Margin inside that window so that the time the
// request takes to arrive (and modest clock skew) cannot push them out.
const (
	MaxAge   = time.Hour
	MaxAhead = 10 * time.Minute
	Margin   = time.Minute
)

// Reasons counted in telemetry PointsAdjusted{sink, reason}.
const (
	ReasonClampedLate   = "clamped_late"
	ReasonDroppedLate   = "dropped_late"
	ReasonClampedFuture = "clamped_future"
	ReasonDroppedFuture = "dropped_future"
	// ReasonRejected: the backend refused the points (HTTP 400, or a
	// single point too large to send); they are dropped.
	ReasonRejected = "rejected"
)

// series is one Datadog time series: a sanitised name and tag set.
type series struct {
	key  string // name and tags joined; identity for summing
	name string
	tags []string
}

// unit is the part of a batch for one series and bucket start: the points
// of the batch that fell there, summed.
type unit struct {
	series   *series
	ts       int64 // bucket start, Unix seconds, before any clamping
	interval int64 // seconds
	count    int64
	points   int // input points folded into this unit
	// dist: the unit is sent as a distribution point (every unit in
	// distribution mode; durations in both modes), never as a total.
	dist bool
	// values are a duration unit's values (seconds), one per point; nil
	// for a count, whose distribution point holds count values of 1.
	values []float64
}

type totalKey struct {
	series string
	ts     int64
}

// Batch is the state of one Send's points while they are being delivered:
// what is still to deliver and what was given up. A sink keeps the Batch of
// a failed Send and resumes it when the pipeline calls Send again with the
// same points, so parts already delivered are not sent twice.
type Batch struct {
	fp        uint64
	units     []*unit
	delivered int // input points delivered
	rejected  int // input points the backend refused
	dropped   int // input points dropped by the late policy
	total     int
}

// Matches reports whether points are the points this Batch was made from.
func (b *Batch) Matches(points []flowmetrics.Point) bool {
	return b != nil && b.fp == fingerprint(points)
}

// Done reports whether nothing is left to deliver.
func (b *Batch) Done() bool { return len(b.units) == 0 }

// Delivered, Rejected and Dropped count input points by outcome so far.
func (b *Batch) Delivered() int { return b.delivered }
func (b *Batch) Rejected() int  { return b.rejected }
func (b *Batch) Dropped() int   { return b.dropped }

// Len returns the number of input points the Batch was made from.
func (b *Batch) Len() int { return b.total }

// Sample is one value to send: the new total of a series at one second.
type Sample struct {
	Name      string
	Tags      []string
	Timestamp int64 // Unix seconds
	Interval  int64 // seconds
	// Value is what Datadog should hold for this series and second once
	// the sample is accepted: the total already delivered plus Delta.
	Value int64
	// Delta is this batch's contribution.
	Delta int64

	// Values, when not nil, are the values of a distribution point
	// (durations, in seconds); Value is then their number.
	Values []float64

	key     totalKey
	units   []*unit
	clamped string // clamp reason, or ""
	dist    bool   // a distribution point: Values, or Value values of 1
}

// Dist reports whether the sample is a distribution point (Values, or
// Value values of 1) rather than a count's running total.
func (s Sample) Dist() bool { return s.dist }

// Ledger turns points into samples for Datadog and, in count mode,
// remembers per series and second still inside the acceptance window the
// total Datadog holds, so that a bucket delivered over several batches adds
// up instead of the last batch overwriting the others.
//
// The totals survive a restart through the state store: Restore loads what
// was committed, TakeState hands over what changed since the last call (see
// state.go), and the pipeline commits that with the sink's cursor. A Ledger
// that is never restored starts empty: a bucket partly delivered before and
// getting more points then is overwritten with the new points' total (an
// undercount, never a double count).
//
// A Ledger is safe for concurrent use, but a sink should deliver one batch at
// a time: two batches touching the same series and second concurrently would
// both start from the same total.
type Ledger struct {
	sink   string
	mode   Mode
	namer  *naming.Namer
	policy LatePolicy
	now    func() time.Time
	m      *telemetry.Metrics
	log    *slog.Logger

	mu sync.Mutex
	// totals maps a series key to its totals by Unix second.
	totals map[string]map[int64]int64
	series map[[2]string]*series
	// paths caches the series of path points, by kind and label values.
	paths     map[string]*series
	lastPrune time.Time
	// dirty holds the state keys whose totals changed (set or pruned)
	// since the last TakeState.
	dirty map[slotKey]struct{}
	// stale holds state keys Restore could not use, deleted by the next
	// TakeState.
	stale map[string]struct{}
	// untimed: the backend stamps points itself (SetUntimed).
	untimed bool
}

// SetUntimed tells a Ledger that the backend stamps distribution points
// with their arrival time (DogStatsD distributions carry no timestamp):
// Plan then applies no late policy to them, since none can be outside the
// window. Counts keep the policy.
func (l *Ledger) SetUntimed() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.untimed = true
}

// NewLedger returns a Ledger of the given mode (Count if empty) for the named
// sink. In distribution mode it keeps no totals (Datadog adds every value
// up): Plan returns each series-second's count of the batch, at most
// MaxValuesPerPoint per Sample.
func NewLedger(name string, mode Mode, policy LatePolicy, now func() time.Time, d sink.Deps) *Ledger {
	if now == nil {
		now = time.Now
	}
	d = d.WithDefaults()
	namer, m, log := d.Namer, d.Metrics, d.Log
	if mode == "" {
		mode = Count
	}
	return &Ledger{
		sink:   name,
		mode:   mode,
		namer:  namer,
		policy: policy.orDefault(),
		now:    now,
		m:      m,
		log:    log,
		totals: make(map[string]map[int64]int64),
		series: make(map[[2]string]*series),
		paths:  make(map[string]*series),
		dirty:  make(map[slotKey]struct{}),
		stale:  make(map[string]struct{}),
	}
}

// MaxValuesPerPoint bounds the values of one distribution point: a
// series-second with more occurrences in one batch becomes several points of
// the same second (Datadog adds them all up), so that no single point can
// outgrow a payload. 100,000 values of 1 are about 200 kB of JSON.
const MaxValuesPerPoint = 100000

// NewBatch sums points of the same series and bucket start.
func (l *Ledger) NewBatch(points []flowmetrics.Point) *Batch {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := &Batch{fp: fingerprint(points), total: len(points)}
	idx := make(map[totalKey]*unit, len(points))
	for _, p := range points {
		s := l.seriesFor(p.Flow, p.Metric)
		ts := p.Bucket.Unix()
		k := totalKey{s.key, ts}
		u := idx[k]
		if u == nil || l.mode == Distribution && u.count >= MaxValuesPerPoint {
			u = &unit{series: s, ts: ts, dist: l.mode == Distribution}
			idx[k] = u
			b.units = append(b.units, u)
		}
		u.count += p.Count
		u.points++
		u.interval = max(u.interval, intervalSeconds(p.Width))
		// A point larger than a distribution point may hold is spread
		// over as many units as it needs; the input point is counted in
		// the first (units report input points to the Batch's counters).
		for l.mode == Distribution && u.count > MaxValuesPerPoint {
			rest := u.count - MaxValuesPerPoint
			u.count = MaxValuesPerPoint
			u = &unit{series: s, ts: ts, interval: u.interval, count: rest, dist: true}
			idx[k] = u
			b.units = append(b.units, u)
		}
	}
	sort.Slice(b.units, func(i, j int) bool {
		a, c := b.units[i], b.units[j]
		if a.series.key != c.series.key {
			return a.series.key < c.series.key
		}
		return a.ts < c.ts
	})
	return b
}

// seriesFor returns the sanitised series of a flow metric, cached.
func (l *Ledger) seriesFor(flow, metric string) *series {
	ck := [2]string{flow, metric}
	if s := l.series[ck]; s != nil {
		return s
	}
	if len(l.series) > 100000 { // the cardinality guard should keep us far below
		clear(l.series)
	}
	s := &series{name: MetricName(l.namer.Name(flow, metric)), tags: Tags(l.namer, flow, metric)}
	s.key = s.name + "\x00" + strings.Join(s.tags, "\x00")
	l.series[ck] = s
	return s
}

func intervalSeconds(w time.Duration) int64 {
	s := int64(math.Ceil(w.Seconds()))
	return max(s, 1)
}

// Plan applies the late policy at the current time (units dropped by it are
// removed from b and counted) and returns the samples for what is left of b:
// one per series and second, valued at the total Datadog should hold, sorted
// by name, tags and time.
func (l *Ledger) Plan(b *Batch) []Sample {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.prune(now)
	lo := now.Add(-MaxAge + Margin).Unix()
	hi := now.Add(MaxAhead - Margin).Unix()

	var samples []Sample
	idx := make(map[totalKey]int, len(b.units))
	kept := b.units[:0]
	for _, u := range b.units {
		ts, reason := u.ts, ""
		switch {
		case l.untimed && u.dist:
		case ts < lo && l.policy == Drop:
			l.adjusted(ReasonDroppedLate, u.points)
			b.dropped += u.points
			continue
		case ts > hi && l.policy == Drop:
			l.adjusted(ReasonDroppedFuture, u.points)
			b.dropped += u.points
			continue
		case ts < lo:
			ts, reason = lo, ReasonClampedLate
		case ts > hi:
			ts, reason = hi, ReasonClampedFuture
		}
		kept = append(kept, u)
		k := totalKey{u.series.key, ts}
		if u.dist {
			// No totals: each unit is a sample of its own, valued at
			// its own count or values (Datadog adds the values up).
			samples = append(samples, Sample{
				Name: u.series.name, Tags: u.series.tags, Timestamp: ts, Interval: u.interval,
				Value: u.count, Delta: u.count, Values: u.values, key: k, units: []*unit{u}, clamped: reason, dist: true,
			})
			continue
		}
		i, ok := idx[k]
		if !ok {
			i = len(samples)
			idx[k] = i
			samples = append(samples, Sample{
				Name: u.series.name, Tags: u.series.tags, Timestamp: ts,
				Interval: u.interval, Value: l.totals[k.series][k.ts], key: k,
			})
		}
		s := &samples[i]
		s.Delta += u.count
		s.Value += u.count
		s.Interval = max(s.Interval, u.interval)
		s.units = append(s.units, u)
		if reason != "" {
			s.clamped = reason
		}
	}
	clear(b.units[len(kept):])
	b.units = kept
	sort.SliceStable(samples, func(i, j int) bool {
		a, c := samples[i].key, samples[j].key
		if a.series != c.series {
			return a.series < c.series
		}
		return a.ts < c.ts
	})
	return samples
}

// Delivered records that the backend accepted samples (planned from b): their
// values become the totals, and their units leave b. For a persistent Ledger
// the new totals are in memory only until Commit.
func (l *Ledger) Delivered(b *Batch, samples []Sample) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range samples {
		if !s.dist {
			l.setTotal(s.key, s.Value)
		}
		n := 0
		for _, u := range s.units {
			n += u.points
			if s.clamped != "" && u.ts != s.Timestamp {
				l.adjusted(s.clamped, u.points)
			}
		}
		b.delivered += n
		b.remove(s.units)
	}
}

// Rejected records that the backend refused samples for good: their units
// leave b and are counted as dropped with ReasonRejected. It returns the
// number of input points concerned.
func (l *Ledger) Rejected(b *Batch, samples []Sample) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range samples {
		for _, u := range s.units {
			n += u.points
		}
		b.remove(s.units)
	}
	b.rejected += n
	l.adjusted(ReasonRejected, n)
	return n
}

func (b *Batch) remove(us []*unit) {
	if len(us) == 0 {
		return
	}
	gone := make(map[*unit]bool, len(us))
	for _, u := range us {
		gone[u] = true
	}
	kept := b.units[:0]
	for _, u := range b.units {
		if !gone[u] {
			kept = append(kept, u)
		}
	}
	clear(b.units[len(kept):])
	b.units = kept
}

func (l *Ledger) adjusted(reason string, n int) {
	if l.m != nil && n > 0 {
		l.m.PointsAdjusted.WithLabelValues(l.sink, reason).Add(float64(n))
	}
}

// PruneAge is how long the Ledger remembers a series-second (in memory and in
// the state store). No point is ever sent to a second older than MaxAge-Margin
// (59 min): an older point is clamped to now-59 min, a second of its own
// inside the window whose total the Ledger does keep, or dropped. So a total
// older than that can never be read again; the extra 11 minutes absorb a
// clock stepped back a little.
const PruneAge = MaxAge + MaxAhead

// prune forgets totals too old for any new point to land on, at most once a
// minute.
func (l *Ledger) prune(now time.Time) { l.pruneAt(now, false) }

func (l *Ledger) pruneAt(now time.Time, force bool) {
	if !force && now.Sub(l.lastPrune) < time.Minute {
		return
	}
	l.lastPrune = now
	cut := now.Add(-PruneAge).Unix()
	for key, byTS := range l.totals {
		for ts := range byTS {
			if ts < cut {
				delete(byTS, ts)
				l.dirty[slotKey{key, slotOf(ts)}] = struct{}{}
			}
		}
		if len(byTS) == 0 {
			delete(l.totals, key)
		}
	}
}

func (l *Ledger) setTotal(k totalKey, v int64) {
	byTS := l.totals[k.series]
	if byTS == nil {
		byTS = make(map[int64]int64)
		l.totals[k.series] = byTS
	}
	byTS[k.ts] = v
	l.dirty[slotKey{k.series, slotOf(k.ts)}] = struct{}{}
}

// Len returns the number of series-seconds remembered.
func (l *Ledger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, byTS := range l.totals {
		n += len(byTS)
	}
	return n
}

// fingerprint identifies a slice of points, order included.
func fingerprint(points []flowmetrics.Point) uint64 {
	h := fnv.New64a()
	var buf [8]byte
	num := func(v int64) {
		binary.LittleEndian.PutUint64(buf[:], uint64(v))
		h.Write(buf[:])
	}
	num(int64(len(points)))
	for _, p := range points {
		num(int64(len(p.Flow)))
		h.Write([]byte(p.Flow))
		num(int64(len(p.Metric)))
		h.Write([]byte(p.Metric))
		num(p.Bucket.UnixNano())
		num(int64(p.Width))
		num(p.Count)
	}
	return h.Sum64()
}
