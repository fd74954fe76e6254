package pipeline

import (
	"container/list"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// knownCache remembers, per conversation, keys the store is known to hold, so
// an event that brings nothing new (most events: each carries every attribute
// of the participant) is answered without a store call. Entries live for ttl
// from when they were learned, which keeps them inside the store's retention,
// and the cache holds at most max conversations, evicting the least recently
// used.
type knownCache struct {
	mu    sync.Mutex
	max   int
	ttl   time.Duration
	items map[string]*list.Element
	lru   list.List
}

type cacheEntry struct {
	conv    string
	keys    map[string]struct{}
	expires time.Time
}

func newKnownCache(max int, ttl time.Duration) *knownCache {
	return &knownCache{max: max, ttl: ttl, items: map[string]*list.Element{}}
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
		c.lru.Remove(el)
		delete(c.items, conv)
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

// learn records that the store holds the keys of occs for conv.
func (c *knownCache) learn(conv string, occs []flowmetrics.Occurrence, now time.Time) {
	if c == nil || c.max <= 0 || len(occs) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[conv]; ok {
		e := el.Value.(*cacheEntry)
		for _, o := range occs {
			e.keys[o.Key] = struct{}{}
		}
		// The expiry stays that of the first learning: keys learned later
		// are younger, so the entry still expires before any of them.
		c.lru.MoveToFront(el)
		return
	}
	e := &cacheEntry{conv: conv, keys: make(map[string]struct{}, len(occs)), expires: now.Add(c.ttl)}
	for _, o := range occs {
		e.keys[o.Key] = struct{}{}
	}
	c.items[conv] = c.lru.PushFront(e)
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).conv)
	}
}
