package pebblestore

import "sync"

// endedHeaders holds, in memory, the header last written of each
// conversation whose path ended and is still open, while its keys are in
// its header: those a close reads next. The close takes the header from
// here instead of seeking it in Pebble (by then it is often behind many
// newer keys of the memtable, or in a table a flush wrote), which was most
// of a close's reads. It holds exactly what Pebble holds: it is changed
// only under the conversation's stripe lock, after the batch that wrote
// the header was applied, by every write of a header that it may hold (a
// claim's, a close's, a sweep's); and it starts empty, so after a restart
// the closes read the headers from Pebble again, as they do for a
// conversation it has no room for.
type endedHeaders struct {
	mu  sync.Mutex
	m   map[string]header
	max int // at most this many (0: hold none)
}

// maxEndedHeaders bounds the headers held, about 250 bytes each: a replay
// closes its ended paths a few batches after their end, and serve within
// its grace; past the bound a close reads the header from Pebble.
const maxEndedHeaders = 1 << 14

func newEndedHeaders(max int) *endedHeaders {
	return &endedHeaders{m: make(map[string]header), max: max}
}

// get returns the header of id, if held.
func (e *endedHeaders) get(id string) (header, bool) {
	e.mu.Lock()
	h, ok := e.m[id]
	e.mu.Unlock()
	return h, ok
}

// endedOpen reports whether h is a header endedHeaders holds: an open
// path that ended, with its keys inline (a close reads nothing else).
func (h *header) endedOpen() bool {
	return h.path.Ended && !h.path.Closed && h.inline
}

// wroteHeaders records the headers of the conversations dirty a claim
// applied (each staged one's header as written). The caller holds their
// stripes.
func (s *Store) wroteHeaders(staged map[string]*staged, dirty []string) {
	if s.opts.Paths == nil || len(dirty) == 0 {
		return
	}
	e := s.ended
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, id := range dirty {
		h := &staged[id].h
		if !h.endedOpen() {
			delete(e.m, id)
			continue
		}
		if _, ok := e.m[id]; ok || len(e.m) < e.max {
			e.m[id] = *h
		}
	}
}

// forget drops the headers of ids (closed, filed again, swept). The
// caller holds their stripes.
func (e *endedHeaders) forget(ids []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, id := range ids {
		delete(e.m, id)
	}
}
