package pebblestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/uuid"
)

// header is the state of one conversation: its counts, its path state
// (paths on), and, while they fit in maxInlineBytes, its keys. A small
// conversation (a flow sets a handful of metric attributes, some 50 bytes
// each) is then one Pebble record: a claim reads one value and writes one
// value, the close derives its path from the header, and the memtable,
// the write-ahead log and compactions carry one record where one per key
// cost a record each. A conversation whose keys outgrow the bound spills
// them to one Pebble key each (under its prefix, after the header), so a
// claim of a conversation of thousands of keys reads and writes only the
// keys it touches, not a value that grows with the conversation.
type header struct {
	changed int64  // last change, unix ns
	epoch   uint64 // incarnation: keys of an older one are not held
	keys    int    // keys held in this incarnation
	bytes   int    // their total length
	path    store.Path
	// inline: the keys of this epoch are inlineKeys (encodeKeys), not
	// records of their own. A header without keys is inline: it has none
	// to read anywhere.
	inline     bool
	inlineKeys []byte
}

// maxInlineBytes bounds the keys a header carries (encoded): past it, the
// conversation's keys spill to records of their own, so no claim rewrites
// more than this. Real conversations (3 to 6 keys, some 50 bytes each
// before front-coding) fit many times over.
const maxInlineBytes = 1024

// Flags of the byte after the counts. pathEnded and pathClosed are the
// path state; headerInline says the keys follow (encodeKeys), and
// headerNoPath that no path state does (a header without keys and without
// path state ends after the counts, as headers always did). Headers
// written before keys were inline set neither, and had path state when
// they had the byte; theirs may end with a copy of the keys for the close
// (a count, then each key), which the store no longer reads: their keys
// are records.
const (
	pathEnded    = 1
	pathClosed   = 2
	headerInline = 4
	headerNoPath = 8
)

func (h header) encode() []byte {
	b := make([]byte, 0, 8*binary.MaxVarintLen64+len(h.inlineKeys))
	b = binary.AppendVarint(b, h.changed)
	b = binary.AppendUvarint(b, h.epoch)
	b = binary.AppendUvarint(b, uint64(h.keys))
	b = binary.AppendUvarint(b, uint64(h.bytes))
	inline := h.inline && h.keys > 0
	if h.path == (store.Path{}) && !inline {
		return b
	}
	var f byte
	if h.path.Ended {
		f |= pathEnded
	}
	if h.path.Closed {
		f |= pathClosed
	}
	if inline {
		f |= headerInline
	}
	if h.path == (store.Path{}) {
		f |= headerNoPath
	}
	b = append(b, f)
	if f&headerNoPath == 0 {
		b = binary.AppendVarint(b, h.path.Due)
		b = binary.AppendVarint(b, h.path.Filed)
	}
	if inline {
		b = append(b, h.inlineKeys...)
	}
	return b
}

var errCorrupt = errors.New("corrupt record")

func decodeHeader(v []byte) (header, error) {
	var h header
	var n int
	var u [3]uint64
	if h.changed, n = binary.Varint(v); n <= 0 {
		return h, errCorrupt
	}
	v = v[n:]
	for i := range u {
		if u[i], n = binary.Uvarint(v); n <= 0 {
			return h, errCorrupt
		}
		v = v[n:]
	}
	h.epoch, h.keys, h.bytes = u[0], int(u[1]), int(u[2])
	h.inline = h.keys == 0
	if len(v) == 0 {
		return h, nil
	}
	f := v[0]
	v = v[1:]
	if f&headerNoPath == 0 {
		var due, filed int64
		if due, n = binary.Varint(v); n <= 0 {
			return h, errCorrupt
		}
		v = v[n:]
		if filed, n = binary.Varint(v); n <= 0 {
			return h, errCorrupt
		}
		v = v[n:]
		h.path = store.Path{Due: due, Filed: filed, Ended: f&pathEnded != 0, Closed: f&pathClosed != 0}
	}
	if f&headerInline != 0 {
		if h.keys == 0 {
			return h, errCorrupt
		}
		h.inline, h.inlineKeys = true, bytes.Clone(v)
	}
	// Otherwise what follows, if anything, is the copy of the keys
	// headers once carried for the close: not read.
	return h, nil
}

// inlineList decodes the keys a header carries (inline), in byte order.
func (h *header) inlineList() ([]string, error) {
	if h.keys == 0 {
		return nil, nil
	}
	return decodeKeys(h.inlineKeys, h.keys, h.bytes)
}

// encodeKeys writes keys, sorted and without duplicates, front-coded: a
// conversation's keys are its flows' metric attributes,
// <Flow>Metric_<Name>(<time>), so each key is cut at its last "(" into a
// name and a time, and each part is written as the length it shares with
// the same part of the key before it, then the length of the rest and the
// rest. Sorted, a name repeats the flow of the one before; a time, set
// within minutes of the others of its conversation, repeats its date and
// hour, whatever the flow. The cut only chooses what is shared: decoding
// joins the parts again, so any key, whatever its bytes, reads back as it
// was written.
func encodeKeys(b []byte, keys []string) []byte {
	var prevName, prevStamp string
	for _, k := range keys {
		name, stamp := splitKey(k)
		b = appendShared(b, prevName, name)
		b = appendShared(b, prevStamp, stamp)
		prevName, prevStamp = name, stamp
	}
	return b
}

// splitKey cuts k before its last "(" (k is all name when it has none).
func splitKey(k string) (name, stamp string) {
	if i := strings.LastIndexByte(k, '('); i >= 0 {
		return k[:i], k[i:]
	}
	return k, ""
}

// appendShared writes s as the length of the prefix it shares with prev,
// then the rest (appendString).
func appendShared(b []byte, prev, s string) []byte {
	n := 0
	for n < len(prev) && n < len(s) && prev[n] == s[n] {
		n++
	}
	b = binary.AppendUvarint(b, uint64(n))
	return appendString(b, s[n:])
}

// decodeKeys reads what encodeKeys wrote: n keys of size bytes in all (as
// the header counts them).
func decodeKeys(v []byte, n, size int) ([]string, error) {
	if size < 0 || size > len(v)*maxInlineBytes {
		return nil, errCorrupt
	}
	// Every key is a slice of one string, built in one buffer; the parts
	// of the key before are read back from there.
	buf := make([]byte, 0, size)
	ends := make([]int, 0, n)
	var name, stamp [2]int // the key before's parts: buf[name[0]:name[1]], buf[stamp[0]:stamp[1]]
	for len(v) > 0 {
		start := len(buf)
		var err error
		if buf, v, err = readShared(buf, v, name, size); err != nil {
			return nil, err
		}
		mid := len(buf)
		if buf, v, err = readShared(buf, v, stamp, size); err != nil {
			return nil, err
		}
		name, stamp = [2]int{start, mid}, [2]int{mid, len(buf)}
		ends = append(ends, len(buf))
	}
	if len(ends) != n || len(buf) != size {
		return nil, errCorrupt
	}
	s := string(buf)
	out := make([]string, n)
	start := 0
	for i, end := range ends {
		out[i] = s[start:end]
		start = end
	}
	return out, nil
}

// readShared appends to buf a part appendShared wrote at the start of v,
// whose prefix is shared with buf[prev[0]:prev[1]], and returns the rest
// of v; buf never grows beyond size.
func readShared(buf, v []byte, prev [2]int, size int) ([]byte, []byte, error) {
	shared, m := binary.Uvarint(v)
	if m <= 0 || shared > uint64(prev[1]-prev[0]) {
		return nil, nil, errCorrupt
	}
	v = v[m:]
	rest, m := binary.Uvarint(v)
	if m <= 0 || rest > uint64(len(v)-m) || uint64(len(buf))+shared+rest > uint64(size) {
		return nil, nil, errCorrupt
	}
	buf = append(buf, buf[prev[0]:prev[0]+int(shared)]...)
	buf = append(buf, v[m:m+int(rest)]...)
	return buf, v[m+int(rest):], nil
}

// conversation is a conversation's state with its keys, as read by get.
type conversation struct {
	changed int64
	keys    []string
}

// decodeLegacy reads a conversation as stores before the per-key layout
// wrote it: the last change, then every key.
func decodeLegacy(v []byte) (*conversation, error) {
	changed, n := binary.Varint(v)
	if n <= 0 {
		return nil, errCorrupt
	}
	c := &conversation{changed: changed}
	v = v[n:]
	for len(v) > 0 {
		var k string
		var err error
		k, v, err = readString(v)
		if err != nil {
			return nil, err
		}
		c.keys = append(c.keys, k)
	}
	return c, nil
}

// encodeEntry writes an outbox entry: its occurrences, then, when it has
// any, its path points (pointsWriter's form; entries written before paths
// existed end after the occurrences).
func encodeEntry(occs []flowmetrics.Occurrence, paths []flowmetrics.PathPoint) []byte {
	b := make([]byte, 0, 64*len(occs)+32*len(paths))
	b = binary.AppendUvarint(b, uint64(len(occs)))
	for _, o := range occs {
		b = appendString(b, o.Key)
		b = appendString(b, o.Flow)
		b = appendString(b, o.Metric)
		b = binary.AppendVarint(b, o.Time.Unix())
		b = binary.AppendUvarint(b, uint64(o.Time.Nanosecond()))
	}
	if len(paths) == 0 {
		return b
	}
	var w pointsWriter
	for i := range paths {
		w.add(&paths[i])
	}
	return w.appendTo(b)
}

// pointsWriter encodes the path points of an outbox entry a point at a
// time, as a close derives them. A close derives a few points per
// conversation from a few flows, metrics and funnels, so the entry names
// each flow, metric, timing, funnel, experiment, variant and step once,
// in a table its points refer to by index; a point leaves out the
// conversation and the time of the point before it when they are the
// same, and writes a duration of whole nanoseconds as a varint.
//
// The entry's points, after its occurrences: a zero byte (entries of the
// forms before, decodePathsV1's, have at least one point here), the
// version (pointsV2), the number of names, their lengths, their bytes,
// the number of points, then each point:
//
//   - its kind byte: the kind (pointKindMask), pointSameConversation,
//     pointSameTime;
//   - its fields byte: which of Flow, Metric, Name, Variant and Step it
//     has (bit i for the i-th), how its Seconds is written
//     (pointSecondsMask: none, nanoseconds or float bits), and whether its
//     conversation is a UUID written in 16 bytes (pointUUID);
//   - the index of each name it has, in that order;
//   - its conversation unless pointSameConversation: 16 bytes with
//     pointUUID (Genesys Cloud's conversation ids are UUIDs, written in
//     lower case), else its length and bytes;
//   - its Seconds: a zigzag varint of nanoseconds or 8 bytes of float64
//     bits, big-endian;
//   - unless pointSameTime: its Unix seconds less the point before's (the
//     first point's: less zero) as a zigzag varint, then its nanoseconds
//     (nanosecondsCode).
type pointsWriter struct {
	n      int
	body   []byte            // the points
	index  map[string]uint64 // name → its index in names
	names  []string
	nbytes int // of names

	conv      string
	sec, nsec int64 // the time of the point before
}

const (
	pointsV2 = 2

	// The kind byte's flags (kinds are small: pointKindMask).
	pointSameConversation = 0x80
	pointSameTime         = 0x40
	pointKindMask         = 0x3f

	// The fields byte: bits 0–4 say which names follow; then the form of
	// Seconds, and of the conversation.
	pointSecondsMask  = 0x60
	pointSecondsNanos = 0x20
	pointSecondsFloat = 0x40
	pointUUID         = 0x80
)

func (w *pointsWriter) add(p *flowmetrics.PathPoint) {
	sec, nsec := p.Time.Unix(), int64(p.Time.Nanosecond())
	kind := byte(p.Kind) & pointKindMask
	same := w.n > 0 && p.Conversation == w.conv
	if same {
		kind |= pointSameConversation
	}
	if w.n > 0 && sec == w.sec && nsec == w.nsec {
		kind |= pointSameTime
	}
	fields := byte(0)
	names := [...]string{p.Flow, p.Metric, p.Name, p.Variant, p.Step}
	for i, s := range names {
		if s != "" {
			fields |= 1 << i
		}
	}
	var id [16]byte
	if !same && uuid.Parse(p.Conversation, &id) {
		fields |= pointUUID
	}
	var ns int64
	switch {
	case p.Seconds == 0:
	case secondsAsNanos(p.Seconds, &ns):
		fields |= pointSecondsNanos
	default:
		fields |= pointSecondsFloat
	}
	b := append(w.body, kind, fields)
	for _, s := range names {
		if s != "" {
			b = binary.AppendUvarint(b, w.name(s))
		}
	}
	switch {
	case same:
	case fields&pointUUID != 0:
		b = append(b, id[:]...)
	default:
		b = appendString(b, p.Conversation)
	}
	w.conv = p.Conversation
	switch fields & pointSecondsMask {
	case pointSecondsNanos:
		b = binary.AppendVarint(b, ns)
	case pointSecondsFloat:
		b = binary.BigEndian.AppendUint64(b, math.Float64bits(p.Seconds))
	}
	if kind&pointSameTime == 0 {
		b = binary.AppendVarint(b, sec-w.sec)
		b = binary.AppendUvarint(b, nanosecondsCode(nsec))
		w.sec, w.nsec = sec, nsec
	}
	w.body = b
	w.n++
}

// name returns the index of s in the entry's names, adding it if new.
func (w *pointsWriter) name(s string) uint64 {
	if i, ok := w.index[s]; ok {
		return i
	}
	if w.index == nil {
		w.index = make(map[string]uint64)
	}
	i := uint64(len(w.names))
	w.index[s] = i
	w.names = append(w.names, s)
	w.nbytes += len(s)
	return i
}

// appendTo appends the points as an outbox entry's (after its
// occurrences) to b.
func (w *pointsWriter) appendTo(b []byte) []byte {
	b = slices.Grow(b, 3*binary.MaxVarintLen64+2+len(w.names)+w.nbytes+len(w.body))
	b = append(b, 0, pointsV2)
	b = binary.AppendUvarint(b, uint64(len(w.names)))
	for _, s := range w.names {
		b = binary.AppendUvarint(b, uint64(len(s)))
	}
	for _, s := range w.names {
		b = append(b, s...)
	}
	b = binary.AppendUvarint(b, uint64(w.n))
	return append(b, w.body...)
}

// entry is the outbox entry of the points alone (no occurrences), as
// encodeEntry(nil, the points) writes it.
func (w *pointsWriter) entry() []byte {
	return w.appendTo(binary.AppendUvarint(nil, 0))
}

// secondsAsNanos reports whether s is exactly a whole number of
// nanoseconds' Duration.Seconds (as a path's durations, differences of
// attribute times, are), and sets *ns to it.
func secondsAsNanos(s float64, ns *int64) bool {
	r := math.Round(s * 1e9)
	if !(math.Abs(r) < 1<<62) {
		return false
	}
	d := time.Duration(r)
	if d.Seconds() != s {
		return false
	}
	*ns = int64(d)
	return true
}

// nanosecondsCode writes a time's nanoseconds in fewer bytes when they are
// whole milliseconds (attribute times mostly are): ms<<1|1, else ns<<1.
func nanosecondsCode(nsec int64) uint64 {
	if nsec%1e6 == 0 {
		return uint64(nsec/1e6)<<1 | 1
	}
	return uint64(nsec) << 1
}

func decodeEntry(v []byte) ([]flowmetrics.Occurrence, []flowmetrics.PathPoint, error) {
	occs, v, err := decodeOccurrences(v)
	if err != nil || len(v) == 0 {
		return occs, nil, err
	}
	paths, err := decodePaths(v)
	return occs, paths, err
}

// decodePaths reads the path points of an outbox entry, in the form
// pointsWriter writes or in the forms before it.
func decodePaths(v []byte) ([]flowmetrics.PathPoint, error) {
	if len(v) < 2 || v[0] != 0 {
		return decodePathsV1(v)
	}
	if v[1] != pointsV2 {
		return nil, errCorrupt
	}
	v = v[2:]
	// The names: one string holds them all, each point's a part of it.
	nn, m := binary.Uvarint(v)
	if m <= 0 || nn > uint64(len(v)) {
		return nil, errCorrupt
	}
	v = v[m:]
	ends := make([]int, nn)
	total := 0
	for i := range ends {
		l, m := binary.Uvarint(v)
		if m <= 0 || l > uint64(len(v)) {
			return nil, errCorrupt
		}
		v = v[m:]
		total += int(l)
		ends[i] = total
	}
	if total > len(v) {
		return nil, errCorrupt
	}
	all := string(v[:total])
	v = v[total:]
	name := func(i uint64) (string, bool) {
		if i >= nn {
			return "", false
		}
		start := 0
		if i > 0 {
			start = ends[i-1]
		}
		return all[start:ends[i]], true
	}

	n, m := binary.Uvarint(v)
	if m <= 0 || n == 0 || n > uint64(len(v)/2) {
		return nil, errCorrupt
	}
	v = v[m:]
	out := make([]flowmetrics.PathPoint, n)
	var conv string
	var sec, nsec int64
	var at time.Time
	for i := range out {
		if len(v) < 2 {
			return nil, errCorrupt
		}
		kind, fields := v[0], v[1]
		v = v[2:]
		p := &out[i]
		p.Kind = flowmetrics.PathKind(kind & pointKindMask)
		for f, s := range [...]*string{&p.Flow, &p.Metric, &p.Name, &p.Variant, &p.Step} {
			if fields&(1<<f) == 0 {
				continue
			}
			x, m := binary.Uvarint(v)
			var ok bool
			if m <= 0 {
				return nil, errCorrupt
			}
			if *s, ok = name(x); !ok {
				return nil, errCorrupt
			}
			v = v[m:]
		}
		switch {
		case kind&pointSameConversation != 0:
			if i == 0 || fields&pointUUID != 0 {
				return nil, errCorrupt
			}
		case fields&pointUUID != 0:
			if len(v) < 16 {
				return nil, errCorrupt
			}
			var text [36]byte
			conv, v = string(uuid.Text(&text, (*[16]byte)(v[:16]))), v[16:]
		default:
			var err error
			if conv, v, err = readString(v); err != nil {
				return nil, err
			}
		}
		p.Conversation = conv
		switch fields & pointSecondsMask {
		case pointSecondsNanos:
			ns, m := binary.Varint(v)
			if m <= 0 {
				return nil, errCorrupt
			}
			v = v[m:]
			p.Seconds = time.Duration(ns).Seconds()
		case pointSecondsFloat:
			if len(v) < 8 {
				return nil, errCorrupt
			}
			p.Seconds = math.Float64frombits(binary.BigEndian.Uint64(v))
			v = v[8:]
		case pointSecondsMask:
			return nil, errCorrupt
		}
		if kind&pointSameTime == 0 {
			d, a := binary.Varint(v)
			if a <= 0 {
				return nil, errCorrupt
			}
			code, c := binary.Uvarint(v[a:])
			if c <= 0 {
				return nil, errCorrupt
			}
			v = v[a+c:]
			switch x := code >> 1; {
			case code&1 != 0 && x < 1e3:
				nsec = int64(x) * 1e6
			case code&1 == 0 && x < 1e9:
				nsec = int64(x)
			default:
				return nil, errCorrupt
			}
			sec += d
			at = time.Unix(sec, nsec).UTC()
		} else if i == 0 {
			return nil, errCorrupt
		}
		p.Time = at
	}
	if len(v) != 0 {
		return nil, errCorrupt
	}
	return out, nil
}

// Flags of a path point's kind byte in the form before pointsV2: the
// point leaves out the conversation id of the point before it
// (pointSameConversation) and a zero Seconds (pointNoSecondsV1). Entries
// written before the flags have neither bit set (kinds are small).
const pointNoSecondsV1 = 0x40

// decodePathsV1 reads the path points of an entry written before
// pointsV2: every name of every point in full.
func decodePathsV1(v []byte) ([]flowmetrics.PathPoint, error) {
	n, m := binary.Uvarint(v)
	if m <= 0 || n == 0 || n > uint64(len(v)) {
		return nil, errCorrupt
	}
	v = v[m:]
	out := make([]flowmetrics.PathPoint, 0, n)
	// The names of an entry's points repeat (a few flows, metrics,
	// funnels): each is allocated once per entry.
	names := map[string]string{}
	for i := uint64(0); i < n; i++ {
		if len(v) < 1 {
			return nil, errCorrupt
		}
		kind := v[0]
		p := flowmetrics.PathPoint{Kind: flowmetrics.PathKind(kind & pointKindMask)}
		v = v[1:]
		var err error
		for _, s := range [...]*string{&p.Flow, &p.Metric, &p.Name, &p.Variant, &p.Step} {
			if *s, v, err = readName(v, names); err != nil {
				return nil, err
			}
		}
		if kind&pointSameConversation != 0 {
			if len(out) == 0 {
				return nil, errCorrupt
			}
			p.Conversation = out[len(out)-1].Conversation
		} else if p.Conversation, v, err = readString(v); err != nil {
			return nil, err
		}
		if kind&pointNoSecondsV1 == 0 {
			if len(v) < 8 {
				return nil, errCorrupt
			}
			p.Seconds = math.Float64frombits(binary.BigEndian.Uint64(v))
			v = v[8:]
		}
		sec, a := binary.Varint(v)
		if a <= 0 {
			return nil, errCorrupt
		}
		nsec, c := binary.Uvarint(v[a:])
		if c <= 0 {
			return nil, errCorrupt
		}
		v = v[a+c:]
		p.Time = time.Unix(sec, int64(nsec)).UTC()
		out = append(out, p)
	}
	if len(v) != 0 {
		return nil, errCorrupt
	}
	return out, nil
}

// readName is readString for a name that repeats: names holds those read
// so far.
func readName(v []byte, names map[string]string) (string, []byte, error) {
	n, m := binary.Uvarint(v)
	if m <= 0 || n > uint64(len(v)-m) {
		return "", nil, errCorrupt
	}
	b := v[m : m+int(n)]
	s, ok := names[string(b)]
	if !ok {
		s = string(b)
		names[s] = s
	}
	return s, v[m+int(n):], nil
}

func decodeOccurrences(v []byte) ([]flowmetrics.Occurrence, []byte, error) {
	n, m := binary.Uvarint(v)
	if m <= 0 || n > uint64(len(v)) {
		return nil, nil, errCorrupt
	}
	v = v[m:]
	occs := make([]flowmetrics.Occurrence, 0, n)
	for i := uint64(0); i < n; i++ {
		var o flowmetrics.Occurrence
		var err error
		if o.Key, v, err = readString(v); err != nil {
			return nil, nil, err
		}
		if o.Flow, v, err = readString(v); err != nil {
			return nil, nil, err
		}
		if o.Metric, v, err = readString(v); err != nil {
			return nil, nil, err
		}
		sec, a := binary.Varint(v)
		if a <= 0 {
			return nil, nil, errCorrupt
		}
		nsec, b := binary.Uvarint(v[a:])
		if b <= 0 {
			return nil, nil, errCorrupt
		}
		v = v[a+b:]
		o.Time = time.Unix(sec, int64(nsec)).UTC()
		occs = append(occs, o)
	}
	return occs, v, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func readString(v []byte) (string, []byte, error) {
	n, m := binary.Uvarint(v)
	if m <= 0 || n > uint64(len(v)-m) {
		return "", nil, errCorrupt
	}
	return string(v[m : m+int(n)]), v[m+int(n):], nil
}
