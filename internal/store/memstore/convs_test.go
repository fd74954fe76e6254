package memstore

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/flowmetrics/flowmetrics"
)

// TestConvRecordHoldsNoPointer: the records are what the collector would
// otherwise walk, a few hundred thousand of them in a replay.
func TestConvRecordHoldsNoPointer(t *testing.T) {
	var walk func(reflect.Type, string)
	walk = func(typ reflect.Type, path string) {
		switch typ.Kind() {
		case reflect.Struct:
			for i := range typ.NumField() {
				f := typ.Field(i)
				walk(f.Type, path+"."+f.Name)
			}
		case reflect.Array:
			walk(typ.Elem(), path+"[]")
		case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		default:
			t.Errorf("%s is a %s: the collector would scan every record", path, typ.Kind())
		}
	}
	walk(reflect.TypeFor[conv](), "conv")
	walk(reflect.TypeFor[dueItem](), "dueItem")
}

func occs(keys ...string) []flowmetrics.Occurrence {
	out := make([]flowmetrics.Occurrence, len(keys))
	for i, k := range keys {
		out[i].Key = k
	}
	return out
}

// model is what convs must hold, kept in maps.
type model map[string][]string

// check compares every conversation of m with t, and t's counts.
func (m model) check(t *testing.T, c *convs) {
	t.Helper()
	if c.n != len(m) {
		t.Fatalf("holds %d conversations, want %d", c.n, len(m))
	}
	for id, keys := range m {
		i, ok := c.find(id, c.hash(id))
		if !ok {
			t.Fatalf("conversation %q not found", id)
		}
		gotID, gotKeys := c.strings(i)
		if gotID != id {
			t.Fatalf("record of %q holds id %q", id, gotID)
		}
		if !equalSets(gotKeys, keys) {
			t.Fatalf("%q holds keys %q, want %q", id, gotKeys, keys)
		}
		bytes := 0
		for _, k := range keys {
			bytes += len(k)
			if !c.has(i, k) {
				t.Fatalf("%q does not have its key %q", id, k)
			}
		}
		if c.has(i, "absent") || c.has(i, id) {
			t.Fatalf("%q has a key it was never given", id)
		}
		// held says what has says, of keys held, absent and repeated.
		asked := append(append([]string{"absent", id}, keys...), keys...)
		var want uint64
		for j, k := range asked[:min(len(asked), 64)] {
			if c.has(i, k) {
				want |= 1 << j
			}
		}
		if got := c.held(i, asked); got != want {
			t.Fatalf("%q: held %b of %q, want %b", id, got, asked, want)
		}
		if got := c.size(i); got.Keys != len(keys) || got.Bytes != bytes {
			t.Fatalf("%q: size %+v, want %d keys, %d bytes", id, got, len(keys), bytes)
		}
	}
	live := 0
	for i := range c.recs {
		live += int(c.rec(i).room)
	}
	if live != c.arena.live {
		t.Fatalf("arena counts %d live bytes, the records %d", c.arena.live, live)
	}
}

func equalSets(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestConvsAgainstModel adds conversations and keys, starts some over and
// removes others at random, many times past a compaction of the arena and
// a growth of the table, and compares every conversation with a model.
func TestConvsAgainstModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	c := newConvs()
	m := model{}
	var ids []string
	for step := range 100_000 {
		switch op := rng.IntN(10); {
		case op < 3 || len(ids) == 0: // a new conversation
			id := fmt.Sprintf("%08x-%d", rng.Uint32(), step)
			keys := randomKeys(rng, rng.IntN(3))
			c.add(id, c.hash(id), occs(keys...))
			m[id] = keys
			ids = append(ids, id)
		case op < 8: // new keys for one held
			id := ids[rng.IntN(len(ids))]
			i, _ := c.find(id, c.hash(id))
			var fresh []string
			for _, k := range randomKeys(rng, 1+rng.IntN(3)) {
				if !slices.Contains(m[id], k) && !slices.Contains(fresh, k) {
					fresh = append(fresh, k)
				}
			}
			c.addKeys(i, occs(fresh...))
			m[id] = append(m[id], fresh...)
		case op < 9: // one starts over
			id := ids[rng.IntN(len(ids))]
			i, _ := c.find(id, c.hash(id))
			keys := randomKeys(rng, rng.IntN(2))
			c.restart(i, occs(keys...))
			m[id] = keys
		default: // one is removed
			k := rng.IntN(len(ids))
			id := ids[k]
			ids[k] = ids[len(ids)-1]
			ids = ids[:len(ids)-1]
			i, _ := c.find(id, c.hash(id))
			c.remove(i)
			delete(m, id)
			if _, ok := c.find(id, c.hash(id)); ok {
				t.Fatalf("removed %q is still found", id)
			}
		}
		if step%25_000 == 0 {
			m.check(t, &c)
		}
	}
	m.check(t, &c)
	if c.arena.compactions == 0 {
		t.Errorf("the arena was never compacted: the test does not cover it")
	}
	if len(c.slots) <= minSlots {
		t.Errorf("the table never grew: the test does not cover it")
	}
}

// randomKeys returns n keys of the lengths a conversation may have: most
// short, some past a one-byte length (128 bytes) or a two-byte one.
func randomKeys(rng *rand.Rand, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		size := 40 + rng.IntN(40)
		switch rng.IntN(400) {
		case 0:
			size = 20_000
		case 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16:
			size = 128 + rng.IntN(200)
		}
		k := fmt.Sprintf("F Metric_M%d(2026-11-01T00:00:%02d.000Z)", rng.IntN(1000), rng.IntN(60))
		keys[i] = k + strings.Repeat("x", max(0, size-len(k)))
	}
	return keys
}

// TestConvsBoundedUnderChurn holds about the same conversations while
// they come and go, each growing key by key: the memory stays that of
// the conversations held, however many came before.
func TestConvsBoundedUnderChurn(t *testing.T) {
	const held = 5000
	c := newConvs()
	key := func(j int) string { return fmt.Sprintf("CustomerRouting Metric_Step%d(2026-11-01T00:00:00.000Z)", j) }
	var window []uint32
	slots := 0
	for n := range 100 * held {
		id := fmt.Sprintf("%08x-0001-4001-810d-38c7c42b8f0e", n)
		i := c.add(id, c.hash(id), occs(key(0)))
		for j := 1; j < 4; j++ {
			c.addKeys(i, occs(key(j)))
		}
		window = append(window, i)
		if len(window) > held {
			c.remove(window[0])
			window = window[1:]
		}
		if size, bound := c.arena.size(), c.arena.live+max(c.arena.live/4, minCompact)+chunkSize; size > bound {
			t.Fatalf("after %d conversations (%d held): an arena of %d bytes for %d live (at most %d)", n+1, held, size, c.arena.live, bound)
		}
		if n == held {
			slots = len(c.slots)
		}
		if n > held && len(c.slots) > slots {
			t.Fatalf("after %d conversations (%d held): %d table slots, %d once %d were held", n+1, held, len(c.slots), slots, held)
		}
	}
	if c.recs > held+1 {
		t.Errorf("%d records for %d conversations held", c.recs, held)
	}
	if c.arena.compactions == 0 {
		t.Errorf("the arena was never compacted: the test does not cover it")
	}
}

// BenchmarkHasInFullConversation looks keys up in a conversation that
// holds as many keys as one may (flowmetrics.MaxConversationKeys), all of
// the same length: the scan a lookup costs at worst, as each compares a
// byte of the key's hash before its bytes.
func BenchmarkHasInFullConversation(b *testing.B) {
	c := newConvs()
	keys := make([]string, flowmetrics.MaxConversationKeys)
	for j := range keys {
		keys[j] = fmt.Sprintf("CustomerRouting Metric_Step%03d(2026-11-01T00:00:00.000Z)", j)
	}
	i := c.add("c", c.hash("c"), occs(keys...))
	b.ResetTimer()
	for n := 0; b.Loop(); n++ {
		if !c.has(i, keys[n%len(keys)]) {
			b.Fatal("a held key is not found")
		}
	}
}

// TestWarmReadsWhatFindReads: warm's passes read, for a conversation the
// table holds (at its home slot or further on), the record find returns
// and that record's block, and nothing for a conversation the table does
// not hold. (warm changes nothing; had it read other memory, a claim would
// only be slower.)
func TestWarmReadsWhatFindReads(t *testing.T) {
	c := newConvs()
	var ids []string
	for i := range 5000 {
		id := fmt.Sprintf("conv-%d", i)
		ids = append(ids, id)
		c.add(id, c.hash(id), occs(fmt.Sprintf("F Metric_A%d(2026-11-01T00:00:00.000Z)", i%7)))
	}
	ids = append(ids, "absent-1", "absent-2")
	var w warmed
	warmedHeld, shared := 0, 0
	for start := 0; start < len(ids); start += warmGroup {
		group := ids[start:min(start+warmGroup, len(ids))]
		c.warm(&w, func(j int) string { return group[j] }, len(group))
		for j, id := range group {
			if w.hs[j] != c.hash(id) {
				t.Fatalf("%q: hash %x, want %x", id, w.hs[j], c.hash(id))
			}
			i, held := c.find(id, w.hs[j])
			if w.rec[j] == 0 {
				if held {
					t.Errorf("%q: held as record %d, warm read none", id, i)
				}
				continue
			}
			if !held || w.rec[j]-1 != i {
				// Only another conversation of the same 32-bit hash,
				// filed before it, may be read instead.
				other := string(c.idBytes(w.rec[j] - 1))
				if uint32(c.hash(other)) != uint32(w.hs[j]) || other == id {
					t.Fatalf("%q: warmed record %d (%q), find gives %d (held %v)", id, w.rec[j]-1, other, i, held)
				}
				shared++
				continue
			}
			if r := c.rec(i); w.chunk[j] != r.chunk || w.pos[j] != r.pos || w.used[j] != r.used {
				t.Fatalf("%q: warmed block %d/%d/%d, the record's is %d/%d/%d", id, w.chunk[j], w.pos[j], w.used[j], r.chunk, r.pos, r.used)
			}
			warmedHeld++
		}
	}
	// Every held conversation, but for one of a 32-bit hash another shares
	// (most seldom).
	if warmedHeld+shared != 5000 || shared > 2 {
		t.Errorf("warm read the records of %d of 5000 held conversations (%d of a shared hash)", warmedHeld, shared)
	}
}
