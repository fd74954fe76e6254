package main

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
)

// heapAllowance is what a replay's Go heap holds beyond the known-key
// cache and the store's own memory: decoded batches in flight, outbox
// entries between flushes, the sinks' buffers (about 30 MB live at
// 1,000,000 conversations).
const heapAllowance = 48 << 20

// limitMemory sets Go's soft memory limit for a replay into the embedded
// store, unless GOMEMLIMIT sets one: the known-key cache's bytes, what the
// store keeps on the Go heap and heapAllowance. Without it the garbage
// collector lets the heap grow to twice its live size, and in a build
// without cgo that doubles Pebble's cache and memtables too. The limit is
// soft: a heap that needs more gets it, at the cost of more collection.
// The returned func puts the limit (and GOGC) before it back (for a replay run inside
// a longer-lived process, such as a test).
//
// Under that limit, the proportional trigger only adds collections: a
// replay's heap is mostly the cache and the store, which live to its end,
// so collecting each time the heap doubles its live part rescans them long
// before the limit is near. Unless GOGC says otherwise, the limit alone
// sets when to collect (GOGC off). A heap whose live part nears the limit
// raises it (guardLimit), so the collector never runs back to back.
func limitMemory(cfg config.Config, st flowmetrics.Store) (restore func()) {
	if cfg.Store.Type == "memory" {
		return setGCPercent(memoryGCPercent)
	}
	return setMemory(cfg, st, 0, -1)
}

// memoryGCPercent is a replay's GOGC over the memory store, unless GOGC is
// set. The store holds its conversations outside the Go heap, so the live
// heap is only what is in flight (20 to 40 MB: batches, outbox entries
// between flushes, the deadline heap): at GOGC=100 the collector ran each
// time those few tens of MB were allocated again, some 190 times in a
// replay of 500,000 conversations. Letting the heap grow to five times its
// live part collects a fifth as often.
const memoryGCPercent = 400

// setGCPercent sets GOGC to percent unless the environment sets it, and
// returns the func that puts it back.
func setGCPercent(percent int) (restore func()) {
	if _, set := os.LookupEnv("GOGC"); set {
		return func() {}
	}
	was := debug.SetGCPercent(percent)
	return func() { debug.SetGCPercent(was) }
}

// serveGCPercent is serve's GOGC, unless GOGC is set. Most of serve's live
// heap is the known-key cache, which lives as long as serve does, while a
// request allocates about 2 KB per event and keeps none of it. With
// GOGC=100 the collector ran each time the heap had doubled its live part.
// Letting the heap grow to four times its live part collects a third as
// often, and the memory limit (limitServeMemory) keeps it bounded.
const serveGCPercent = 300

// limitServeMemory sets Go's garbage collector for serve into the
// embedded store, unless GOMEMLIMIT sets the limit: the soft memory limit
// of a replay (limitMemory) plus the request bytes serve may hold
// (http.max_bytes_in_flight), and GOGC serveGCPercent unless GOGC is set.
// The limit caps what the proportional trigger lets the heap grow to; a
// heap whose live part is small never reaches it. The returned func puts
// both back (for serve run inside a longer-lived process, such as a test).
func limitServeMemory(cfg config.Config, st flowmetrics.Store) (restore func()) {
	inFlight := cfg.HTTP.MaxBytesInFlight
	if inFlight <= 0 {
		inFlight = 4 * cfg.HTTP.MaxBodyBytes // httpapi's default
	}
	return setMemory(cfg, st, inFlight, serveGCPercent)
}

// setMemory sets the soft memory limit (the cache's bytes, the store's
// memory on the Go heap, heapAllowance and extra) and GOGC to percent
// unless the environment sets them; the store must be the embedded one.
func setMemory(cfg config.Config, st flowmetrics.Store, extra int64, percent int) (restore func()) {
	if _, set := os.LookupEnv("GOMEMLIMIT"); set {
		return func() {}
	}
	h, ok := st.(interface{ GoHeapBytes() int64 })
	if !ok {
		return func() {}
	}
	cache := cfg.Pipeline.CacheBytes
	switch {
	case cfg.Pipeline.CacheConversations < 0:
		cache = 0
	case cache == 0:
		cache = pipeline.DefaultCacheBytes
	}
	base := cache + h.GoHeapBytes() + heapAllowance + extra
	before := debug.SetMemoryLimit(base)
	stop := guardLimit(base)
	was := -2 // not changed
	if _, set := os.LookupEnv("GOGC"); !set {
		was = debug.SetGCPercent(percent)
	}
	return func() {
		stop()
		debug.SetMemoryLimit(before)
		if was != -2 {
			debug.SetGCPercent(was)
		}
	}
}

// A soft memory limit below the live heap makes the collector run back to
// back (with GOGC off it has no other goal; the runtime only caps it at
// half the CPU): a durable replay of 5 million shuffled events over a
// million conversations spent most of its time collecting, at a fifth of
// its speed, with a live heap some 10 MB past the limit. So while the
// limit is set, a goroutine reads the live heap (what the last collection
// kept) every guardEvery and keeps the limit at least guardHeadroom above
// it, and back down to the base once the live heap shrinks: each
// collection then frees at least a fifth of the heap. Memory grows past
// the base only with what is live.
const (
	guardEvery    = 100 * time.Millisecond
	guardHeadroom = 4 // the limit is at least live + live/guardHeadroom
)

// guardedLimit is the soft limit for a live heap of live bytes and a base
// limit.
func guardedLimit(base, live int64) int64 {
	return max(base, live+live/guardHeadroom)
}

// guardLimit keeps the soft limit at guardedLimit until stop is called.
func guardLimit(base int64) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		t := time.NewTicker(guardEvery)
		defer t.Stop()
		limit := base
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			metrics.Read(sample)
			if sample[0].Value.Kind() != metrics.KindUint64 {
				return // a runtime without the metric: the limit stays
			}
			if want := guardedLimit(base, int64(sample[0].Value.Uint64())); want != limit {
				debug.SetMemoryLimit(want)
				limit = want
			}
		}
	}()
	return func() { close(done); <-exited }
}
