package main

import (
	"os"
	"runtime/debug"

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
func limitMemory(cfg config.Config, st flowmetrics.Store) (restore func()) {
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
	before := debug.SetMemoryLimit(cache + h.GoHeapBytes() + heapAllowance)
	// Under that limit, the proportional trigger only adds collections: a
	// replay's heap is mostly the cache and the store, which live to its
	// end, so collecting each time the heap doubles its live part rescans
	// them long before the limit is near. Unless GOGC says otherwise, the
	// limit alone sets when to collect. A heap whose live part passes the
	// limit is collected as it would be with GOGC=100 (the runtime caps
	// the collector's CPU either way).
	percent := -2 // not changed
	if _, set := os.LookupEnv("GOGC"); !set {
		percent = debug.SetGCPercent(-1)
	}
	return func() {
		debug.SetMemoryLimit(before)
		if percent != -2 {
			debug.SetGCPercent(percent)
		}
	}
}
