package pipeline

import (
	"strings"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
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

// cacheEntry is one conversation's known keys, packed (store.KeySet).
type cacheEntry struct {
	prev, next *cacheEntry
	conv       string
	keys       store.KeySet
	bytes      int64
	expires    time.Time
	told       time.Time // when the store last got a request of the conversation
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
		if e.keys.Has(o.Key) {
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
	added, size := e.keys.Add(keys...)
	grew := int64(added)*keyCost + int64(size)
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
