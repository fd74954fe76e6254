package datadog

import (
	"encoding/binary"
	"hash/fnv"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
)

// The metrics of conversation paths, in Datadog, DogStatsD and StatsD
// (dashboards and monitors are built on these names). Counters count
// conversations; durations are distributions of seconds.
const (
	ExitMetric       = naming.PathExit       // count {flow, metric}
	StepMetric       = naming.PathStep       // distribution, seconds {flow, metric}
	TimingMetric     = naming.PathTiming     // distribution, seconds {timing}
	FunnelMetric     = naming.PathFunnel     // count {funnel, step}
	ExperimentMetric = naming.PathExperiment // count {experiment, variant, step}
)

// PathBucket is the width of the buckets path counts are summed in (and
// path distributions stamped at): a count is one value per series and
// second in Datadog, so a bucket keeps the running totals of a busy exit
// to one second in ten, like the occurrences' default bucket.
const PathBucket = 10 * time.Second

// PathTag is one tag of a path point: its key and unsanitised value.
type PathTag struct{ Key, Value string }

// PathSeries returns the metric name and the tags (before sanitising, the
// static tags not included) of a path point.
func PathSeries(p flowmetrics.PathPoint) (string, []PathTag) {
	switch p.Kind {
	case flowmetrics.PathExit:
		return ExitMetric, []PathTag{{"flow", p.Flow}, {"metric", p.Metric}}
	case flowmetrics.PathStep:
		return StepMetric, []PathTag{{"flow", p.Flow}, {"metric", p.Metric}}
	case flowmetrics.PathTiming:
		return TimingMetric, []PathTag{{"timing", p.Name}}
	case flowmetrics.PathFunnel:
		return FunnelMetric, []PathTag{{"funnel", p.Name}, {"step", p.Step}}
	case flowmetrics.PathExperiment:
		return ExperimentMetric, []PathTag{{"experiment", p.Name}, {"variant", p.Variant}, {"step", p.Step}}
	}
	return "", nil
}

// ValidSeconds reports whether a duration can be sent: finite and not
// negative (a derived duration always is; this guards the encoders).
func ValidSeconds(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) && v >= 0 }

// pathSeriesFor returns the sanitised series of a path point, cached; nil
// for a kind it does not know.
func (l *Ledger) pathSeriesFor(p flowmetrics.PathPoint) *series {
	name, tags := PathSeries(p)
	if name == "" {
		return nil
	}
	var ck strings.Builder
	ck.WriteString(name)
	for _, t := range tags {
		ck.WriteByte(0)
		ck.WriteString(t.Value)
	}
	if s := l.paths[ck.String()]; s != nil {
		return s
	}
	if len(l.paths) > 100000 { // the cardinality guard should keep us far below
		clear(l.paths)
	}
	s := &series{name: name}
	for _, t := range tags {
		if v := Tag(t.Key, t.Value); v != "" {
			s.tags = append(s.tags, v)
		}
	}
	for _, t := range l.namer.Static() {
		if v := Tag(t.Key, t.Value); v != "" {
			s.tags = append(s.tags, v)
		}
	}
	s.key = s.name + "\x00" + strings.Join(s.tags, "\x00")
	l.paths[ck.String()] = s
	return s
}

// NewPathBatch makes a Batch of path points: counts (exits, funnels,
// experiments) summed per series and PathBucket, as occurrences are (in
// count mode, running totals; in distribution mode, one value of 1 per
// conversation), and durations (steps, timings) as distribution points in
// both modes, one value per conversation, so that Datadog computes their
// percentiles from every value. A point of an unknown kind or with a
// duration that is not a finite, non-negative number is counted (as
// rejected), logged and left out; the others go on.
func (l *Ledger) NewPathBatch(points []flowmetrics.PathPoint) *Batch {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := &Batch{fp: fingerprintPaths(points), total: len(points)}
	idx := make(map[totalKey]*unit, len(points))
	interval := intervalSeconds(PathBucket)
	bad := 0
	for _, p := range points {
		s := l.pathSeriesFor(p)
		if s == nil || p.Kind.IsDuration() && !ValidSeconds(p.Seconds) {
			bad++
			continue
		}
		ts := flowmetrics.BucketStart(p.Time, PathBucket).Unix()
		k := totalKey{s.key, ts}
		dist := l.mode == Distribution || p.Kind.IsDuration()
		u := idx[k]
		if u == nil || dist && u.count >= MaxValuesPerPoint {
			u = &unit{series: s, ts: ts, interval: interval, dist: dist}
			idx[k] = u
			b.units = append(b.units, u)
		}
		u.count++
		u.points++
		if p.Kind.IsDuration() {
			u.values = append(u.values, p.Seconds)
		}
	}
	if bad > 0 {
		b.dropped += bad
		l.adjusted(ReasonRejected, bad)
		l.log.Warn("path points of an unknown kind or with an invalid duration were dropped", "points", bad)
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

// MatchesPaths reports whether points are the path points this Batch was
// made from.
func (b *Batch) MatchesPaths(points []flowmetrics.PathPoint) bool {
	return b != nil && b.fp == fingerprintPaths(points)
}

// fingerprintPaths identifies a slice of path points, order included; it
// never equals the fingerprint of a slice of points with the same length
// (a leading marker).
func fingerprintPaths(points []flowmetrics.PathPoint) uint64 {
	h := fnv.New64a()
	var buf [8]byte
	num := func(v uint64) {
		binary.LittleEndian.PutUint64(buf[:], v)
		h.Write(buf[:])
	}
	str := func(s string) {
		num(uint64(len(s)))
		h.Write([]byte(s))
	}
	h.Write([]byte("paths"))
	num(uint64(len(points)))
	for _, p := range points {
		num(uint64(p.Kind))
		str(p.Flow)
		str(p.Metric)
		str(p.Name)
		str(p.Variant)
		str(p.Step)
		num(math.Float64bits(p.Seconds))
		num(uint64(p.Time.UnixNano()))
		str(p.Conversation)
	}
	return h.Sum64()
}
