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
	mu    sync.Mutex
	m     map[string]header
	size  int // the bytes held (endedSize of each)
	limit int // at most this many (0: hold none)
}

// maxEndedBytes bounds the memory the headers held take (endedSize): a
// replay closes its ended paths a few batches after their end, and serve
// within its grace; past the bound a close reads the header from Pebble.
// A header of a few keys takes about 250 bytes: some 16,000 of them.
const maxEndedBytes = 4 << 20

// endedSize is what holding h, of conversation id, takes: its id, its
// keys and, for the rest of the header and the map's entry, 128 bytes.
func endedSize(id string, h *header) int { return len(id) + len(h.inlineKeys) + 128 }

func newEndedHeaders(limit int) *endedHeaders {
	return &endedHeaders{m: make(map[string]header), limit: limit}
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
		e.drop(id)
		if h := &staged[id].h; h.endedOpen() && e.size+endedSize(id, h) <= e.limit {
			e.m[id] = *h
			e.size += endedSize(id, h)
		}
	}
}

// drop drops the header of id, if held. The caller holds e.mu.
func (e *endedHeaders) drop(id string) {
	if h, ok := e.m[id]; ok {
		e.size -= endedSize(id, &h)
		delete(e.m, id)
	}
}

// forget drops the headers of ids (closed, filed again, swept). The
// caller holds their stripes.
func (e *endedHeaders) forget(ids []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, id := range ids {
		e.drop(id)
	}
}
