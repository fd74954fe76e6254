package store

import (
	"slices"
	"strings"
)

// PackedKeys is how many keys a KeySet keeps packed in one string, looked up
// by scanning; beyond it (or for a key longer than 255 bytes) they move to a
// map, so a conversation of many keys is not scanned per key.
const PackedKeys = 8

// KeySet is one conversation's metric keys, held densely for the stores
// and caches that keep millions of conversations in memory. Most
// conversations have a few keys: they are packed in one string, each after
// its length byte, which costs a fraction of a map per conversation and
// gives the garbage collector one pointer to follow instead of a map's.
// The zero KeySet is empty. It keeps its own copies of what it is given:
// the strings of a decoded record may share the record's whole body, which
// must not stay alive here.
type KeySet struct {
	packed string
	set    map[string]struct{} // every key, once packed would not hold them
	n      int32               // keys in packed
	bytes  int32               // total length of the keys
}

// Len returns how many keys s holds.
func (s *KeySet) Len() int {
	if s.set != nil {
		return len(s.set)
	}
	return int(s.n)
}

// Bytes returns the total length of the keys s holds.
func (s *KeySet) Bytes() int { return int(s.bytes) }

// Size returns what s holds as a Size.
func (s *KeySet) Size() Size { return Size{Keys: s.Len(), Bytes: s.Bytes()} }

// Has reports whether s holds key k.
func (s *KeySet) Has(k string) bool {
	if s.set != nil {
		_, ok := s.set[k]
		return ok
	}
	for p := s.packed; p != ""; {
		n := int(p[0])
		if p[1:1+n] == k {
			return true
		}
		p = p[1+n:]
	}
	return false
}

// Add adds those of keys that s does not hold yet (each once), and returns
// how many it added and their total length.
func (s *KeySet) Add(keys ...string) (added, bytes int) {
	if s.set == nil {
		var buf [PackedKeys]string
		fresh := buf[:0]
		size := len(s.packed)
		fits := true
		for _, k := range keys {
			if s.Has(k) || slices.Contains(fresh, k) {
				continue
			}
			if int(s.n)+len(fresh) == PackedKeys || len(k) > 255 {
				fits = false
				break
			}
			fresh = append(fresh, k)
			size += 1 + len(k)
		}
		if fits {
			if len(fresh) == 0 {
				return 0, 0
			}
			var b strings.Builder
			b.Grow(size)
			b.WriteString(s.packed)
			for _, k := range fresh {
				b.WriteByte(byte(len(k)))
				b.WriteString(k)
				bytes += len(k)
			}
			s.packed = b.String()
			s.n += int32(len(fresh))
			s.bytes += int32(bytes)
			return len(fresh), bytes
		}
		s.set = make(map[string]struct{}, int(s.n)+len(keys))
		for p := s.packed; p != ""; {
			n := int(p[0])
			s.set[p[1:1+n]] = struct{}{}
			p = p[1+n:]
		}
		s.packed, s.n = "", 0
	}
	for _, k := range keys {
		if _, ok := s.set[k]; ok {
			continue
		}
		s.set[strings.Clone(k)] = struct{}{}
		added++
		bytes += len(k)
	}
	s.bytes += int32(bytes)
	return added, bytes
}

// All calls yield with each key s holds (in no particular order) until it
// returns false.
func (s *KeySet) All(yield func(string) bool) {
	if s.set != nil {
		for k := range s.set {
			if !yield(k) {
				return
			}
		}
		return
	}
	for p := s.packed; p != ""; {
		n := int(p[0])
		if !yield(p[1 : 1+n]) {
			return
		}
		p = p[1+n:]
	}
}
