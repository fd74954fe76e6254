package pipeline

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// TestKnownCacheKeys learns a conversation's keys in steps, past the few
// an entry keeps in its first place, with a key of no code (too long a
// name, another time form) and the empty key, and checks after each step
// that exactly the learned keys are known, that the byte count stays as it
// is when no key is new and never shrinks, and that a UUID conversation
// keeps its coded keys in its entry alone (no bytes beyond it) until a key
// of no code moves them to the slab.
func TestKnownCacheKeys(t *testing.T) {
	now := time.Now()
	key := func(i int) string { return fmt.Sprintf("FlowMetric_Step%02d(2026-12-06T02:00:00.%03dZ)", i, i) }
	long := strings.Repeat("L", 300)
	odd := "FlowMetric_Step01(2026-12-06T02:00:00.001+00:00)" // the same time as key(1), another text
	steps := []struct {
		name   string
		learn  []string
		inline bool // a UUID conversation's keys are in its entry
	}{
		{"first keys", []string{key(0), key(1), key(1)}, true},
		{"known again", []string{key(0), key(1)}, true},
		{"up to the room", []string{key(2), key(3), key(4), key(5), key(6), key(7)}, true},
		{"past the room", []string{key(7), key(8), key(9)}, true},
		{"the end", []string{""}, true},
		{"another form", []string{odd}, false},
		{"a long key", []string{long}, false},
		{"more codes", []string{key(10)}, false},
	}
	for _, conv := range []string{"conv", "0c06df18-0001-4001-810d-38c7c42b8f0e"} {
		c := newKnownCache(10, 1<<20, time.Hour)
		learned := map[string]bool{}
		var prev int64
		for _, st := range steps {
			fresh := false
			for _, k := range st.learn {
				fresh = fresh || !learned[k]
				learned[k] = true
			}
			c.learn(conv, st.learn, now)
			_, got := c.size()
			if got < prev || !fresh && got != prev {
				t.Errorf("%s: %d bytes after %d; new keys: %v", st.name, got, prev, fresh)
			}
			if id := c.id(conv); id.uuid {
				e, _ := c.find(&id)
				inline := c.ent(e).keys[0] != spilled
				if inline != st.inline || inline && got != entryCost+c.names.bytes {
					t.Errorf("%s: keys in the entry %v (want %v), %d bytes", st.name, inline, st.inline, got)
				}
			}
			prev = got
			var probe []flowmetrics.Occurrence
			for i := range 12 {
				probe = append(probe, flowmetrics.Occurrence{Key: key(i)})
			}
			probe = append(probe, flowmetrics.Occurrence{Key: long}, flowmetrics.Occurrence{Key: ""}, flowmetrics.Occurrence{Key: odd})
			var gotUnknown []string
			for _, o := range c.unknown(conv, probe, now) {
				gotUnknown = append(gotUnknown, o.Key)
			}
			var wantUnknown []string
			for _, o := range probe {
				if !learned[o.Key] {
					wantUnknown = append(wantUnknown, o.Key)
				}
			}
			if strings.Join(gotUnknown, ",") != strings.Join(wantUnknown, ",") {
				t.Errorf("%s %s: unknown keys: got %q, want %q", conv, st.name, gotUnknown, wantUnknown)
			}
		}
	}
}

// TestKnownCacheEvictsLeastRecent: past its conversations, the cache
// evicts one not used since it was learned, and a use protects one.
func TestKnownCacheEvictsLeastRecent(t *testing.T) {
	now := time.Now()
	c := newKnownCache(2, 1<<20, time.Hour)
	occ := []flowmetrics.Occurrence{{Key: "k"}}
	c.learn("a", []string{"k"}, now)
	c.learn("b", []string{"k"}, now)
	c.unknown("a", occ, now) // a is used; b is not
	c.learn("c", []string{"k"}, now)
	for conv, known := range map[string]bool{"a": true, "b": false, "c": true} {
		if got := len(c.unknown(conv, occ, now)) == 0; got != known {
			t.Errorf("conversation %s known: got %v, want %v", conv, got, known)
		}
	}
	if n, _ := c.size(); n != 2 {
		t.Errorf("conversations: got %d, want 2", n)
	}
}

// BenchmarkKnownCache holds conversations shaped like a contact centre's
// (UUID ids, three keys of a few flows, times in milliseconds) in a cache
// large enough for all, and reports the heap they take per conversation
// (heap-B/conv, measured after a collection), the bytes the cache counts
// against its bound (cache-B/conv) and the time of a lookup of an
// event's keys (ns/op).
func BenchmarkKnownCache(b *testing.B) {
	const convs = 200_000
	flows := []string{"CustomerRouting", "Billing Main", "Après Vente", "Bot.Intent-Router"}
	metrics := []string{"Start", "LanguageSelected", "Authenticated", "BalanceHeard", "PaymentStarted", "SurveyOffered"}
	now := time.Now()
	conv := func(i int) string {
		return fmt.Sprintf("%08x-%04x-4001-810d-38c7c42b8f0e", i*2654435761%(1<<32), i%65536)
	}
	keys := func(i int) []string {
		out := make([]string, 3)
		for j := range out {
			ms := int64(1793491213427) + int64(i)*5000 + int64(j)*1250
			out[j] = fmt.Sprintf("%sMetric_%s(%s)", flows[(i+j)%len(flows)], metrics[(i*7+j)%len(metrics)], time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z"))
		}
		return out
	}
	ids := make([]string, convs)
	all := make([][]string, convs)
	for i := range convs {
		ids[i], all[i] = conv(i), keys(i)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := newKnownCache(2*convs, 1<<30, time.Hour)
	for i := range convs {
		// Learned as events bring them: one key, then the next two.
		c.learn(ids[i], all[i][:1], now)
		c.learn(ids[i], all[i][1:], now)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	n, bytes := c.size()
	if n != convs {
		b.Fatalf("cache holds %d conversations, want %d", n, convs)
	}
	occs := make([][]flowmetrics.Occurrence, convs)
	for i := range convs {
		for _, k := range all[i] {
			occs[i] = append(occs[i], flowmetrics.Occurrence{Key: k})
		}
	}
	b.ResetTimer()
	for i := range b.N {
		if len(c.unknown(ids[i%convs], occs[i%convs], now)) != 0 {
			b.Fatal("known keys unknown")
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/convs, "heap-B/conv")
	b.ReportMetric(float64(bytes)/convs, "cache-B/conv")
	runtime.KeepAlive(ids)
}

// BenchmarkKnownCacheBatch looks up the keys of batches of 2,000 events of
// conversations taken at random from 500,000 held (as a replay of a
// shuffled archive does), one event after the other, with and without
// warming the batch's memory first (ns/op is per event).
func BenchmarkKnownCacheBatch(b *testing.B) {
	const convs, batch = 500_000, 2000
	now := time.Now()
	c := newKnownCache(2*convs, 1<<30, time.Hour)
	ids := make([]string, convs)
	names := make([][]string, convs)
	for i := range convs {
		ids[i] = fmt.Sprintf("%08x-%04x-4001-810d-38c7c42b8f0e", uint32(i*2654435761), i%65536)
		for j := range 3 {
			names[i] = append(names[i], fmt.Sprintf("FlowMetric_M%d(2026-12-06T02:%02d:%02d.%03dZ)", (i+j)%7, i%60, j, i%1000))
		}
		c.learn(ids[i], names[i], now)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	order := make([]int, batch)
	batchIDs := make([]string, batch)
	for _, warm := range []bool{false, true} {
		b.Run(fmt.Sprintf("warm=%v", warm), func(b *testing.B) {
			var buf []string
			for i := 0; i < b.N; i += batch {
				b.StopTimer()
				for j := range order {
					order[j] = rng.IntN(convs)
					batchIDs[j] = ids[order[j]]
				}
				b.StartTimer()
				if warm {
					c.warm(len(batchIDs), func(i int) (string, bool) { return batchIDs[i], true })
				}
				for _, n := range order {
					if _, known := c.unknownNames(ids[n], names[n], now, buf); known != 3 {
						b.Fatalf("known %d, want 3", known)
					}
				}
			}
		})
	}
}

// TestKnownCacheWarmChangesNothing warms a cache that has evicted, grown
// and compacted, with ids it holds, ids it evicted, ids of other forms
// and repeats, and checks that its entries (their use marks included),
// index, bytes and clock are what they were.
func TestKnownCacheWarmChangesNothing(t *testing.T) {
	now := time.Now()
	c := newKnownCache(1_000_000, 256<<10, time.Hour)
	conv := func(i int) string { return fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", i) }
	var ids []string
	for i := range 5000 {
		keys := []string{fmt.Sprintf("FlowMetric_M%d(2026-12-06T02:00:%02d.000Z)", i%5, i%60)}
		if i%7 == 0 {
			keys = append(keys, fmt.Sprintf("FlowMetric_M%d(2026-12-06T02:00:00+00:00)", i)) // kept as bytes
		}
		id := conv(i)
		if i%11 == 0 {
			id = fmt.Sprintf("conv-%d", i)
		}
		c.learn(id, keys, now)
		ids = append(ids, id)
	}
	ids = append(ids, "", "never-seen", ids[4999], ids[4999], strings.Repeat("x", 2000))
	snapshot := func() string {
		var b strings.Builder
		fmt.Fprintf(&b, "%v %d %d %d %d %d %v %v", c.index, c.count, c.free, c.n, c.hand, c.base, c.slab.used, c.slab.garbage)
		for e := int32(1); e < c.n; e++ {
			fmt.Fprintf(&b, " %v", *c.ent(e))
			if c.ent(e).keys[0] == spilled {
				fmt.Fprintf(&b, " %x", c.blob(e))
			}
		}
		return b.String()
	}
	before := snapshot()
	if n, _ := c.size(); n == 5000 || n < 100 {
		t.Fatalf("the cache holds %d conversations: the test needs it to have evicted some", n)
	}
	// Every other id through the function's false: not looked at.
	c.warm(len(ids), func(i int) (string, bool) { return ids[i], i%2 == 0 })
	c.warm(len(ids), func(i int) (string, bool) { return ids[i], true })
	if after := snapshot(); after != before {
		t.Error("warm changed the cache")
	}
}
