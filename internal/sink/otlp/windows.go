package otlp

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"time"
)

// A stream is one OpenTelemetry metric stream (metric name and attributes
// flow, metric; the static tags and the resource are the same for every
// stream). Its windows are sent once each, in order, never overlapping. A
// window goes through two steps: it is closed (frozen: its point's start,
// end and value fixed, Sent moved to its end, so later counts go after it)
// and committed with the cursor, and only then sent. So a window sent but
// not yet recorded as sent when the process dies is sent again exactly as
// it was: the same start, end and value, which receivers that follow the
// data model drop as a repeat. The stream is the unit of the sink's
// durable state: one key per stream.
type stream struct {
	Name   string `json:"n"`
	Flow   string `json:"f"`
	Metric string `json:"m"`
	// Kind is the path kind of a stream of path points, empty for the
	// counts'; Attrs are its attributes, key and value pairs in order
	// (Flow and Metric are then empty).
	Kind  string   `json:"k,omitempty"`
	Attrs []string `json:"a,omitempty"`
	// Sent is the end (unix ns) of the last window closed; 0 before the
	// first. Every open window starts at or after it.
	Sent int64 `json:"e,omitempty"`
	// Begin is the cumulative stream's start time (unix ns): the start of
	// its first window. Total is the sum of every window closed since.
	Begin int64 `json:"b,omitempty"`
	Total int64 `json:"t,omitempty"`
	// Closed are the windows closed but not yet delivered, in order:
	// [point start, end, value, count].
	Closed []frozen `json:"c,omitempty"`
	// Open are the windows still counting, [start, end, count] in unix ns,
	// sorted and not overlapping.
	Open []window `json:"w,omitempty"`

	// A histogram stream (durations) holds these instead: its bucket
	// bounds, its open and closed windows (a closed one is its data
	// point: start, end and values fixed), and with cumulative
	// temporality the sum of every window closed since Begin.
	Bounds  []float64 `json:"bd,omitempty"`
	HOpen   []hist    `json:"ho,omitempty"`
	HClosed []hist    `json:"hc,omitempty"`
	HTotal  *hist     `json:"ht,omitempty"`
}

// hist is one window of a histogram stream: observations in seconds,
// kept as integer nanoseconds so that adding windows is exact.
type hist struct {
	S   int64   `json:"s"`  // start (unix ns)
	E   int64   `json:"e"`  // end
	N   int64   `json:"n"`  // observations
	Sum int64   `json:"u"`  // their sum, ns
	Min int64   `json:"lo"` // ns
	Max int64   `json:"hi"` // ns
	B   []int64 `json:"b"`  // counts per bucket: len(bounds)+1
	// Bd are the window's bounds when they are not its stream's (counted
	// before duration_buckets changed).
	Bd []float64 `json:"bd,omitempty"`
	// W: a closed cumulative point's own window's observations (N is
	// the stream's total).
	W int64 `json:"w,omitempty"`
}

// own is the observations of the window itself.
func (h *hist) own() int64 {
	if h.W > 0 {
		return h.W
	}
	return h.N
}

func (h *hist) bounds(st *stream) []float64 {
	if h.Bd != nil {
		return h.Bd
	}
	return st.Bounds
}

// observe adds one value of ns nanoseconds.
func (h *hist) observe(bounds []float64, ns int64) {
	if h.N == 0 || ns < h.Min {
		h.Min = ns
	}
	if h.N == 0 || ns > h.Max {
		h.Max = ns
	}
	h.N++
	h.Sum += ns
	// Bucket i holds the values in (bounds[i-1], bounds[i]], the last
	// one those above every bound (the OTLP explicit-bucket rule).
	sec := float64(ns) / 1e9
	h.B[sort.SearchFloat64s(bounds, sec)]++
}

// merge adds o, counted with the same bounds, to h.
func (h *hist) merge(o hist) {
	if h.N == 0 || o.N > 0 && o.Min < h.Min {
		h.Min = o.Min
	}
	if h.N == 0 || o.N > 0 && o.Max > h.Max {
		h.Max = o.Max
	}
	h.N += o.N
	h.Sum += o.Sum
	for i := range h.B {
		h.B[i] += o.B[i]
	}
}

type frozen [4]int64 // point start, end, value, count

type window [3]int64 // start, end (unix ns), count

func (w window) start() int64 { return w[0] }
func (w window) end() int64   { return w[1] }
func (w window) count() int64 { return w[2] }

// maxHistOpen bounds the open windows of a histogram stream, whose
// windows are larger (a count per bucket): with as many closed, and the
// largest identity, its state still fits one state value.
const maxHistOpen = 24

// maxOpen bounds the open windows of one stream. Beyond it the two oldest
// are merged into one wider window (counted as "coalesced"): still one
// window, sent once, not overlapping, so nothing is lost, only time
// resolution. With the defaults a stream holds at most about 65 open
// windows (watermark and the 10 minutes ahead, in 10 s buckets), so this
// only bites when the collector is down while a batch spans many buckets.
const maxOpen = 256

// maxAhead is how far in the future a bucket may start; later ones are
// counted in the bucket holding the present ("future"), so a wrong clock
// in a flow cannot hold windows open for years.
const maxAhead = 10 * time.Minute

// streamTTL: a stream with nothing open whose last window ended this long
// ago is forgotten; the floor keeps its end, so a stream seen again never
// sends a window overlapping one sent before.
const streamTTL = 24 * time.Hour

// maxStreams bounds the state; beyond it the idle streams that ended
// first are forgotten (their ends go into the floor).
const maxStreams = 50_000

const (
	floorKey     = "floor"
	streamPrefix = "s/"
)

// streamKey is the state key of a stream: short and of fixed length
// whatever the flow and metric names (keys are at most 512 bytes).
func streamKey(name, flow, metric string) string {
	return hashKey(name, flow, metric)
}

// pathKey is the state key of a stream of path points: its name, kind
// and attributes (more parts than a count stream's, so never the same).
func pathKey(name, kind string, attrs []string) string {
	return hashKey(append([]string{name, kind, ""}, attrs...)...)
}

func (st *stream) key() string {
	if st.Kind != "" {
		return pathKey(st.Name, st.Kind, st.Attrs)
	}
	return streamKey(st.Name, st.Flow, st.Metric)
}

func (st *stream) idle() bool {
	return len(st.Open) == 0 && len(st.Closed) == 0 && len(st.HOpen) == 0 && len(st.HClosed) == 0
}

func hashKey(parts ...string) string {
	h := sha256.New()
	for _, s := range parts {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	return streamPrefix + hex.EncodeToString(h.Sum(nil)[:16])
}

// windows is the sink's state: every stream it remembers, and the changes
// since the last TakeState.
type windows struct {
	// bounds are the histogram streams' bucket bounds (seconds).
	bounds  []float64
	streams map[string]*stream
	// floor is the latest end of a forgotten stream: a stream not in
	// streams is taken to have sent everything before it.
	floor int64
	dirty map[string]bool // keys changed since the last take
}

func newWindows(bounds []float64) *windows {
	return &windows{bounds: bounds, streams: map[string]*stream{}, dirty: map[string]bool{}}
}

// adjust reports occurrences counted other than at their own bucket.
type adjust struct {
	late, future, coalesced int64
}

// add counts n occurrences of (name, flow, metric) in the bucket
// [start, start+width) as of now. A bucket overlapping a window already
// sent goes to the stream's next window ("late"); one starting more than
// maxAhead ahead goes to the bucket of now ("future").
func (ws *windows) add(name, flow, metric string, start time.Time, width time.Duration, n int64, now time.Time, a *adjust) {
	key := streamKey(name, flow, metric)
	st := ws.streams[key]
	if st == nil {
		st = &stream{Name: name, Flow: flow, Metric: metric, Sent: ws.floor}
		ws.streams[key] = st
	}
	ws.dirty[key] = true
	s, e := st.window(start, width, n, now, a)
	st.count(s, e, n, a)
}

// count adds n to the open window [s, e) of a sum stream: to the open
// window it overlaps, if any (the same bucket, or a window of another
// width from before a restart), else to a new one.
func (st *stream) count(s, e, n int64, a *adjust) {
	i := sort.Search(len(st.Open), func(i int) bool { return st.Open[i].end() > s })
	if i < len(st.Open) && st.Open[i].start() < e {
		st.Open[i][2] += n
		return
	}
	st.Open = slices.Insert(st.Open, i, window{s, e, n})
	for len(st.Open) > maxOpen {
		st.Open[1] = window{st.Open[0].start(), st.Open[1].end(), st.Open[0].count() + st.Open[1].count()}
		st.Open = st.Open[1:]
		a.coalesced++
	}
}

// window is where n points of the bucket [start, start+width) go: their
// bucket, or the bucket of now for one more than maxAhead ahead
// ("future"), or for a bucket (partly) sent the stream's next window,
// which begins where the last one sent ended ("late").
func (st *stream) window(start time.Time, width time.Duration, n int64, now time.Time, a *adjust) (s, e int64) {
	w := int64(width)
	s = start.UnixNano()
	if s > now.Add(maxAhead).UnixNano() {
		s = bucketStart(now.UnixNano(), w)
		a.future += n
	}
	e = s + w
	if s < st.Sent {
		a.late += n
		s = st.Sent
		e = bucketStart(s, w) + w
	}
	return s, e
}

// addPath counts one path point into its stream (name, kind, attrs): a
// sum's window, as add does, or for a duration (hist) an observation of
// ns nanoseconds in a histogram window.
func (ws *windows) addPath(name, kind string, attrs []string, isHist bool, at time.Time, width time.Duration, ns int64, now time.Time, a *adjust) {
	key := pathKey(name, kind, attrs)
	st := ws.streams[key]
	if st == nil {
		st = &stream{Name: name, Kind: kind, Attrs: attrs, Sent: ws.floor}
		if isHist {
			st.Bounds = ws.bounds
		}
		ws.streams[key] = st
	}
	ws.dirty[key] = true
	s, e := st.window(time.Unix(0, bucketStart(at.UnixNano(), int64(width))), width, 1, now, a)
	if !isHist {
		st.count(s, e, 1, a)
		return
	}
	i := sort.Search(len(st.HOpen), func(i int) bool { return st.HOpen[i].E > s })
	if i == len(st.HOpen) || st.HOpen[i].S >= e {
		st.HOpen = slices.Insert(st.HOpen, i, hist{S: s, E: e, B: make([]int64, len(st.Bounds)+1)})
	}
	h := &st.HOpen[i]
	h.observe(h.bounds(st), ns)
	for len(st.HOpen) > maxHistOpen && slices.Equal(st.HOpen[0].bounds(st), st.HOpen[1].bounds(st)) {
		m := st.HOpen[1]
		m.S = st.HOpen[0].S
		m.B = slices.Clone(m.B)
		m.merge(st.HOpen[0])
		st.HOpen[1] = m
		st.HOpen = st.HOpen[1:]
		a.coalesced++
	}
}

func bucketStart(t, w int64) int64 {
	b := t - t%w
	if t%w < 0 {
		b -= w
	}
	return b
}

// close freezes the open windows that ended by cutoff (end ≤ cutoff):
// their points are fixed (delta: the window's own count from its start;
// cumulative: the stream's total from its first window's start) and Sent
// moves past them. It reports how many it closed.
func (ws *windows) close(cutoff int64, cumulative bool) int {
	n := 0
	for k, st := range ws.streams {
		i := 0
		for i < len(st.Open) && st.Open[i].end() <= cutoff {
			w := st.Open[i]
			if st.Begin == 0 {
				st.Begin = w.start()
			}
			st.Total += w.count()
			f := frozen{w.start(), w.end(), w.count(), w.count()}
			if cumulative {
				f[0], f[2] = st.Begin, st.Total
			}
			st.Closed = append(st.Closed, f)
			st.Sent = w.end()
			i++
		}
		if i > 0 {
			st.Open = st.Open[i:]
			if len(st.Open) == 0 {
				st.Open = nil
			}
			ws.dirty[k] = true
			n += i
		}
		n += st.closeHist(cutoff, cumulative, ws.dirty, k)
	}
	return n
}

// closeHist is close for a histogram stream. Cumulative: a window counted
// with other bounds than the total so far starts the stream again (a new
// Begin), as a receiver must treat it.
func (st *stream) closeHist(cutoff int64, cumulative bool, dirty map[string]bool, k string) int {
	i := 0
	for i < len(st.HOpen) && st.HOpen[i].E <= cutoff {
		w := st.HOpen[i]
		f := w
		if cumulative {
			if st.HTotal == nil || !slices.Equal(st.HTotal.bounds(st), w.bounds(st)) {
				st.Begin = w.S
				st.HTotal = &hist{S: w.S, B: make([]int64, len(w.B)), Bd: w.Bd}
			}
			st.HTotal.merge(w)
			st.HTotal.E = w.E
			f = *st.HTotal
			f.S = st.Begin
			f.B = slices.Clone(st.HTotal.B)
			f.W = w.N
		}
		st.HClosed = append(st.HClosed, f)
		st.Sent = w.E
		i++
	}
	if i == 0 {
		return 0
	}
	st.HOpen = st.HOpen[i:]
	if len(st.HOpen) == 0 {
		st.HOpen = nil
	}
	dirty[k] = true
	return i
}

// due is a closed window to send.
type due struct {
	key string
	st  *stream
	f   frozen
	h   *hist // a histogram window (f is then unused)
}

func (d due) start() int64 {
	if d.h != nil {
		return d.h.S
	}
	return d.f[0]
}
func (d due) end() int64 {
	if d.h != nil {
		return d.h.E
	}
	return d.f[1]
}
func (d due) value() int64 { return d.f[2] }

// count is the occurrences or path points the window holds (a
// cumulative histogram's: its own window's, not the total's).
func (d due) count() int64 {
	if d.h != nil {
		return d.h.own()
	}
	return d.f[3]
}

// closed lists the closed windows, each stream's in order, streams by
// name, flow and metric. It changes nothing.
func (ws *windows) closed() []due {
	var sts []*stream
	keys := map[*stream]string{}
	for k, st := range ws.streams {
		if len(st.Closed) > 0 || len(st.HClosed) > 0 {
			sts = append(sts, st)
			keys[st] = k
		}
	}
	sort.Slice(sts, func(i, j int) bool {
		a, b := sts[i], sts[j]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Flow != b.Flow {
			return a.Flow < b.Flow
		}
		if a.Metric != b.Metric {
			return a.Metric < b.Metric
		}
		return slices.Compare(a.Attrs, b.Attrs) < 0
	})
	var out []due
	for _, st := range sts {
		for _, f := range st.Closed {
			out = append(out, due{key: keys[st], st: st, f: f})
		}
		for i := range st.HClosed {
			out = append(out, due{key: keys[st], st: st, h: &st.HClosed[i]})
		}
	}
	return out
}

// sent records that d is done with: delivered, or refused for good. It
// must be the stream's first closed window.
func (ws *windows) sent(d due) error {
	st := d.st
	if d.h != nil {
		if len(st.HClosed) == 0 || st.HClosed[0].S != d.h.S || st.HClosed[0].E != d.h.E {
			return fmt.Errorf("otlp: histogram window [%d, %d) of %s is not the next of its stream", d.h.S, d.h.E, d.key)
		}
		st.HClosed = st.HClosed[1:]
		if len(st.HClosed) == 0 {
			st.HClosed = nil
		}
		ws.dirty[d.key] = true
		return nil
	}
	if len(st.Closed) == 0 || st.Closed[0] != d.f {
		return fmt.Errorf("otlp: window [%d, %d) of %s is not the next of its stream", d.f[0], d.f[1], d.key)
	}
	st.Closed = st.Closed[1:]
	if len(st.Closed) == 0 {
		st.Closed = nil
	}
	ws.dirty[d.key] = true
	return nil
}

// due reports whether a window is closed and waiting, or an open one
// ended by cutoff.
func (ws *windows) due(cutoff int64) bool {
	for _, st := range ws.streams {
		if len(st.Closed) > 0 || len(st.Open) > 0 && st.Open[0].end() <= cutoff ||
			len(st.HClosed) > 0 || len(st.HOpen) > 0 && st.HOpen[0].E <= cutoff {
			return true
		}
	}
	return false
}

// held counts the occurrences in open and closed windows.
func (ws *windows) held() int64 {
	var n int64
	for _, st := range ws.streams {
		for _, w := range st.Open {
			n += w.count()
		}
		for _, f := range st.Closed {
			n += f[3]
		}
		for _, h := range st.HOpen {
			n += h.N
		}
		for _, h := range st.HClosed {
			n += h.own()
		}
	}
	return n
}

// forget drops the streams with nothing held that ended before cutoff, and
// the oldest idle ones beyond maxStreams; their ends go into the floor.
func (ws *windows) forget(cutoff int64) {
	drop := func(k string, st *stream) {
		if st.Sent > ws.floor {
			ws.floor = st.Sent
			ws.dirty[floorKey] = true
		}
		delete(ws.streams, k)
		ws.dirty[k] = true
	}
	for k, st := range ws.streams {
		if st.idle() && st.Sent < cutoff {
			drop(k, st)
		}
	}
	if len(ws.streams) <= maxStreams {
		return
	}
	type idle struct {
		k    string
		sent int64
	}
	var idles []idle
	for k, st := range ws.streams {
		if st.idle() {
			idles = append(idles, idle{k, st.Sent})
		}
	}
	sort.Slice(idles, func(i, j int) bool { return idles[i].sent < idles[j].sent })
	for _, id := range idles {
		if len(ws.streams) <= maxStreams {
			break
		}
		drop(id.k, ws.streams[id.k])
	}
}

// take returns the state changes since the last take, as keys to set
// (nil: delete).
func (ws *windows) take() (map[string][]byte, error) {
	if len(ws.dirty) == 0 {
		return nil, nil
	}
	up := make(map[string][]byte, len(ws.dirty))
	for k := range ws.dirty {
		if k == floorKey {
			up[k] = []byte(strconv.FormatInt(ws.floor, 10))
			continue
		}
		st := ws.streams[k]
		if st == nil {
			up[k] = nil
			continue
		}
		b, err := json.Marshal(st)
		if err != nil {
			return nil, fmt.Errorf("otlp: encode state: %w", err)
		}
		up[k] = b
	}
	clear(ws.dirty)
	return up, nil
}

// restore loads committed state. A key it cannot read is skipped and
// reported; the floor is raised to now so that no window of the lost
// stream can be overlapped.
func (ws *windows) restore(state map[string][]byte, now time.Time) (bad []string) {
	ws.streams = map[string]*stream{}
	ws.floor = 0
	clear(ws.dirty)
	for k, v := range state {
		switch {
		case k == floorKey:
			f, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				bad = append(bad, k)
				continue
			}
			ws.floor = max(ws.floor, f)
		case len(k) > len(streamPrefix) && k[:len(streamPrefix)] == streamPrefix:
			var st stream
			if err := json.Unmarshal(v, &st); err != nil || k != st.key() || !valid(st) {
				bad = append(bad, k)
				continue
			}
			if st.Bounds != nil && !slices.Equal(st.Bounds, ws.bounds) {
				// duration_buckets changed: what the stream holds keeps
				// the bounds it was counted with; new windows get the
				// new ones.
				for i := range st.HOpen {
					st.HOpen[i].Bd = st.HOpen[i].bounds(&st)
				}
				for i := range st.HClosed {
					st.HClosed[i].Bd = st.HClosed[i].bounds(&st)
				}
				if st.HTotal != nil {
					st.HTotal.Bd = st.HTotal.bounds(&st)
				}
				st.Bounds = ws.bounds
				ws.dirty[k] = true
			}
			ws.streams[k] = &st
		default:
			bad = append(bad, k)
		}
	}
	if len(bad) > 0 {
		ws.floor = max(ws.floor, now.UnixNano())
		ws.dirty[floorKey] = true
		for _, k := range bad {
			if k != floorKey {
				ws.dirty[k] = true // deleted: streams does not hold it
			}
		}
	}
	sort.Strings(bad)
	return bad
}

// valid checks a restored stream: closed windows in order and ending by
// Sent, open ones after it.
func valid(st stream) bool {
	var last int64
	for _, f := range st.Closed {
		if f[1] <= last || f[1] > st.Sent || f[0] >= f[1] || f[3] <= 0 {
			return false
		}
		last = f[1]
	}
	last = st.Sent
	for _, w := range st.Open {
		if w.start() < last || w.end() <= w.start() || w.count() <= 0 {
			return false
		}
		last = w.end()
	}
	if (st.Kind == "") != (st.Attrs == nil) || len(st.Attrs)%2 != 0 {
		return false
	}
	last = 0
	for _, h := range st.HClosed {
		if h.E <= last || h.E > st.Sent || h.S >= h.E || !validHist(&st, h) {
			return false
		}
		last = h.E
	}
	last = st.Sent
	for _, h := range st.HOpen {
		if h.S < last || h.E <= h.S || !validHist(&st, h) {
			return false
		}
		last = h.E
	}
	return st.HTotal == nil || validHist(&st, *st.HTotal)
}

func validHist(st *stream, h hist) bool {
	if len(h.B) != len(h.bounds(st))+1 || h.N <= 0 || h.Min > h.Max {
		return false
	}
	var n int64
	for _, c := range h.B {
		if c < 0 {
			return false
		}
		n += c
	}
	return n == h.N
}
