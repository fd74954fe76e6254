package pipeline

import (
	"container/list"
	"sync"
	"time"
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

// allKnown reports whether every key is known for conv.
func (c *knownCache) allKnown(conv string, keys []string, now time.Time) bool {
	if c == nil || c.max <= 0 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[conv]
	if !ok {
		return false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.expires) {
		c.lru.Remove(el)
		delete(c.items, conv)
		return false
	}
	for _, k := range keys {
		if _, ok := e.keys[k]; !ok {
			return false
		}
	}
	c.lru.MoveToFront(el)
	return true
}

// learn records that the store holds keys for conv.
func (c *knownCache) learn(conv string, keys []string, now time.Time) {
	if c == nil || c.max <= 0 || len(keys) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[conv]; ok {
		e := el.Value.(*cacheEntry)
		for _, k := range keys {
			e.keys[k] = struct{}{}
		}
		// The expiry stays that of the first learning: keys learned later
		// are younger, so the entry still expires before any of them.
		c.lru.MoveToFront(el)
		return
	}
	e := &cacheEntry{conv: conv, keys: make(map[string]struct{}, len(keys)), expires: now.Add(c.ttl)}
	for _, k := range keys {
		e.keys[k] = struct{}{}
	}
	c.items[conv] = c.lru.PushFront(e)
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).conv)
	}
}
