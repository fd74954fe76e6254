package pipeline

import (
	"container/list"
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
	items    map[string]*list.Element
	lru      list.List
}

// The memory a cached conversation and each of its keys take beyond their
// strings: the list element, the map entries and the entry itself.
const (
	entryCost = 200
	keyCost   = 64
)

type cacheEntry struct {
	conv    string
	keys    map[string]struct{}
	bytes   int64
	expires time.Time
	told    time.Time // when the store last got a request of the conversation
}

func newKnownCache(max int, maxBytes int64, ttl time.Duration) *knownCache {
	return &knownCache{max: max, maxBytes: maxBytes, ttl: ttl, items: map[string]*list.Element{}}
}

// unknown returns the occurrences of occs whose keys are not known for conv
// (occs itself when none is known), nil when all are.
func (c *knownCache) unknown(conv string, occs []flowmetrics.Occurrence, now time.Time) []flowmetrics.Occurrence {
	if c == nil || c.max <= 0 {
		return occs
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[conv]
	if !ok {
		return occs
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.remove(el)
		return occs
	}
	c.lru.MoveToFront(el)
	var out []flowmetrics.Occurrence
	for i, o := range occs {
		if _, ok := e.keys[o.Key]; ok {
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
	el, ok := c.items[conv]
	if !ok {
		// The cache keeps its own copies: the strings of a decoded record
		// may share its whole body, which must not stay alive here.
		e := &cacheEntry{conv: strings.Clone(conv), keys: make(map[string]struct{}, len(keys)), expires: now.Add(c.ttl), bytes: entryCost + int64(len(conv)), told: now}
		el = c.lru.PushFront(e)
		c.items[e.conv] = el
		c.bytes += e.bytes
	}
	// The expiry stays that of the first learning: keys learned later are
	// younger, so the entry still expires before any of them.
	e := el.Value.(*cacheEntry)
	e.told = now
	for _, k := range keys {
		if _, ok := e.keys[k]; ok {
			continue
		}
		e.keys[strings.Clone(k)] = struct{}{}
		n := keyCost + int64(len(k))
		e.bytes += n
		c.bytes += n
	}
	c.lru.MoveToFront(el)
	for c.lru.Len() > c.max {
		c.remove(c.lru.Back())
	}
	for c.bytes > c.maxBytes && c.lru.Len() > 0 {
		c.remove(c.lru.Back())
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
	el, ok := c.items[conv]
	if !ok {
		return false
	}
	e := el.Value.(*cacheEntry)
	if now.Sub(e.told) < every {
		return false
	}
	e.told = now
	return true
}

func (c *knownCache) remove(el *list.Element) {
	e := el.Value.(*cacheEntry)
	c.lru.Remove(el)
	delete(c.items, e.conv)
	c.bytes -= e.bytes
}

// size returns the conversations and bytes the cache holds.
func (c *knownCache) size() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.bytes
}
