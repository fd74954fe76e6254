package pebblestore

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// conversation is the decoded state of one conversation. Keys are few per
// conversation (a flow sets a handful of metric attributes), so a slice with
// a linear search beats a map here; past scanKeys keys a set is built, so a
// conversation with thousands of keys costs no more per lookup.
type conversation struct {
	changed int64
	keys    []string
	bytes   int                 // total length of the keys
	set     map[string]struct{} // the keys, once there are more than scanKeys
}

const scanKeys = 32

func (c *conversation) has(k string) bool {
	if len(c.keys) > scanKeys {
		if c.set == nil {
			c.set = make(map[string]struct{}, len(c.keys))
			for _, x := range c.keys {
				c.set[x] = struct{}{}
			}
		}
		_, ok := c.set[k]
		return ok
	}
	for _, x := range c.keys {
		if x == k {
			return true
		}
	}
	return false
}

func (c *conversation) add(k string) {
	c.keys = append(c.keys, k)
	c.bytes += len(k)
	if c.set != nil {
		c.set[k] = struct{}{}
	}
}

func (c *conversation) encode() []byte {
	n := binary.MaxVarintLen64
	for _, k := range c.keys {
		n += binary.MaxVarintLen64 + len(k)
	}
	b := make([]byte, 0, n)
	b = binary.AppendVarint(b, c.changed)
	for _, k := range c.keys {
		b = appendString(b, k)
	}
	return b
}

var errCorrupt = errors.New("corrupt record")

func decodeConversation(v []byte) (*conversation, error) {
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
		c.bytes += len(k)
	}
	return c, nil
}

func encodeEntry(occs []flowmetrics.Occurrence) []byte {
	b := make([]byte, 0, 64*len(occs))
	b = binary.AppendUvarint(b, uint64(len(occs)))
	for _, o := range occs {
		b = appendString(b, o.Key)
		b = appendString(b, o.Flow)
		b = appendString(b, o.Metric)
		b = binary.AppendVarint(b, o.Time.Unix())
		b = binary.AppendUvarint(b, uint64(o.Time.Nanosecond()))
	}
	return b
}

func decodeEntry(v []byte) ([]flowmetrics.Occurrence, error) {
	n, m := binary.Uvarint(v)
	if m <= 0 || n > uint64(len(v)) {
		return nil, errCorrupt
	}
	v = v[m:]
	occs := make([]flowmetrics.Occurrence, 0, n)
	for i := uint64(0); i < n; i++ {
		var o flowmetrics.Occurrence
		var err error
		if o.Key, v, err = readString(v); err != nil {
			return nil, err
		}
		if o.Flow, v, err = readString(v); err != nil {
			return nil, err
		}
		if o.Metric, v, err = readString(v); err != nil {
			return nil, err
		}
		sec, a := binary.Varint(v)
		if a <= 0 {
			return nil, errCorrupt
		}
		nsec, b := binary.Uvarint(v[a:])
		if b <= 0 {
			return nil, errCorrupt
		}
		v = v[a+b:]
		o.Time = time.Unix(sec, int64(nsec)).UTC()
		occs = append(occs, o)
	}
	return occs, nil
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
