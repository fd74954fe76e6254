package pipeline

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

func names(flow string, from, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%sMetric_M%05d(2026-11-20T09:31:48Z)", flow, from+i)
	}
	return out
}

// TestRefusedClaimsAreRejectedAndCounted: a conversation id over
// flowmetrics.MaxConversationID, and an event whose new keys would take
// its conversation past MaxConversationKeys, are rejected records (named,
// counted by reason, not cached); the rest of the batch is claimed.
func TestRefusedClaimsAreRejectedAndCounted(t *testing.T) {
	sink := &recordingSink{name: "rec"}
	p, m := newTest(t, Config{}, sink)
	ctx := context.Background()
	for from := 0; from < flowmetrics.MaxConversationKeys; from += 128 {
		if _, err := p.Ingest(ctx, []genesys.Record{event("full", names("F", from, 128)...)}); err != nil {
			t.Fatal(err)
		}
	}
	good := "GMetric_A(2026-11-20T09:31:48Z)"
	recs := []genesys.Record{
		event(strings.Repeat("x", 5<<20), good),
		event("full", names("F", flowmetrics.MaxConversationKeys, 1)...),
		event("ok", good),
	}
	for i := range recs {
		recs[i].Index, recs[i].Line = i, i+1
	}
	res, err := p.Ingest(ctx, recs)
	if err != nil {
		t.Fatalf("ingest: %v, want the refusals as rejected records", err)
	}
	if res.Read != 3 || res.Accepted != 1 || res.Rejected != 2 || res.Occurrences != 1 {
		t.Errorf("got %+v, want read 3, accepted 1, rejected 2, 1 occurrence", res)
	}
	if len(res.Errors) != 2 || res.Errors[0].Index != 0 || res.Errors[1].Index != 1 ||
		!strings.Contains(res.Errors[0].Error, "conversation id of 5242880 bytes") || !strings.Contains(res.Errors[1].Error, `conversation "full" would hold 513`) {
		t.Errorf("errors %+v, want index 0 (id too long) and 1 (conversation full), each saying why", res.Errors)
	}
	for reason, want := range map[string]float64{flowmetrics.RefusedIDTooLong: 1, flowmetrics.RefusedConversation: 1} {
		if got := testutil.ToFloat64(m.RecordsRejected.WithLabelValues(reason)); got != want {
			t.Errorf("rejected{reason=%s}: got %v, want %v", reason, got, want)
		}
	}
	if got := testutil.ToFloat64(m.RecordsAccepted); got != 4+1 {
		t.Errorf("accepted counter: got %v, want 5 (4 filling, 1 good)", got)
	}
	// Not cached as known: the same event is refused again, not skipped.
	if res, _ := p.Ingest(ctx, recs[1:2]); res.Rejected != 1 {
		t.Errorf("refused event again: got %+v, want it rejected again", res)
	}
}

// TestCacheBytesBounded fills the known-key cache with conversations of
// many long keys, each of its own name (so the name table fills too, and
// the cache keeps keys as their bytes), far beyond its byte bound, and
// measures the peak: the cache's own count never passes CacheBytes, and
// the heap after the flood holds no more than a few times the bound.
func TestCacheBytesBounded(t *testing.T) {
	const bound = 4 << 20
	c := newKnownCache(100_000, bound, time.Hour)
	now := time.Now()
	long := strings.Repeat("L", 380)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var peak int64
	var peakHeap uint64
	const convs, perConv = 2_000, 100 // about 80 MB of keys
	for i := range convs {
		c.learn(fmt.Sprintf("conv-%d", i), names(long, i*perConv, perConv), now)
		if _, b := c.size(); b > peak {
			peak = b
		}
		if i%250 == 249 {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peakHeap = max(peakHeap, ms.HeapAlloc)
		}
	}
	n, b := c.size()
	t.Logf("cache after %d conversations × %d keys of %d bytes: %d conversations, %d bytes (peak %d, bound %d); heap grew at most %.1f MiB",
		convs, perConv, len(names(long, 0, 1)[0]), n, b, peak, bound, float64(peakHeap-min(peakHeap, before.HeapAlloc))/(1<<20))
	if c.names.bytes > c.names.max || len(c.names.ids) == 0 {
		t.Errorf("name table: %d bytes for %d names (bound %d), want it filled to its bound", c.names.bytes, len(c.names.ids), c.names.max)
	}
	if peak > bound {
		t.Errorf("cache peak %d bytes, bound %d", peak, bound)
	}
	if n == 0 || n >= convs {
		t.Errorf("cache holds %d conversations, want some but not all %d", n, convs)
	}
	if grew := peakHeap - min(peakHeap, before.HeapAlloc); grew > 4*bound {
		t.Errorf("heap grew by %d bytes at its peak, more than 4× the cache bound %d", grew, bound)
	}
	// The most recent conversation is still held: the keys it could keep
	// are known.
	var last []flowmetrics.Occurrence
	for _, k := range names(long, (convs-1)*perConv, perConv) {
		last = append(last, flowmetrics.Occurrence{Key: k})
	}
	if len(c.unknown(fmt.Sprintf("conv-%d", convs-1), last, now)) == len(last) {
		t.Error("the last conversation learned is not known")
	}
}
