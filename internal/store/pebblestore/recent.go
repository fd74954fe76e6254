package pebblestore

import "sync"

// recentHeaders holds, in memory, the header last written of the
// conversations claims wrote most recently, while their keys are in their
// header (inline), with those keys decoded. A claim of such a conversation
// takes its header from here instead of seeking it in Pebble: in serve,
// where a claim is one request of about a hundred events, those seeks
// (mostly through the memtables' skiplists) were a seventh of the CPU, and
// events of a conversation follow one another within a few hundred
// events. It holds exactly what Pebble holds, as endedHeaders does: it is
// changed only under the conversation's stripe lock, after the batch that
// wrote the header was applied, by every write of a header (a claim's
// puts, a close's and a sweep's drop), and it starts empty, so after a
// restart a claim reads the header from Pebble again, as it does for a
// conversation no longer held.
//
// It is bounded by bytes (recentSize) in two generations of half the bound
// each: a header is written into the newer one, and when that is full the
// older one is dropped and the newer one takes its place, so what is held
// is what was written lately, without a list to keep in order.
type recentHeaders struct {
	mu       sync.Mutex
	cur, old map[string]recentHeader
	curSize  int
	half     int // each generation holds at most this many bytes (recentSize)
}

// recentHeader is a header as written, and its keys (inlineList), in
// byte order. Neither is changed once held: a claim that adds keys makes
// a new list and a new encoding.
type recentHeader struct {
	h    header
	keys []string
}

// recentSize is what holding r, of conversation id, takes: its id, its
// encoded keys and the strings of its keys, and for the rest of the header
// and the map's entry, 128 bytes.
func recentSize(id string, r *recentHeader) int {
	n := len(id) + len(r.h.inlineKeys) + 128
	for _, k := range r.keys {
		n += len(k) + 16
	}
	return n
}

// newRecentHeaders returns a cache of at most limit bytes; nil (no cache:
// every method does nothing) when limit is 0.
func newRecentHeaders(limit int) *recentHeaders {
	if limit <= 0 {
		return nil
	}
	return &recentHeaders{cur: map[string]recentHeader{}, old: map[string]recentHeader{}, half: limit / 2}
}

// get returns the header of id and its keys, if held.
func (r *recentHeaders) get(id string) (recentHeader, bool) {
	if r == nil {
		return recentHeader{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if h, ok := r.cur[id]; ok {
		return h, true
	}
	h, ok := r.old[id]
	return h, ok
}

// wrote records the headers of the conversations dirty a claim applied
// (each staged one's header as written, and its keys). The caller holds
// their stripes.
func (r *recentHeaders) wrote(staged map[string]*staged, dirty []string) {
	if r == nil || len(dirty) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range dirty {
		c := staged[id]
		delete(r.old, id)
		if !c.h.inline {
			// Its keys are records of their own: a claim reads them
			// through an iterator anyway.
			delete(r.cur, id)
			continue
		}
		e := recentHeader{h: c.h, keys: c.stored}
		size := recentSize(id, &e)
		if size > r.half {
			delete(r.cur, id)
			continue
		}
		if r.curSize+size > r.half {
			r.old, r.cur, r.curSize = r.cur, make(map[string]recentHeader, len(r.cur)), 0
		}
		// (A header held in cur is counted again: cur is turned over a
		// little sooner, never later.)
		r.cur[id] = e
		r.curSize += size
	}
}

// forget drops the headers of ids (rewritten by a close, swept, or written
// by a batch that failed). The caller holds their stripes.
func (r *recentHeaders) forget(ids []string) {
	if r == nil || len(ids) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		delete(r.cur, id)
		delete(r.old, id)
	}
}
