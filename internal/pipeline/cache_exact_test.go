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
			c.learn("third", []string{ka[0].Key}, now) // evicts a: both were used, and the hand comes to it first
			check("a evicted", false, true)
			c.unknown("third", ka, now)          // more recent than b
			c.learn(a, []string{ka[0].Key}, now) // evicts b
			check("b evicted", true, false)
		})
	}
}

// TestKnownCacheAgainstModel runs random learns and lookups over many
// conversations, with few enough held that entries are evicted and the
// index deletes all the time, and compares what is held with a model of
// the clock in plain slices and a map: the entries a conversation takes
// (a free one, the last freed first, else a new one), their use marks and
// the hand. After every step each conversation is known exactly when the
// model holds it.
func TestKnownCacheAgainstModel(t *testing.T) {
	now := time.Now()
	rng := rand.New(rand.NewPCG(3, 4))
	const held = 300
	c := newKnownCache(held, 1<<30, time.Hour)
	var (
		slots = []string{""} // entry -> conversation; slot 0 unused
		used  = []bool{false}
		at    = map[string]int{}
		free  []int
		hand  int
	)
	evict := func(keep int) {
		for {
			hand++
			if hand >= len(slots) {
				hand = 1
			}
			if slots[hand] == "" || hand == keep {
				continue
			}
			if used[hand] {
				used[hand] = false
				continue
			}
			delete(at, slots[hand])
			slots[hand] = ""
			free = append(free, hand)
			return
		}
	}
	learn := func(conv string) {
		if e, ok := at[conv]; ok {
			used[e] = true
			return
		}
		var e int
		if n := len(free); n > 0 {
			e, free = free[n-1], free[:n-1]
		} else {
			slots, used = append(slots, ""), append(used, false)
			e = len(slots) - 1
		}
		slots[e], used[e], at[conv] = conv, false, e
		if len(at) > held {
			evict(e)
		}
	}
	key := []flowmetrics.Occurrence{{Key: "FlowMetric_A(2026-12-06T02:00:00.123Z)"}}
	convs := make([]string, 1000)
	for n := range convs {
		convs[n] = fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", n)
		if n%3 == 0 {
			convs[n] = fmt.Sprintf("conv-%d", n)
		}
	}
	for step := range 20_000 {
		conv := convs[rng.IntN(len(convs))]
		if rng.IntN(2) == 0 {
			c.learn(conv, []string{key[0].Key}, now)
			learn(conv)
		} else {
			known := len(c.unknown(conv, key, now)) == 0
			e, inModel := at[conv]
			if known != inModel {
				t.Fatalf("step %d: %s known %v, model %v", step, conv, known, inModel)
			}
			if known {
				used[e] = true
			}
		}
		if step%1000 == 999 {
			// Every conversation, without marking it used.
			for _, conv := range convs {
				id := c.id(conv)
				e, _ := c.find(&id)
				if _, inModel := at[conv]; (e != 0) != inModel {
					t.Fatalf("step %d: %s held %v, model %v", step, conv, e != 0, inModel)
				}
			}
		}
	}
	if n, _ := c.size(); n != len(at) {
		t.Errorf("cache holds %d conversations, model %d", n, len(at))
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
	// Ids that are not UUIDs, so that every conversation is kept in the slab.
	conv := func(i int) string { return fmt.Sprintf("conv-%08x", i) }
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

// TestKnownCacheInlineAgainstModel learns, for UUID conversations, random
// sets of coded keys (names enough for tokens of two bytes, times from
// 1970 to 3084 and a few milliseconds apart, the end key) in random steps,
// and checks after each step, against a map of what was told, every told
// key and its near misses (a millisecond either side, the other form, the
// next name): known exactly when told. Entries keep their keys inline
// until they outgrow their room, then in the slab; the test sees both.
func TestKnownCacheInlineAgainstModel(t *testing.T) {
	now := time.Now()
	rng := rand.New(rand.NewPCG(7, 8))
	c := newKnownCache(1_000_000, 1<<30, time.Hour)
	const names = 300
	key := func(name int, ms int64, millis bool) string {
		form := "2006-01-02T15:04:05Z"
		if millis {
			form = "2006-01-02T15:04:05.000Z"
		}
		return fmt.Sprintf("Flow%dMetric_M(%s)", name, time.UnixMilli(ms).UTC().Format(form))
	}
	type k struct {
		name   int
		ms     int64
		millis bool
	}
	const last = 35_659_814_399_999 // 3099-12-31T23:59:59.999Z, past a code's years
	told := map[string]map[k]bool{}
	ended := map[string]bool{}
	inline, spilt := 0, 0
	for step := range 3000 {
		conv := fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", rng.IntN(200))
		if told[conv] == nil {
			told[conv] = map[k]bool{}
		}
		var keys []string
		base := rng.Int64N(last)
		for range 1 + rng.IntN(3) {
			x := k{rng.IntN(names), base + rng.Int64N(2000) - 1000, rng.IntN(4) > 0}
			if rng.IntN(8) == 0 {
				x.ms = rng.Int64N(last)
			}
			x.ms = max(x.ms, 0)
			if !x.millis {
				x.ms -= x.ms % 1000
			}
			keys = append(keys, key(x.name, x.ms, x.millis))
			told[conv][x] = true
		}
		if rng.IntN(20) == 0 {
			keys = append(keys, "")
			ended[conv] = true
		}
		c.learn(conv, keys, now)
		id := c.id(conv)
		e, _ := c.find(&id)
		if c.ent(e).keys[0] == spilled {
			spilt++
		} else {
			inline++
		}
		for x := range told[conv] {
			probes := []k{x, {x.name, x.ms + 1, x.millis}, {x.name, x.ms - 1, x.millis}, {x.name + 1, x.ms, x.millis}, {x.name, x.ms, !x.millis}}
			for _, p := range probes {
				if p.ms < 0 || !p.millis && p.ms%1000 != 0 {
					continue
				}
				s := key(p.name, p.ms, p.millis)
				known := len(c.unknown(conv, []flowmetrics.Occurrence{{Key: s}}, now)) == 0
				// Keys of years past 3084 have no code: kept as bytes, up
				// to maxRaw of them, so they may be unknown.
				if known != told[conv][p] && (known || p.ms < 1<<codeTimeBits) {
					t.Fatalf("step %d: %s of %s known %v, told %v", step, s, conv, known, told[conv][p])
				}
			}
		}
		if known := len(c.unknown(conv, endOcc, now)) == 0; known != ended[conv] {
			t.Fatalf("step %d: the end of %s known %v, told %v", step, conv, known, ended[conv])
		}
	}
	t.Logf("after a learning: %d entries with their keys inline, %d in the slab", inline, spilt)
	if inline < 100 || spilt < 100 {
		t.Errorf("inline %d, in the slab %d: the test needs both", inline, spilt)
	}
}

// TestKnownCacheTimes: an entry is trusted for the cache's time to live
// (at most maxTTL) from its first learning, to the millisecond; a clock
// far ahead moves the base its expiries count from and drops those whose
// time is up; a clock gone back by more than the time to live learns
// nothing; and the store is told of a conversation every so often, never
// later than asked (a clock gone back tells at once).
func TestKnownCacheTimes(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 2, 0, 0, 0, time.UTC)
	const a, b, d = "0c06df18-0001-4001-810d-38c7c42b8f0e", "conv-b", "0c06df18-0001-4001-810d-38c7c42b8f0f"
	known := func(c *knownCache, conv string, at time.Time) bool {
		return len(c.unknown(conv, endOcc, at)) == 0
	}
	c := newKnownCache(100, 1<<20, time.Hour)
	c.learn(a, []string{""}, t0.Add(time.Microsecond))
	if !known(c, a, t0.Add(time.Hour-time.Microsecond)) || known(c, a, t0.Add(time.Hour)) {
		t.Error("an hour's entry not known just before its hour, or known at it")
	}
	c.learn(b, []string{""}, t0.Add(-30*time.Minute)) // back, by less than the hour
	if !known(c, b, t0.Add(29*time.Minute)) || known(c, b, t0.Add(30*time.Minute)) {
		t.Error("an entry learned with the clock back half an hour: wrong expiry")
	}
	c.learn(d, []string{""}, t0.Add(-2*time.Hour)) // back, by more than the hour
	if known(c, d, t0.Add(-2*time.Hour)) {
		t.Error("an entry learned with the clock back two hours is known")
	}

	long := newKnownCache(100, 1<<20, 30*24*time.Hour) // trusted for maxTTL only
	long.learn(a, []string{""}, t0)
	capped := t0.Add(maxTTL * time.Millisecond)
	if !known(long, a, capped.Add(-time.Millisecond)) || known(long, a, capped) {
		t.Error("a month's entry is not trusted for exactly maxTTL")
	}
	// Far ahead: the base moves, a's time is up and it is dropped.
	later := capped.Add(time.Hour)
	long.learn(b, []string{""}, later)
	if n, _ := long.size(); n != 1 || long.base != later.UnixMilli() {
		t.Errorf("after the base moved: %d conversations, base %d, want 1 and %d", n, long.base, later.UnixMilli())
	}
	end := later.Add(maxTTL * time.Millisecond)
	if !known(long, b, end.Add(-time.Millisecond)) || known(long, b, end) {
		t.Error("an entry learned after the base moved: wrong expiry")
	}

	tc := newKnownCache(100, 1<<20, time.Hour)
	tc.learn(a, []string{""}, t0)
	for _, st := range []struct {
		at   time.Duration
		tell bool
	}{{999 * time.Millisecond, false}, {time.Second, true}, {1500 * time.Millisecond, false}, {2 * time.Second, true}, {-10 * time.Second, true}, {-9 * time.Second, true}} {
		if got := tc.tell(a, t0.Add(st.at), time.Second); got != st.tell {
			t.Errorf("tell at %v: %v, want %v", st.at, got, st.tell)
		}
	}
	if tc.tell(b, t0, time.Second) {
		t.Error("told of a conversation the cache does not hold")
	}
}
