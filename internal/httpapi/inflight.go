package httpapi

import "sync"

// minRequestBytes is what a request with a tiny or empty body reserves:
// its goroutine, headers and answer cost something whatever the body.
const minRequestBytes = 16 << 10

// inflight bounds the request bytes held by the ingest requests being
// served at once. A request reserves what its body can grow to before it
// reads a byte and releases it when answered; one that does not fit is
// refused at once (503 with Retry-After), never queued, so concurrent
// senders can neither grow memory nor a queue without bound.
type inflight struct {
	mu        sync.Mutex
	used, max int64
}

// reserve takes n bytes if they fit under the bound.
func (f *inflight) reserve(n int64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.used+n > f.max {
		return false
	}
	f.used += n
	return true
}

func (f *inflight) release(n int64) {
	f.mu.Lock()
	f.used -= n
	f.mu.Unlock()
}

// bodyReservation is what a request reserves: its declared length when it
// declares one and is not compressed, else the most its body may grow to
// (a gzip body is bounded once decompressed, by limit).
func bodyReservation(contentLength int64, gzipped bool, limit int64) int64 {
	n := limit
	if contentLength >= 0 && !gzipped {
		n = min(contentLength, limit)
	}
	// Never more than limit, so one request of the largest body always
	// fits under a bound of at least limit.
	return min(max(n, minRequestBytes), limit)
}
