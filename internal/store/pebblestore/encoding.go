package pebblestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// header is the state of one conversation apart from its keys (one Pebble
// key each, so a claim reads and writes only the keys it touches, however
// many the conversation holds). With paths on it also holds the path state,
// which a claim then reads and writes with the rest at no extra cost.
type header struct {
	changed int64  // last change, unix ns
	epoch   uint64 // incarnation: keys of an older one are not held
	keys    int    // keys held in this incarnation
	bytes   int    // their total length
	path    store.Path
	// pathKeys (paths on, path open) is a copy of the keys held, each as
	// appendString writes it, pathKeysN of them, while it holds every key
	// (pathKeysN == keys) and fits in maxPathKeyBytes: the close then
	// derives the path from the header it reads anyway, and reads no key.
	// A conversation with more keys (or keys claimed before paths were
	// on) has none, and its close reads its keys.
	pathKeys  []byte
	pathKeysN int
}

// maxPathKeyBytes bounds the copy of a conversation's keys its header
// carries for the close: a flow sets a handful of metric attributes per
// conversation (some 50 bytes each), so real conversations fit; a larger
// one costs each of its claims no more than this, and its close reads its
// keys instead.
const maxPathKeyBytes = 1024

// hasPathKeys reports whether pathKeys holds every key of the
// conversation.
func (h *header) hasPathKeys() bool {
	return h.path != (store.Path{}) && !h.path.Closed && h.pathKeysN == h.keys
}

// addPathKey adds k to pathKeys, which stops holding them all (and is
// dropped) when it would outgrow maxPathKeyBytes. Called before keys
// counts k.
func (h *header) addPathKey(k string) {
	if h.pathKeysN != h.keys || h.path.Closed {
		return
	}
	if len(h.pathKeys)+binary.MaxVarintLen64+len(k) > maxPathKeyBytes {
		h.pathKeys, h.pathKeysN = nil, -1
		return
	}
	h.pathKeys = appendString(h.pathKeys, k)
	h.pathKeysN++
}

// pathKeyList decodes pathKeys.
func (h *header) pathKeyList() ([]string, error) {
	out := make([]string, 0, h.pathKeysN)
	v := h.pathKeys
	for len(v) > 0 {
		var k string
		var err error
		if k, v, err = readString(v); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	if len(out) != h.pathKeysN {
		return nil, errCorrupt
	}
	return out, nil
}

// heldOf returns which of asked the header's copy of the keys holds (nil:
// none); the copy must hold every key (hasPathKeys).
func (h *header) heldOf(asked []string) (map[string]struct{}, error) {
	var held map[string]struct{}
	v, n := h.pathKeys, 0
	for len(v) > 0 {
		l, m := binary.Uvarint(v)
		if m <= 0 || l > uint64(len(v)-m) {
			return nil, errCorrupt
		}
		k := v[m : m+int(l)]
		v = v[m+int(l):]
		n++
		for _, a := range asked {
			if a == string(k) {
				if held == nil {
					held = map[string]struct{}{}
				}
				held[a] = struct{}{}
				break
			}
		}
	}
	if n != h.pathKeysN {
		return nil, errCorrupt
	}
	return held, nil
}

// Path state flags, after the counts; a header without path state ends
// after them.
const (
	pathEnded  = 1
	pathClosed = 2
)

func (h header) encode() []byte {
	b := make([]byte, 0, 8*binary.MaxVarintLen64+len(h.pathKeys))
	b = binary.AppendVarint(b, h.changed)
	b = binary.AppendUvarint(b, h.epoch)
	b = binary.AppendUvarint(b, uint64(h.keys))
	b = binary.AppendUvarint(b, uint64(h.bytes))
	if h.path == (store.Path{}) {
		return b
	}
	var f byte
	if h.path.Ended {
		f |= pathEnded
	}
	if h.path.Closed {
		f |= pathClosed
	}
	b = append(b, f)
	b = binary.AppendVarint(b, h.path.Due)
	b = binary.AppendVarint(b, h.path.Filed)
	if h.keys == 0 || !h.hasPathKeys() {
		return b
	}
	b = binary.AppendUvarint(b, uint64(h.pathKeysN))
	return append(b, h.pathKeys...)
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
	if len(v) == 0 {
		return h, nil
	}
	f := v[0]
	v = v[1:]
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
	if len(v) == 0 {
		// No copy of the keys: none held, or a header written before
		// headers carried them (the close reads the keys).
		return h, nil
	}
	keys, n := binary.Uvarint(v)
	if n <= 0 || keys > uint64(len(v)) {
		return h, errCorrupt
	}
	h.pathKeysN, h.pathKeys = int(keys), bytes.Clone(v[n:])
	return h, nil
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
// any, its path points (entries written before paths existed end after the
// occurrences).
func encodeEntry(occs []flowmetrics.Occurrence, paths []flowmetrics.PathPoint) []byte {
	b := make([]byte, 0, 64*len(occs)+96*len(paths))
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
	b = binary.AppendUvarint(b, uint64(len(paths)))
	for i, p := range paths {
		kind := byte(p.Kind)
		sameConv := i > 0 && p.Conversation == paths[i-1].Conversation
		if sameConv {
			kind |= pointSameConversation
		}
		if p.Seconds == 0 {
			kind |= pointNoSeconds
		}
		b = append(b, kind)
		for _, s := range [...]string{p.Flow, p.Metric, p.Name, p.Variant, p.Step} {
			b = appendString(b, s)
		}
		if !sameConv {
			b = appendString(b, p.Conversation)
		}
		if p.Seconds != 0 {
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(p.Seconds))
		}
		b = binary.AppendVarint(b, p.Time.Unix())
		b = binary.AppendUvarint(b, uint64(p.Time.Nanosecond()))
	}
	return b
}

// Flags of a path point's kind byte in an outbox entry: a close derives a
// few points per conversation, most of them counts, so a point leaves out
// the conversation id of the point before it and a zero Seconds. Entries
// written before the flags have neither bit set (kinds are small).
const (
	pointSameConversation = 0x80
	pointNoSeconds        = 0x40
	pointKindMask         = 0x3f
)

func decodeEntry(v []byte) ([]flowmetrics.Occurrence, []flowmetrics.PathPoint, error) {
	occs, v, err := decodeOccurrences(v)
	if err != nil || len(v) == 0 {
		return occs, nil, err
	}
	paths, err := decodePaths(v)
	return occs, paths, err
}

func decodePaths(v []byte) ([]flowmetrics.PathPoint, error) {
	n, m := binary.Uvarint(v)
	if m <= 0 || n > uint64(len(v)) {
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
		if kind&pointNoSeconds == 0 {
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
