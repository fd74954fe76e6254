package pipeline

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// TestHugeCacheMapped: a cache large enough for huge pages keeps its
// arrays mapped outside the Go heap, within a few huge pages of its byte
// bound however many conversations pass through it (entries and index
// grown, chunks reused after compactions), still answers exactly, and
// gives its mappings back once it is collected.
func TestHugeCacheMapped(t *testing.T) {
	if !hugePages {
		t.Skip("huge pages are asked for on Linux only")
	}
	now := time.Now()
	const bound = minHugeCache
	before := mapped.Load()
	c := newKnownCache(10_000_000, bound, time.Hour)
	if c.mem.heap {
		t.Fatalf("a cache of %d bytes is on the Go heap, want it mapped", bound)
	}
	key := func(i int) string { return fmt.Sprintf("FlowMetric_M%d(2026-12-06T02:00:%02d.000Z)", i%7, i%60) }
	conv := func(i int) string { return fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", i) }
	const n = 600_000
	peak := int64(0)
	for i := range n {
		c.learn(conv(i), []string{key(i), key(i + 1)}, now)
		c.learn(conv(i), []string{key(i + 2)}, now)
		peak = max(peak, c.mem.bytes)
	}
	held, _ := c.size()
	if held == 0 || held == n {
		t.Fatalf("cache holds %d of %d conversations, want it full and evicting", held, n)
	}
	// The slab's chunks (bound), the entries and the index (each at most
	// twice what the held entries need, and old and new side by side while
	// they grow), in whole huge pages.
	if limit := int64(bound + 3*(2*held*entrySize+2*2*held*8) + 4*hugePage); peak > limit {
		t.Errorf("mapped %d bytes at the peak for a bound of %d (%d conversations held), want at most %d", peak, bound, held, limit)
	}
	if got := mapped.Load() - before; got != c.mem.bytes {
		t.Errorf("mapped in all %d bytes more than before, the cache says %d", got, c.mem.bytes)
	}
	for i := n - 1000; i < n; i++ {
		occs := []flowmetrics.Occurrence{{Key: key(i)}, {Key: key(i + 1)}, {Key: key(i + 2)}, {Key: key(i + 3)}}
		if u := c.unknown(conv(i), occs, now); len(u) != 1 || u[0].Key != key(i+3) {
			t.Fatalf("conversation %d: unknown %v, want only %s", i, u, key(i+3))
		}
	}
	c = nil
	deadline := time.Now().Add(10 * time.Second)
	for mapped.Load() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes still mapped after the cache was collected (%d before it)", mapped.Load(), before)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}
