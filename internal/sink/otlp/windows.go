package otlp

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"
)

// A stream is one OpenTelemetry metric stream (metric name and attributes
// flow, metric; the static tags and the resource are the same for every
// stream). Its windows are sent once each, in order, never overlapping:
// Sent is the end of the last window sent, and every open window starts at
// or after it. The stream is the unit of the sink's durable state: one key
// per stream, committed with the outbox cursor.
type stream struct {
	Name   string `json:"n"`
	Flow   string `json:"f"`
	Metric string `json:"m"`
	// Sent is the end (unix ns) of the last window sent; 0 before the
	// first.
	Sent int64 `json:"e,omitempty"`
	// Begin is the cumulative stream's start time (unix ns): the start of
	// its first window. Total is the sum of every window sent since.
	Begin int64 `json:"b,omitempty"`
	Total int64 `json:"t,omitempty"`
	// Open are the windows not yet sent, [start, end, count] in unix ns,
	// sorted and not overlapping.
	Open []window `json:"w,omitempty"`
}

type window [3]int64 // start, end (unix ns), count

func (w window) start() int64 { return w[0] }
func (w window) end() int64   { return w[1] }
func (w window) count() int64 { return w[2] }

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
	h := sha256.New()
	for _, s := range []string{name, flow, metric} {
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
	streams map[string]*stream
	// floor is the latest end of a forgotten stream: a stream not in
	// streams is taken to have sent everything before it.
	floor int64
	dirty map[string]bool // keys changed since the last take
}

func newWindows() *windows {
	return &windows{streams: map[string]*stream{}, dirty: map[string]bool{}}
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
	w := int64(width)
	s := start.UnixNano()
	if s > now.Add(maxAhead).UnixNano() {
		s = bucketStart(now.UnixNano(), w)
		a.future += n
	}
	e := s + w
	if s < st.Sent {
		// Its bucket is (partly) sent: the next window, which begins
		// where the last one sent ended.
		a.late += n
		s = st.Sent
		e = bucketStart(s, w) + w
	}
	// Add to the open window this bucket overlaps, if any (the same
	// bucket, or a window of another width from before a restart).
	i := sort.Search(len(st.Open), func(i int) bool { return st.Open[i].end() > s })
	if i < len(st.Open) && st.Open[i].start() < e {
		st.Open[i][2] += n
		return
	}
	st.Open = append(st.Open, window{})
	copy(st.Open[i+1:], st.Open[i:])
	st.Open[i] = window{s, e, n}
	for len(st.Open) > maxOpen {
		st.Open[1] = window{st.Open[0].start(), st.Open[1].end(), st.Open[0].count() + st.Open[1].count()}
		st.Open = st.Open[1:]
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

// due is a window ready to be sent, with the point to send for it.
type due struct {
	key   string
	st    *stream
	w     window
	start int64 // the point's start: the window's (delta) or the stream's (cumulative)
	value int64 // the window's count (delta) or the stream's total with it (cumulative)
}

// dueBy lists the windows that closed by cutoff (end ≤ cutoff), each
// stream's in order, streams by name, flow and metric, with the points to send for
// them. It changes nothing.
func (ws *windows) dueBy(cutoff int64, cumulative bool) []due {
	keys := make([]string, 0, len(ws.streams))
	for k, st := range ws.streams {
		if len(st.Open) > 0 && st.Open[0].end() <= cutoff {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := ws.streams[keys[i]], ws.streams[keys[j]]
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		if a.Flow != b.Flow {
			return a.Flow < b.Flow
		}
		return a.Metric < b.Metric
	})
	var out []due
	for _, k := range keys {
		st := ws.streams[k]
		begin, total := st.Begin, st.Total
		for _, w := range st.Open {
			if w.end() > cutoff {
				break
			}
			d := due{key: k, st: st, w: w, start: w.start(), value: w.count()}
			if cumulative {
				if begin == 0 {
					begin = w.start()
				}
				total += w.count()
				d.start, d.value = begin, total
			}
			out = append(out, d)
		}
	}
	return out
}

// sent records that d's window is done with: delivered, or refused for
// good. It must be the stream's first open window.
func (ws *windows) sent(d due) error {
	st := d.st
	if len(st.Open) == 0 || st.Open[0] != d.w {
		return fmt.Errorf("otlp: window [%d, %d) of %s is not the next of its stream", d.w.start(), d.w.end(), d.key)
	}
	st.Open = st.Open[1:]
	if len(st.Open) == 0 {
		st.Open = nil
	}
	st.Sent = d.w.end()
	if st.Begin == 0 {
		st.Begin = d.w.start()
	}
	st.Total += d.w.count()
	ws.dirty[d.key] = true
	return nil
}

// nextDue is the earliest end of an open window (0 when none is open).
func (ws *windows) nextDue() int64 {
	var min int64
	for _, st := range ws.streams {
		if len(st.Open) > 0 && (min == 0 || st.Open[0].end() < min) {
			min = st.Open[0].end()
		}
	}
	return min
}

// open counts the occurrences in open windows.
func (ws *windows) open() int64 {
	var n int64
	for _, st := range ws.streams {
		for _, w := range st.Open {
			n += w.count()
		}
	}
	return n
}

// forget drops the streams with nothing open that ended before cutoff, and
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
		if len(st.Open) == 0 && st.Sent < cutoff {
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
		if len(st.Open) == 0 {
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
			if err := json.Unmarshal(v, &st); err != nil || k != streamKey(st.Name, st.Flow, st.Metric) || !validOpen(st) {
				bad = append(bad, k)
				continue
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

func validOpen(st stream) bool {
	last := st.Sent
	for _, w := range st.Open {
		if w.start() < last || w.end() <= w.start() || w.count() <= 0 {
			return false
		}
		last = w.end()
	}
	return true
}
