package pipeline

import (
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// oddKeys are keys built to look like others: the same time written
// another way, impossible dates, a "(" in the metric, no parentheses, the
// empty key, names too long to intern, and bytes that are not UTF-8.
var oddKeys = []string{
	"FlowMetric_A(2026-12-06T02:00:00Z)",
	"FlowMetric_A(2026-12-06T02:00:00.000Z)",
	"FlowMetric_A(2026-12-06T02:00:00.0Z)",
	"FlowMetric_A(2026-12-06T02:00:00.000000Z)",
	"FlowMetric_A(2026-12-06T02:00:00+00:00)",
	"FlowMetric_A(2026-12-06T02:00:00z)",
	"FlowMetric_A(2026-12-06t02:00:00Z)",
	"FlowMetric_A(2026-12-06T01:00:00-01:00)",
	"FlowMetric_A(2026-12-06T02:00:60Z)",
	"FlowMetric_A(2026-02-29T02:00:00Z)",
	"FlowMetric_A(2026-03-01T02:00:00Z)",
	"FlowMetric_A(2024-02-29T02:00:00Z)",
	"FlowMetric_A(2026-13-01T02:00:00Z)",
	"FlowMetric_A(1969-12-31T23:59:59.999Z)",
	"FlowMetric_A(1970-01-01T00:00:00.000Z)",
	"FlowMetric_A(3084-12-31T23:59:59.999Z)",
	"FlowMetric_A(9999-12-31T23:59:59.999Z)",
	"FlowMetric_A(2026-12-06T02:00:00.001Z)",
	"FlowMetric_A(2026-12-06T02:00:01Z)",
	"FlowMetric_B(2026-12-06T02:00:00Z)",
	"FlowMetric_A(x)(2026-12-06T02:00:00Z)",
	"FlowMetric_A(x(2026-12-06T02:00:00Z)",
	"FlowMetric_A(2026-12-06T02:00:00Z",
	"FlowMetric_A 2026-12-06T02:00:00Z",
	"(2026-12-06T02:00:00Z)",
	"()",
	"",
	"FlowMetric_\xff(2026-12-06T02:00:00Z)",
	strings.Repeat("N", 600) + "Metric_A(2026-12-06T02:00:00Z)",
	strings.Repeat("N", 601) + "Metric_A(2026-12-06T02:00:00Z)",
	strings.Repeat("K", 100_000),
}

// oddIDs are conversation ids that a UUID form could confuse: upper case,
// one digit off, no dashes, dashes elsewhere, long, empty.
var oddIDs = []string{
	"0c06df18-0001-4001-810d-38c7c42b8f0e",
	"0C06DF18-0001-4001-810D-38C7C42B8F0E",
	"0c06df18-0001-4001-810d-38c7c42b8f0f",
	"0c06df1800014001810d38c7c42b8f0e",
	"0c06df180-001-4001-810d-38c7c42b8f0e",
	"0c06df18-0001-4001-810d-38c7c42b8f0e ",
	"0c06df18-0001-4001-810d-38c7c42b8g0e",
	"conv-1",
	"conv-10",
	"",
	strings.Repeat("i", 256),
	strings.Repeat("i", 2000),
}

// TestKnownCacheExact learns random subsets of odd keys for odd
// conversations and checks, after each step, that the cache knows no key
// it was not told for that conversation (it may know fewer: a miss asks
// the store), and that the keys of the usual forms it was told are known.
func TestKnownCacheExact(t *testing.T) {
	now := time.Now()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, bound := range []int64{1 << 30, 64 << 10} {
		c := newKnownCache(1_000_000, bound, time.Hour)
		told := map[string]map[string]bool{}
		for step := range 400 {
			conv := oddIDs[rng.IntN(len(oddIDs))]
			var keys []string
			for range 1 + rng.IntN(6) {
				keys = append(keys, oddKeys[rng.IntN(len(oddKeys))])
			}
			c.learn(conv, keys, now)
			if told[conv] == nil {
				told[conv] = map[string]bool{}
			}
			for _, k := range keys {
				told[conv][k] = true
			}
			for _, id := range oddIDs {
				for _, k := range oddKeys {
					known := len(c.unknown(id, []flowmetrics.Occurrence{{Key: k}}, now)) == 0
					if known && !told[id][k] {
						t.Fatalf("bound %d step %d: %.40q known for %.40q, never told", bound, step, k, id)
					}
					if bound == 1<<30 && !known && told[id][k] && len(id) <= maxCachedID && len(k) <= maxName {
						t.Fatalf("bound %d step %d: %.40q told for %.40q, not known", bound, step, k, id)
					}
				}
			}
		}
		if n, b := c.size(); b > bound {
			t.Errorf("bound %d: %d conversations in %d bytes", bound, n, b)
		}
	}
}

// TestKnownCacheNameTableFull: once the name table is full, keys of new
// names are kept as their bytes (at most maxRaw of them a conversation),
// and still no key is known that was not told, nor a key of an old name
// at another time.
func TestKnownCacheNameTableFull(t *testing.T) {
	now := time.Now()
	c := newKnownCache(1000, 1<<20, time.Hour)
	c.names.max = int64(3 * (nameCost + len("FlowMetric_M0000")))
	key := func(name, sec int) string { return fmt.Sprintf("FlowMetric_M%04d(2026-12-06T02:00:%02dZ)", name, sec) }
	var told []string
	for n := range 50 {
		told = append(told, key(n, 1))
	}
	c.learn("conv", told, now)
	if len(c.names.ids) != 3 {
		t.Fatalf("name table holds %d names, want 3", len(c.names.ids))
	}
	for n := range 60 {
		for sec := range 3 {
			k := key(n, sec)
			known := len(c.unknown("conv", []flowmetrics.Occurrence{{Key: k}}, now)) == 0
			wantKnown := sec == 1 && n < 3+maxRaw // three coded, then maxRaw kept as bytes
			if known != wantKnown {
				t.Errorf("%s: known %v, want %v", k, known, wantKnown)
			}
			if len(c.unknown("other", []flowmetrics.Occurrence{{Key: k}}, now)) == 0 {
				t.Errorf("%s known for a conversation never told", k)
			}
		}
	}
}

// TestKnownCacheHashCollisions finds conversation ids whose hashes are
// equal (and so share their index slot): two UUIDs, a UUID and another
// id, two other ids. It checks that each knows only its own keys, and that
// either stays found when the other is evicted.
func TestKnownCacheHashCollisions(t *testing.T) {
	now := time.Now()
	uuid := func(i int) string { return fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", i) }
	other := func(i int) string { return fmt.Sprintf("conv-%d", i) }
	for _, kind := range []struct {
		name   string
		ia, ib func(int) string
	}{{"two UUIDs", uuid, uuid}, {"a UUID and another id", uuid, other}, {"two other ids", other, other}} {
		t.Run(kind.name, func(t *testing.T) {
			c := newKnownCache(2, 1<<30, time.Hour)
			seenA, seenB := map[uint32]string{}, map[uint32]string{}
			var a, b string
			for i := 0; a == ""; i++ {
				x, y := kind.ia(i), kind.ib(i)
				hx, hy := uint32(maphash.String(c.seed, x)), uint32(maphash.String(c.seed, y))
				if o, ok := seenB[hx]; ok && o != x {
					a, b = x, o
				} else if o, ok := seenA[hy]; ok && o != y {
					a, b = o, y
				}
				seenA[hx], seenB[hy] = x, y
			}
			t.Logf("%q and %q share hash %08x", a, b, uint32(maphash.String(c.seed, a)))
			ka := []flowmetrics.Occurrence{{Key: "FlowMetric_A(2026-12-06T02:00:00Z)"}}
			kb := []flowmetrics.Occurrence{{Key: "FlowMetric_B(2026-12-06T02:00:00Z)"}}
			c.learn(a, []string{ka[0].Key}, now)
			c.learn(b, []string{kb[0].Key}, now)
			check := func(when string, aHeld, bHeld bool) {
				t.Helper()
				for _, x := range []struct {
					conv       string
					own, other []flowmetrics.Occurrence
					held       bool
				}{{a, ka, kb, aHeld}, {b, kb, ka, bHeld}} {
					if got := len(c.unknown(x.conv, x.own, now)) == 0; got != x.held {
						t.Errorf("%s: %q knows its key: %v, want %v", when, x.conv, got, x.held)
					}
					if len(c.unknown(x.conv, x.other, now)) == 0 {
						t.Errorf("%s: %q knows the other's key", when, x.conv)
					}
				}
			}
			check("both held", true, true)
			c.learn("third", []string{ka[0].Key}, now) // evicts a, the least recent
			check("a evicted", false, true)
			c.unknown("third", ka, now)          // more recent than b
			c.learn(a, []string{ka[0].Key}, now) // evicts b
			check("b evicted", true, false)
		})
	}
}

// TestKnownCacheAgainstModel runs random learns and lookups over many
// conversations, with few enough held that entries are evicted and the
// index deletes all the time, and compares what is held with a model LRU
// of the conversations.
func TestKnownCacheAgainstModel(t *testing.T) {
	now := time.Now()
	rng := rand.New(rand.NewPCG(3, 4))
	const held = 300
	c := newKnownCache(held, 1<<30, time.Hour)
	var lru []string // most recent last
	use := func(conv string) {
		for i, x := range lru {
			if x == conv {
				lru = append(lru[:i], lru[i+1:]...)
				break
			}
		}
		lru = append(lru, conv)
		if len(lru) > held {
			lru = lru[1:]
		}
	}
	inModel := func(conv string) bool {
		for _, x := range lru {
			if x == conv {
				return true
			}
		}
		return false
	}
	key := []flowmetrics.Occurrence{{Key: "FlowMetric_A(2026-12-06T02:00:00.123Z)"}}
	for step := range 20_000 {
		n := rng.IntN(1000)
		conv := fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", n)
		if n%3 == 0 {
			conv = fmt.Sprintf("conv-%d", n)
		}
		if rng.IntN(2) == 0 {
			c.learn(conv, []string{key[0].Key}, now)
			use(conv)
			continue
		}
		known := len(c.unknown(conv, key, now)) == 0
		if known != inModel(conv) {
			t.Fatalf("step %d: %s known %v, model %v", step, conv, known, inModel(conv))
		}
		if known {
			use(conv)
		}
	}
	if n, _ := c.size(); n != len(lru) {
		t.Errorf("cache holds %d conversations, model %d", n, len(lru))
	}
}

// TestKnownCacheCompacts learns far more conversations than the cache's
// bytes hold, each in several steps so entries move in the slab, and
// checks that the count stays within the bound, the slab's chunks stay
// within a few of what the count says, and the recent conversations are
// known.
func TestKnownCacheCompacts(t *testing.T) {
	now := time.Now()
	const bound = 2 << 20
	c := newKnownCache(1_000_000, bound, time.Hour)
	key := func(i int) string { return fmt.Sprintf("FlowMetric_M%d(2026-12-06T02:00:%02d.000Z)", i%7, i%60) }
	conv := func(i int) string { return fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", i) }
	for i := range 200_000 {
		for step := range 3 {
			c.learn(conv(i), []string{key(i + step), key(i + step + 1)}, now)
		}
		if _, b := c.size(); b > bound {
			t.Fatalf("conversation %d: %d bytes, bound %d", i, b, bound)
		}
	}
	chunks := 0
	for _, ch := range c.slab.chunks {
		if ch != nil {
			chunks++
		}
	}
	n, b := c.size()
	t.Logf("%d conversations in %d bytes (%d a conversation), %d chunks of %d", n, b, b/int64(n), chunks, chunkSize)
	if int64(chunks-2)*chunkSize > bound {
		t.Errorf("%d chunks of %d bytes for a bound of %d", chunks, chunkSize, bound)
	}
	for i := 200_000 - 100; i < 200_000; i++ {
		var occs []flowmetrics.Occurrence
		for step := range 4 {
			occs = append(occs, flowmetrics.Occurrence{Key: key(i + step)})
		}
		if u := c.unknown(conv(i), occs, now); len(u) != 0 {
			t.Fatalf("conversation %d: %d of its keys unknown", i, len(u))
		}
	}
}
