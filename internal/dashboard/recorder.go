package dashboard

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// SinkName is the name the Recorder gives itself as a sink.
const SinkName = "dashboard"

const (
	// FineStep and FineSpan: the last hour is kept in 10 s buckets.
	FineStep = 10 * time.Second
	FineSpan = time.Hour
	// CoarseStep and CoarseSpan: the last 24 h are kept in 1 min buckets.
	CoarseStep = time.Minute
	CoarseSpan = 24 * time.Hour

	// MaxSeries bounds the flow/metric pairs the Recorder keeps apart; later
	// pairs are counted under flow "overflow", metric "overflow", as the
	// cardinality guard does (it normally folds pairs long before this).
	MaxSeries = 2000

	// Malformed attribute names kept: per flow, in all, and the longest
	// name kept (longer ones are cut). Sightings beyond are counted.
	MaxMalformedPerFlow = 50
	MaxMalformed        = 1000
	maxNameBytes        = 256

	// chunkLen buckets make one chunk, the unit of memory and of sink
	// state: 10 min of fine buckets, 1 h of coarse ones.
	chunkLen = 60
	// minUsualMinutes is the history a usual rate needs.
	minUsualMinutes = 5
)

// overflow is the pair beyond MaxSeries, named as the guard names it.
var overflow = pair{"overflow", "overflow"}

// Recorder is a flowmetrics.StatefulSink that keeps what the pipeline
// delivered in buckets of attribute time: per flow/metric pair, 10 s buckets
// over the last hour and 1 min buckets over the last 24 h, with the pair's
// total and the last time it was seen. It also keeps the distinct malformed
// attribute names per flow (Malformed), and the delivery status of the other
// sinks (Watch, SinkSent). It is what the dashboard shows.
//
// Its memory is bounded: buckets are held in chunks of 60, and chunks older
// than their span are deleted (from memory and, with nil updates, from the
// sink state), as are malformed names not seen for 24 h, and pairs not seen
// for 24 h once half of MaxSeries is taken. Each chunk is one key of its sink state, so after a restart
// Restore rebuilds the same buckets from the durable store.
//
// Times are the attributes' own times, relative to the Recorder's clock: a
// point older than 24 h counts only in the total; a point ahead of the clock
// (a skewed flow clock) counts in the current bucket.
//
// A Recorder is safe for concurrent use. Send never fails: the dashboard
// must not hold back the outbox of the real sinks.
type Recorder struct {
	now       func() time.Time
	maxSeries int
	started   time.Time
	paths     pathStats // conversation paths (paths.go), under their own lock

	// Locks are taken in the order mu, malMu, chMu.
	mu     sync.Mutex
	series map[pair]*series
	byID   map[string]*series
	dirty  map[string]struct{} // state keys of series changed since TakeState
	total  int64
	// pruned* are the chunk indexes below which chunks are gone.
	prunedFine, prunedCoarse int64
	restoreSkipped           int

	// The malformed names have a lock of their own: ingest reports them
	// (Malformed), and must not wait while the pipeline sends, a page
	// reads the series or the state is written.
	malMu    sync.Mutex
	mal      map[string]*malFlow // by flow
	malByKey map[string]*malName // by state key
	malDirty map[string]struct{} // state keys of names changed since TakeState
	malN     int                 // names kept in all
	malLost  int64               // sightings of names not kept, of flows not kept

	chMu    sync.Mutex
	version uint64
	changed chan struct{} // closed on each change

	status sinkStatuses
}

type pair struct{ flow, metric string }

type chunk [chunkLen]int64

type series struct {
	id           string
	flow, metric string
	total        int64
	last         int64 // unix seconds: the newest bucket seen, clamped to now
	fine, coarse map[int64]*chunk
}

type malFlow struct {
	names map[string]*malName
	lost  int64 // sightings of names beyond MaxMalformedPerFlow or MaxMalformed
}

type malName struct {
	key     string // its state key
	Flow    string `json:"flow"`
	Name    string `json:"name"`    // the shape: the time in parentheses as "(…)"
	Example string `json:"example"` // the latest name of that shape, as written
	Reason  string `json:"reason"`
	Count   int64  `json:"count"`
	Last    int64  `json:"last"`
}

// NewRecorder returns an empty Recorder; now is its clock (time.Now if nil).
func NewRecorder(now func() time.Time) *Recorder {
	if now == nil {
		now = time.Now
	}
	r := &Recorder{
		now:       now,
		started:   now().UTC(),
		paths:     pathStats{series: map[pathKey]*pathSeries{}, byID: map[string]*pathSeries{}, dirty: map[string]struct{}{}},
		maxSeries: MaxSeries,
		series:    map[pair]*series{},
		byID:      map[string]*series{},
		dirty:     map[string]struct{}{},
		changed:   make(chan struct{}),
		mal:       map[string]*malFlow{},
		malByKey:  map[string]*malName{},
		malDirty:  map[string]struct{}{},
	}
	r.status.m = map[string]*SinkStatus{}
	return r
}

// Name returns "dashboard".
func (r *Recorder) Name() string { return SinkName }

// Close does nothing; it is safe to call twice.
func (r *Recorder) Close(context.Context) error { return nil }

// Send records the points. It always returns nil.
func (r *Recorder) Send(_ context.Context, points []flowmetrics.Point) error {
	nowS := r.now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range points {
		if p.Count <= 0 {
			continue
		}
		s := r.seriesFor(pair{p.Flow, p.Metric})
		t := min(p.Bucket.Unix(), nowS)
		r.total += p.Count
		s.total += p.Count
		s.last = max(s.last, t)
		r.dirty[nameKey(s.id)] = struct{}{}
		if t > nowS-int64(FineSpan/time.Second) {
			r.add(s, s.fine, "f", floorDiv(t, int64(FineStep/time.Second)), p.Count)
		}
		if t > nowS-int64(CoarseSpan/time.Second) {
			r.add(s, s.coarse, "c", floorDiv(t, int64(CoarseStep/time.Second)), p.Count)
		}
	}
	r.prune(nowS)
	r.bump()
	return nil
}

// add adds n to bucket b of one tier of s.
func (r *Recorder) add(s *series, tier map[int64]*chunk, kind string, b, n int64) {
	ci := floorDiv(b, chunkLen)
	c := tier[ci]
	if c == nil {
		c = new(chunk)
		tier[ci] = c
	}
	c[b-ci*chunkLen] += n
	r.dirty[chunkKey(kind, s.id, ci)] = struct{}{}
}

// seriesFor returns the series of k, making it (or using the overflow
// series when the Recorder is full). r.mu is held.
func (r *Recorder) seriesFor(k pair) *series {
	if s, ok := r.series[k]; ok {
		return s
	}
	if len(r.series) >= r.maxSeries {
		if s, ok := r.series[overflow]; ok {
			return s
		}
		k = overflow
	}
	return r.newSeries(k)
}

func (r *Recorder) newSeries(k pair) *series {
	s := &series{id: seriesID(k.flow, k.metric), flow: k.flow, metric: k.metric, fine: map[int64]*chunk{}, coarse: map[int64]*chunk{}}
	r.series[k] = s
	r.byID[s.id] = s
	return s
}

// prune deletes the chunks, series and malformed names that fell out of
// their span, once per fine chunk of time. r.mu is held.
func (r *Recorder) prune(nowS int64) {
	fineBelow := floorDiv(floorDiv(nowS-int64(FineSpan/time.Second), int64(FineStep/time.Second)), chunkLen)
	coarseBelow := floorDiv(floorDiv(nowS-int64(CoarseSpan/time.Second), int64(CoarseStep/time.Second)), chunkLen)
	if fineBelow <= r.prunedFine && coarseBelow <= r.prunedCoarse {
		return
	}
	r.prunedFine, r.prunedCoarse = max(fineBelow, r.prunedFine), max(coarseBelow, r.prunedCoarse)
	dead := nowS - int64(CoarseSpan/time.Second)
	// Pairs not seen for 24 h make room for new ones once half the pairs
	// are taken; until then they stay listed with their totals.
	crowded := len(r.series) >= r.maxSeries/2
	for k, s := range r.series {
		for ci := range s.fine {
			if ci < fineBelow {
				delete(s.fine, ci)
				r.dirty[chunkKey("f", s.id, ci)] = struct{}{}
			}
		}
		for ci := range s.coarse {
			if ci < coarseBelow {
				delete(s.coarse, ci)
				r.dirty[chunkKey("c", s.id, ci)] = struct{}{}
			}
		}
		if crowded && s.last < dead && len(s.fine) == 0 && len(s.coarse) == 0 {
			delete(r.series, k)
			delete(r.byID, s.id)
			r.dirty[nameKey(s.id)] = struct{}{}
		}
	}
	r.malMu.Lock()
	defer r.malMu.Unlock()
	for flow, f := range r.mal {
		for name, m := range f.names {
			if m.Last < dead {
				delete(f.names, name)
				delete(r.malByKey, m.key)
				r.malN--
				r.malDirty[m.key] = struct{}{}
			}
		}
		if len(f.names) == 0 {
			delete(r.mal, flow)
		}
	}
}

// bump tells the waiters of Changed that something changed.
func (r *Recorder) bump() {
	r.chMu.Lock()
	defer r.chMu.Unlock()
	r.version++
	close(r.changed)
	r.changed = make(chan struct{})
}

// Changed returns a channel closed at the next change, and the version it
// waits to leave.
func (r *Recorder) Changed() (<-chan struct{}, uint64) {
	r.chMu.Lock()
	defer r.chMu.Unlock()
	return r.changed, r.version
}

// Malformed records a malformed metric-shaped attribute name seen now in a
// flow's event (flow may be empty: the name had nothing before "Metric_").
// Names are told apart by their shape, the name with the text in its last
// parentheses replaced by "…": the time in a name changes with every
// conversation, the typo does not. It keeps distinct shapes: up to
// MaxMalformedPerFlow per flow and MaxMalformed in all; sightings of shapes
// beyond are counted, not kept.
func (r *Recorder) Malformed(flow, name, reason string) {
	flow, example := cut(flow), cut(name)
	name = cut(Shape(name))
	nowS := r.now().Unix()
	defer r.bump()
	r.malMu.Lock()
	defer r.malMu.Unlock()
	f := r.mal[flow]
	if f == nil {
		if r.malN >= MaxMalformed {
			r.malLost++
			return
		}
		f = &malFlow{names: map[string]*malName{}}
		r.mal[flow] = f
	}
	m := f.names[name]
	if m == nil {
		if len(f.names) >= MaxMalformedPerFlow || r.malN >= MaxMalformed {
			f.lost++
			return
		}
		m = &malName{key: malKey(flow, name), Flow: flow, Name: name}
		f.names[name] = m
		r.malByKey[m.key] = m
		r.malN++
	}
	m.Example = example
	m.Reason = cut(reason)
	m.Count++
	m.Last = max(m.Last, nowS)
	r.malDirty[m.key] = struct{}{}
}

// Shape returns name with the text after the last "(" (the attribute's
// time, and the closing parenthesis) replaced by "(…)"; a name without "("
// is its own shape.
func Shape(name string) string {
	i := strings.LastIndexByte(name, '(')
	if i < 0 {
		return name
	}
	return name[:i] + "(…)"
}

func cut(s string) string {
	if len(s) <= maxNameBytes {
		return s
	}
	s = s[:maxNameBytes]
	for len(s) > 0 && !utf8Start(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	if len(s) > 0 {
		s = s[:len(s)-1] // the start of the cut character
	}
	return s + "…"
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// Sink state. Keys (every one ≤ 60 bytes, values ≤ 2 KiB):
//
//	n/<id>            a pair: {"flow","metric","total","last"}
//	f/<id>/<chunk>    60 fine (10 s) bucket counts, unsigned varints
//	c/<id>/<chunk>    60 coarse (1 min) bucket counts, unsigned varints
//	x/<id>            a malformed name: {"flow","name","reason","count","last"}
//
// <id> is the first 16 hex digits of the SHA-256 of the names, so keys stay
// short whatever the names; <chunk> is the chunk index in decimal.

type pairState struct {
	Flow   string `json:"flow"`
	Metric string `json:"metric"`
	Total  int64  `json:"total"`
	Last   int64  `json:"last"`
}

func seriesID(flow, metric string) string { return hashID(flow, metric) }

func hashID(a, b string) string {
	h := sha256.Sum256([]byte(a + "\x00" + b))
	return hex.EncodeToString(h[:8])
}

func nameKey(id string) string { return "n/" + id }
func chunkKey(kind, id string, ci int64) string {
	return kind + "/" + id + "/" + strconv.FormatInt(ci, 10)
}
func malKey(flow, name string) string { return "x/" + hashID(flow, name) }

// TakeState returns the state keys changed since the last call: chunks,
// pairs and malformed names set to their current value, or nil when they
// were deleted.
//
// It copies the changed values under the locks, a constant time each, and
// encodes them after, so the time a lock is held grows with the number of
// changed keys only, and encoding never holds up Send, Read or Malformed.
func (r *Recorder) TakeState() flowmetrics.StateUpdate {
	r.mu.Lock()
	vals := make([]stateValue, 0, len(r.dirty))
	for k := range r.dirty {
		vals = append(vals, r.value(k))
	}
	clear(r.dirty)
	r.mu.Unlock()

	r.malMu.Lock()
	for k := range r.malDirty {
		v := stateValue{key: k}
		if m := r.malByKey[k]; m != nil {
			c := *m
			v.mal = &c
		}
		vals = append(vals, v)
	}
	clear(r.malDirty)
	r.malMu.Unlock()

	u := make(flowmetrics.StateUpdate, len(vals))
	for _, v := range vals {
		u[v.key] = v.encode()
	}
	r.paths.takeState(u)
	if len(u) == 0 {
		return nil
	}
	return u
}

// stateValue is a copy of one state key's value, at most one of its
// pointers set; none when the key is deleted.
type stateValue struct {
	key   string
	pair  *pairState
	chunk *chunk
	mal   *malName
}

func (v stateValue) encode() []byte {
	switch {
	case v.pair != nil:
		b, _ := json.Marshal(v.pair)
		return b
	case v.chunk != nil:
		b := make([]byte, 0, chunkLen*2)
		for _, n := range v.chunk {
			b = binary.AppendUvarint(b, uint64(n))
		}
		return b
	case v.mal != nil:
		b, _ := json.Marshal(v.mal)
		return b
	}
	return nil
}

// value copies the current value of series state key k (nothing when it
// is gone). r.mu is held.
func (r *Recorder) value(k string) stateValue {
	v := stateValue{key: k}
	kind, rest, _ := strings.Cut(k, "/")
	switch kind {
	case "n":
		if s := r.byID[rest]; s != nil {
			v.pair = &pairState{s.flow, s.metric, s.total, s.last}
		}
	case "f", "c":
		id, cs, _ := strings.Cut(rest, "/")
		s := r.byID[id]
		ci, err := strconv.ParseInt(cs, 10, 64)
		if s == nil || err != nil {
			break
		}
		tier := s.fine
		if kind == "c" {
			tier = s.coarse
		}
		if c := tier[ci]; c != nil {
			cc := *c
			v.chunk = &cc
		}
	}
	return v
}

// Restore rebuilds the Recorder from its committed sink state. Keys it
// cannot read, and chunks already out of their span, are skipped and
// deleted with the next TakeState; it never fails.
func (r *Recorder) Restore(_ context.Context, state map[string][]byte) error {
	nowS := r.now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.malMu.Lock()
	skip := func(k string) {
		r.restoreSkipped++
		if strings.HasPrefix(k, "x/") {
			r.malDirty[k] = struct{}{} // not in malByKey: deleted
		} else {
			r.dirty[k] = struct{}{} // value() has nothing for it: deleted
		}
	}
	// Pairs first, so chunks find their series.
	for k, v := range state {
		if isPathKey(k) {
			continue
		}
		kind, id, _ := strings.Cut(k, "/")
		switch kind {
		case "n":
			var ps pairState
			if err := json.Unmarshal(v, &ps); err != nil || seriesID(ps.Flow, ps.Metric) != id {
				skip(k)
				continue
			}
			s := r.series[pair{ps.Flow, ps.Metric}]
			if s == nil {
				s = r.newSeries(pair{ps.Flow, ps.Metric})
			}
			s.total, s.last = ps.Total, ps.Last
			r.total += ps.Total
		case "x":
			var m malName
			if err := json.Unmarshal(v, &m); err != nil || malKey(m.Flow, m.Name) != k {
				skip(k)
				continue
			}
			f := r.mal[m.Flow]
			if f == nil {
				f = &malFlow{names: map[string]*malName{}}
				r.mal[m.Flow] = f
			}
			if f.names[m.Name] == nil {
				if len(f.names) >= MaxMalformedPerFlow || r.malN >= MaxMalformed {
					skip(k)
					continue
				}
				r.malN++
			}
			m.key = k
			f.names[m.Name] = &m
			r.malByKey[k] = &m
		case "f", "c":
		default:
			skip(k)
		}
	}
	r.malMu.Unlock()
	for k, v := range state {
		kind, rest, _ := strings.Cut(k, "/")
		if kind != "f" && kind != "c" || isPathKey(k) {
			continue
		}
		id, cs, _ := strings.Cut(rest, "/")
		s := r.byID[id]
		ci, err := strconv.ParseInt(cs, 10, 64)
		c, cerr := decodeChunk(v)
		if s == nil || err != nil || cerr != nil {
			skip(k)
			continue
		}
		if kind == "f" {
			s.fine[ci] = c
		} else {
			s.coarse[ci] = c
		}
	}
	r.restoreSkipped += r.paths.restore(state)
	// Forget what fell out of the spans while the process was down.
	r.prunedFine, r.prunedCoarse = -1<<62, -1<<62
	r.prune(nowS)
	r.bump()
	return nil
}

func decodeChunk(b []byte) (*chunk, error) {
	var c chunk
	for i := range c {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > 1<<62 {
			return nil, fmt.Errorf("chunk: bad count %d", i)
		}
		c[i], b = int64(n), b[w:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("chunk: %d trailing bytes", len(b))
	}
	return &c, nil
}

// Range is one of the time ranges the dashboard offers, with its step.
type Range struct {
	Name string
	Span time.Duration
	Step time.Duration
	fine bool // read from the fine tier
}

// Ranges are the ranges GET /api/v1/series takes, shortest first.
var Ranges = []Range{
	{"15m", 15 * time.Minute, 10 * time.Second, true},
	{"1h", time.Hour, 30 * time.Second, true},
	{"6h", 6 * time.Hour, 5 * time.Minute, false},
	{"24h", 24 * time.Hour, 15 * time.Minute, false},
}

// RangeByName returns the Range called name.
func RangeByName(name string) (Range, bool) {
	for _, rg := range Ranges {
		if rg.Name == name {
			return rg, true
		}
	}
	return Range{}, false
}

// Series is what a Recorder holds over one range, read at its clock's now.
type Series struct {
	Now   time.Time
	Range Range
	// Start is the start of the first bucket; the last one holds Now.
	Start time.Time
	// Pairs are sorted by flow, then metric.
	Pairs []PairSeries
	Total int64
}

// PairSeries is one flow metric over a range.
type PairSeries struct {
	Flow, Metric string
	// Counts has one count per bucket of Range.Step, oldest first.
	Counts  []int64
	InRange int64
	// RateNow is occurrences per minute over the last NowSpan of 10 s
	// buckets, the current one up to now: NowCount occurrences in
	// NowMinutes (50 to 60 s). RateUsual is occurrences per minute over the
	// UsualSpan of whole minutes before, from the first minute the pair was
	// seen in the last 24 h; -1 when the pair has less than 5 minutes of
	// history before the now window.
	RateNow, RateUsual float64
	NowCount           int64
	NowMinutes         float64
	Total              int64
	Last               time.Time
}

// Read returns what the Recorder holds over rg.
func (r *Recorder) Read(rg Range) Series {
	now := r.now()
	nowS := now.Unix()
	step := int64(rg.Step / time.Second)
	n := int64(rg.Span / rg.Step)
	last := floorDiv(nowS, step)
	first := last - n + 1
	out := Series{Now: now.UTC(), Range: rg, Start: time.Unix(first*step, 0).UTC()}

	fineS, coarseS := int64(FineStep/time.Second), int64(CoarseStep/time.Second)
	// Now: the fine buckets of the last NowSpan, the current unfinished
	// one included (its count over the time it has had), so a rise shows
	// without waiting for a bucket to end. Usual: the coarse minutes of
	// the UsualSpan before, each ending before the now window starts.
	nowFrom := floorDiv(nowS, fineS)*fineS + fineS - int64(NowSpan/time.Second)
	nowMinutes := now.Sub(time.Unix(nowFrom, 0)).Minutes()
	usualTo := floorDiv(nowFrom, coarseS) * coarseS
	usualFrom := usualTo - int64(UsualSpan/time.Second)
	dayFrom := nowS - int64(CoarseSpan/time.Second)

	r.mu.Lock()
	defer r.mu.Unlock()
	out.Total = r.total
	out.Pairs = make([]PairSeries, 0, len(r.series))
	for _, s := range r.series {
		ps := PairSeries{Flow: s.flow, Metric: s.metric, Counts: make([]int64, n), Total: s.total, RateUsual: -1}
		if s.last != 0 {
			ps.Last = time.Unix(s.last, 0).UTC()
		}
		tier, w := s.coarse, coarseS
		if rg.fine {
			tier, w = s.fine, fineS
		}
		firstChunk := floorDiv(first*step/w, chunkLen)
		for ci, c := range tier {
			if ci < firstChunk {
				continue
			}
			for j, v := range c {
				if v == 0 {
					continue
				}
				i := floorDiv((ci*chunkLen+int64(j))*w, step) - first
				if i >= 0 && i < n {
					ps.Counts[i] += v
					ps.InRange += v
				}
			}
		}
		nowChunk := floorDiv(floorDiv(nowFrom, fineS), chunkLen)
		for ci, c := range s.fine {
			if ci < nowChunk {
				continue
			}
			for j, v := range c {
				if t := (ci*chunkLen + int64(j)) * fineS; v != 0 && t >= nowFrom {
					ps.NowCount += v
				}
			}
		}
		ps.NowMinutes = nowMinutes
		ps.RateNow = float64(ps.NowCount) / nowMinutes
		// The usual rate counts from the pair's first minute in the last
		// 24 h, so a pair new within the hour is not taken as quiet before.
		var usual int64
		since := usualTo
		for ci, c := range s.coarse {
			for j, v := range c {
				t := (ci*chunkLen + int64(j)) * coarseS
				if v == 0 || t < dayFrom || t >= usualTo {
					continue
				}
				since = min(since, t)
				if t >= usualFrom {
					usual += v
				}
			}
		}
		if mins := (usualTo - max(since, usualFrom)) / coarseS; mins >= minUsualMinutes {
			ps.RateUsual = float64(usual) / float64(mins)
		}
		out.Pairs = append(out.Pairs, ps)
	}
	slices.SortFunc(out.Pairs, func(a, b PairSeries) int {
		return cmp.Or(cmp.Compare(a.Flow, b.Flow), cmp.Compare(a.Metric, b.Metric))
	})
	return out
}

// MalformedName is one distinct malformed attribute name of a flow: its
// shape (see Shape), the latest name of that shape and why it was refused.
type MalformedName struct {
	Name    string    `json:"name"`
	Example string    `json:"example"`
	Reason  string    `json:"reason"`
	Count   int64     `json:"count"`
	Last    time.Time `json:"last_seen"`
}

// MalformedFlow lists a flow's distinct malformed names, newest first.
type MalformedFlow struct {
	Flow  string          `json:"flow"`
	Names []MalformedName `json:"names"`
	// NotKept counts sightings of names beyond the caps.
	NotKept int64 `json:"not_kept"`
}

// MalformedNames returns the malformed names per flow, sorted by flow, and
// the sightings of flows beyond the caps.
func (r *Recorder) MalformedNames() ([]MalformedFlow, int64) {
	r.malMu.Lock()
	defer r.malMu.Unlock()
	out := make([]MalformedFlow, 0, len(r.mal))
	for flow, f := range r.mal {
		mf := MalformedFlow{Flow: flow, Names: make([]MalformedName, 0, len(f.names)), NotKept: f.lost}
		for _, m := range f.names {
			mf.Names = append(mf.Names, MalformedName{Name: m.Name, Example: m.Example, Reason: m.Reason, Count: m.Count, Last: time.Unix(m.Last, 0).UTC()})
		}
		slices.SortFunc(mf.Names, func(a, b MalformedName) int {
			return cmp.Or(b.Last.Compare(a.Last), cmp.Compare(a.Name, b.Name))
		})
		out = append(out, mf)
	}
	slices.SortFunc(out, func(a, b MalformedFlow) int { return cmp.Compare(a.Flow, b.Flow) })
	return out, r.malLost
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
