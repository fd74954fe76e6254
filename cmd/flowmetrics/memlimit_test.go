package main

import (
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
)

// TestLimitMemory: a replay into the embedded store gets a soft memory
// limit made of the known-key cache's bytes, the store's memory on the Go
// heap and the allowance, and under it no proportional trigger (GOGC off)
// unless GOGC is set; serve gets the same limit plus its request bytes in
// flight, and GOGC serveGCPercent unless GOGC is set. GOMEMLIMIT, when
// set, is left to rule, and the memory store gets none (but GOGC
// memoryGCPercent in a replay, unless GOGC is set).
func TestLimitMemory(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(math.MaxInt64))
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	pst, err := pebblestore.Open(t.TempDir(), store.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pst.Close()
	mst := memstore.New(store.Options{})
	var cfg config.Config
	small := cfg
	small.Pipeline.CacheBytes = 1 << 20
	off := cfg
	off.Pipeline.CacheConversations = -1
	memCfg := cfg
	memCfg.Store.Type = "memory"
	serveCfg := config.Default()
	serveIn := 4 * serveCfg.HTTP.MaxBodyBytes // http.max_bytes_in_flight's default
	bounded := serveCfg
	bounded.HTTP.MaxBytesInFlight = 30 << 20
	cases := []struct {
		name    string
		serve   bool
		env     string
		gogc    string
		cfg     config.Config
		st      interface{ Close() error }
		limit   int64
		percent int
	}{
		{"embedded, default cache", false, "", "", cfg, pst, pipeline.DefaultCacheBytes + pst.GoHeapBytes() + heapAllowance, -1},
		{"embedded, small cache", false, "", "", small, pst, 1<<20 + pst.GoHeapBytes() + heapAllowance, -1},
		{"embedded, cache off", false, "", "", off, pst, pst.GoHeapBytes() + heapAllowance, -1},
		{"embedded, GOGC set", false, "", "200", cfg, pst, pipeline.DefaultCacheBytes + pst.GoHeapBytes() + heapAllowance, 100},
		{"embedded, GOMEMLIMIT set", false, "1GiB", "", cfg, pst, math.MaxInt64, 100},
		{"memory store", false, "", "", memCfg, mst, math.MaxInt64, memoryGCPercent},
		{"memory store, GOGC set", false, "", "200", memCfg, mst, math.MaxInt64, 100},
		{"serve, embedded", true, "", "", serveCfg, pst, pipeline.DefaultCacheBytes + pst.GoHeapBytes() + heapAllowance + serveIn, serveGCPercent},
		{"serve, embedded, bytes in flight set", true, "", "", bounded, pst, pipeline.DefaultCacheBytes + pst.GoHeapBytes() + heapAllowance + 30<<20, serveGCPercent},
		{"serve, GOGC set", true, "", "200", serveCfg, pst, pipeline.DefaultCacheBytes + pst.GoHeapBytes() + heapAllowance + serveIn, 100},
		{"serve, GOMEMLIMIT set", true, "1GiB", "", serveCfg, pst, math.MaxInt64, 100},
		{"serve, memory store", true, "", "", serveCfg, mst, math.MaxInt64, 100},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.env != "" {
				t.Setenv("GOMEMLIMIT", c.env)
			}
			if c.gogc != "" {
				// Only its presence matters: the runtime read it at start.
				t.Setenv("GOGC", c.gogc)
			}
			debug.SetMemoryLimit(math.MaxInt64)
			debug.SetGCPercent(100)
			limit := limitMemory
			if c.serve {
				limit = limitServeMemory
			}
			var restore func()
			switch st := c.st.(type) {
			case *pebblestore.Store:
				restore = limit(c.cfg, st)
			case *memstore.Store:
				restore = limit(c.cfg, st)
			}
			if got := debug.SetMemoryLimit(-1); got != c.limit {
				t.Errorf("got limit %d, want %d", got, c.limit)
			}
			if got := debug.SetGCPercent(-1); got != c.percent {
				t.Errorf("got GOGC %d, want %d", got, c.percent)
			}
			debug.SetGCPercent(c.percent) // as limitMemory left it
			restore()
			if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
				t.Errorf("after restore: limit %d, want none (%d)", got, int64(math.MaxInt64))
			}
			if got := debug.SetGCPercent(-1); got != 100 {
				t.Errorf("after restore: GOGC %d, want 100", got)
			}
			debug.SetGCPercent(100)
		})
	}
}

// TestGuardedLimit: the soft limit is the base until the live heap comes
// within a quarter of it, then a quarter above the live heap.
func TestGuardedLimit(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct{ base, live, want int64 }{
		{200 * mib, 0, 200 * mib},
		{200 * mib, 100 * mib, 200 * mib},
		{200 * mib, 160 * mib, 200 * mib},
		{200 * mib, 176 * mib, 220 * mib},
		{200 * mib, 400 * mib, 500 * mib},
	} {
		if got := guardedLimit(c.base, c.live); got != c.want {
			t.Errorf("guardedLimit(%d MiB, %d MiB) = %.1f MiB, want %d MiB", c.base/mib, c.live/mib, float64(got)/mib, c.want/mib)
		}
	}
}

// TestLiveHeapPastTheLimit: with a live heap four times the soft limit and
// GOGC off (as a replay sets them), the guard raises the limit to at least
// a fifth above the live heap, so a collection has room to free; once the
// heap is freed the limit comes back to its base.
func TestLiveHeapPastTheLimit(t *testing.T) {
	const mib = 1 << 20
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(math.MaxInt64))
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	base := int64(16 * mib)
	debug.SetMemoryLimit(base)
	stop := guardLimit(base)
	defer stop()

	live := make([][]byte, 64)
	for i := range live {
		live[i] = make([]byte, mib)
		for j := range live[i] {
			live[i][j] = byte(j) // touched, so it is really held
		}
	}
	want := int64(64*mib) * 6 / 5
	deadline := time.Now().Add(10 * time.Second)
	for debug.SetMemoryLimit(-1) < want && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if got := debug.SetMemoryLimit(-1); got < want {
		t.Fatalf("limit %.1f MiB with 64 MiB live, want at least %.1f MiB", float64(got)/mib, float64(want)/mib)
	}
	runtime.KeepAlive(live)

	live = nil
	deadline = time.Now().Add(10 * time.Second)
	for debug.SetMemoryLimit(-1) != base && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if got := debug.SetMemoryLimit(-1); got != base {
		t.Errorf("limit %.1f MiB once the heap was freed, want the base %d MiB", float64(got)/mib, base/mib)
	}
}
