package pipeline

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// knownCache remembers, per conversation, keys the store is known to hold, so
// an event that brings nothing new (most events: each carries every attribute
// of the participant) is answered without a store call. Entries live for ttl
// from when they were learned, which keeps them inside the store's retention.
// The cache holds at most max conversations and maxBytes bytes (ids, keys
// and the bookkeeping of each, as costed by entryCost and keyCost), evicting
// the least recently used: many keys per conversation cannot grow it past
// its bytes any more than many conversations can.
type knownCache struct {
	mu       sync.Mutex
	max      int
	maxBytes int64
	bytes    int64
	ttl      time.Duration
	items    map[string]*cacheEntry
	count    int
	lru      cacheEntry // sentinel of the ring: lru.next is the most recent
}

// The memory a cached conversation and each of its keys take beyond their
// strings: the list element, the map entries and the entry itself.
// (Entries are leaner than this since their keys are packed; the bound
// stays conservative.)
const (
	entryCost = 200
	keyCost   = 64
)

// packedKeys is how many keys an entry keeps packed in one string, looked
// up by scanning; beyond it (or for a key longer than 255 bytes) they move
// to a set, so a conversation of many keys is not scanned per key.
const packedKeys = 8

// cacheEntry is one conversation's known keys. Most conversations have a
// few: they are packed in one string, each after its length byte, which
// costs a fraction of a map per conversation.
type cacheEntry struct {
	prev, next *cacheEntry
	conv       string
	packed     string
	n          int                 // keys in packed
	set        map[string]struct{} // every key, once packed would not hold them
	bytes      int64
	expires    time.Time
	told       time.Time // when the store last got a request of the conversation
}

// has reports whether e knows key k.
func (e *cacheEntry) has(k string) bool {
	if e.set != nil {
		_, ok := e.set[k]
		return ok
	}
	for p := e.packed; p != ""; {
		n := int(p[0])
		if p[1:1+n] == k {
			return true
		}
		p = p[1+n:]
	}
	return false
}

// add records keys (those e does not know yet) and returns the bytes they
// add to the cache's count. The cache keeps its own copies: the strings of
// a decoded record may share its whole body, which must not stay alive
// here.
func (e *cacheEntry) add(keys []string) (grew int64) {
	if e.set == nil {
		var buf [packedKeys]string
		fresh := buf[:0]
		size := len(e.packed)
		fits := true
		for _, k := range keys {
			if e.has(k) || slices.Contains(fresh, k) {
				continue
			}
			if e.n+len(fresh) == packedKeys || len(k) > 255 {
				fits = false
				break
			}
			fresh = append(fresh, k)
			size += 1 + len(k)
		}
		if fits {
			if len(fresh) == 0 {
				return 0
			}
			var b strings.Builder
			b.Grow(size)
			b.WriteString(e.packed)
			for _, k := range fresh {
				b.WriteByte(byte(len(k)))
				b.WriteString(k)
				grew += keyCost + int64(len(k))
			}
			e.packed, e.n = b.String(), e.n+len(fresh)
			return grew
		}
		e.set = make(map[string]struct{}, e.n+len(keys))
		for p := e.packed; p != ""; {
			n := int(p[0])
			e.set[p[1:1+n]] = struct{}{}
			p = p[1+n:]
		}
		e.packed, e.n = "", 0
	}
	for _, k := range keys {
		if _, ok := e.set[k]; ok {
			continue
		}
		e.set[strings.Clone(k)] = struct{}{}
		grew += keyCost + int64(len(k))
	}
	return grew
}

func newKnownCache(max int, maxBytes int64, ttl time.Duration) *knownCache {
	c := &knownCache{max: max, maxBytes: maxBytes, ttl: ttl, items: map[string]*cacheEntry{}}
	c.lru.prev, c.lru.next = &c.lru, &c.lru
	return c
}

// unknown returns the occurrences of occs whose keys are not known for conv
// (occs itself when none is known), nil when all are.
func (c *knownCache) unknown(conv string, occs []flowmetrics.Occurrence, now time.Time) []flowmetrics.Occurrence {
	if c == nil || c.max <= 0 {
		return occs
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[conv]
	if !ok {
		return occs
	}
	if !now.Before(e.expires) {
		c.remove(e)
		return occs
	}
	c.toFront(e)
	var out []flowmetrics.Occurrence
	for i, o := range occs {
		if e.has(o.Key) {
			if out == nil {
				// The first known key: from here on, copy the others.
				out = make([]flowmetrics.Occurrence, i, len(occs))
				copy(out, occs[:i])
			}
			continue
		}
		if out != nil {
			out = append(out, o)
		}
	}
	if out == nil {
		return occs
	}
	return out
}

// learn records that the store holds keys for conv. It returns how many
// conversations it evicted because the cache held more than its bytes.
func (c *knownCache) learn(conv string, keys []string, now time.Time) (evicted int) {
	if c == nil || c.max <= 0 || len(keys) == 0 {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[conv]
	if !ok {
		e = &cacheEntry{conv: strings.Clone(conv), expires: now.Add(c.ttl), bytes: entryCost + int64(len(conv))}
		c.items[e.conv] = e
		c.count++
		c.bytes += e.bytes
	}
	// The expiry stays that of the first learning: keys learned later are
	// younger, so the entry still expires before any of them.
	e.told = now
	grew := e.add(keys)
	e.bytes += grew
	c.bytes += grew
	c.toFront(e)
	for c.count > c.max {
		c.remove(c.lru.prev)
	}
	for c.bytes > c.maxBytes && c.count > 0 {
		c.remove(c.lru.prev)
		evicted++
	}
	return evicted
}

// tell reports whether the store should hear of an event of conv that the
// cache answered, because it last got a request of the conversation every
// or longer ago (and then counts it as told now). A conversation the cache
// does not hold reaches the store anyway.
func (c *knownCache) tell(conv string, now time.Time, every time.Duration) bool {
	if c == nil || every <= 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[conv]
	if !ok || now.Sub(e.told) < every {
		return false
	}
	e.told = now
	return true
}

// toFront makes e the most recently used.
func (c *knownCache) toFront(e *cacheEntry) {
	if e.prev != nil {
		e.prev.next, e.next.prev = e.next, e.prev
	}
	e.prev, e.next = &c.lru, c.lru.next
	c.lru.next.prev = e
	c.lru.next = e
}

func (c *knownCache) remove(e *cacheEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
	delete(c.items, e.conv)
	c.count--
	c.bytes -= e.bytes
}

// size returns the conversations and bytes the cache holds.
func (c *knownCache) size() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count, c.bytes
}
