package memstore

import (
	"encoding/binary"
	"hash/maphash"
	"sync/atomic"
	"unsafe"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// convs holds the store's conversations in memory the garbage collector
// need not scan: records of plain integers, their ids and keys in an
// arena of byte chunks, found through an open-addressing table of
// integers. A replay into the memory store keeps every conversation to its
// end, hundreds of thousands of them; held as maps, strings and pointers,
// the collector walked them all on every cycle. Here the records, the
// chunks and the table (once large) are outside the Go heap, in huge
// pages (offHeap), and the collector has none of them to mark.
//
// Memory follows the conversations held: a record and a table slot each,
// and a block in the arena (its id, then its keys). A block that outgrows
// its room moves to the end of the arena (with room for half as much
// again), and a swept conversation leaves its block behind; once those
// dead bytes pass a quarter of the live ones, the arena is compacted, a
// chunk at a time. So the arena holds at most a quarter more than the
// live blocks (and at least minCompact), the table at most twice the
// records, and the records as many conversations as were ever held at
// once (a swept one's record is reused).
type convs struct {
	seed  maphash.Seed
	slots []uint64 // hash<<32 | record index+1; 0: empty. Linear probing.
	// The records, in pages of a huge page each that are never moved: a
	// slice of them grown by copying faulted its new pages in again and
	// again.
	pages [][]conv
	recs  uint32   // records in pages
	free  []uint32 // records of swept conversations, reused first
	n     int      // conversations held
	arena arena
	mem   *offHeap // where pages, the table once large, and the arena's chunks come from
}

// conv is one conversation's record. Its block in the arena is
// [record index u32][room u32][id][keys…], each key as
// [tag u8][uvarint length][bytes], tag a byte of the key's hash.
type conv struct {
	chunk, pos uint32 // where the block starts
	used, room uint32 // bytes of the block in use, and its length (0: a free record)
	bytes      uint32 // total length of the keys
	nkeys      uint16
	idLen      uint16
	// gen changes each time the record starts a conversation over or is
	// swept: the deadline heap's items of an earlier one are then stale.
	gen     uint32
	changed int64 // unix nanoseconds
	path    store.Path
}

const (
	blockHeader = 8
	minSlots    = 64
	recBytes    = 64                  // a record's size (checked below)
	pageRecs    = hugePage / recBytes // records in a page: a huge page's worth
)

// A record is recBytes long: pageRecs of them fill a huge page.
var (
	_ [recBytes - unsafe.Sizeof(conv{})]byte
	_ [unsafe.Sizeof(conv{}) - recBytes]byte
)

// rec returns record i.
func (t *convs) rec(i uint32) *conv { return &t.pages[i/pageRecs][i%pageRecs] }

func newConvs() convs {
	mem := &offHeap{}
	return convs{seed: maphash.MakeSeed(), slots: make([]uint64, minSlots), mem: mem, arena: arena{mem: mem}}
}

// release gives back the memory of every conversation: t is then empty.
func (t *convs) release() {
	t.mem.freeAll()
	mem := t.mem
	*t = newConvs()
	t.mem, t.arena.mem = mem, mem
}

// newPage returns a page of zeroed records.
func (t *convs) newPage() []conv {
	b := t.mem.alloc(hugePage)
	return unsafe.Slice((*conv)(unsafe.Pointer(unsafe.SliceData(b))), pageRecs)
}

func (t *convs) hash(id string) uint64 { return maphash.String(t.seed, id) }

// find returns the record of conversation id, whose hash is h.
func (t *convs) find(id string, h uint64) (uint32, bool) {
	mask := uint64(len(t.slots) - 1)
	for j := h & mask; ; j = (j + 1) & mask {
		s := t.slots[j]
		if s == 0 {
			return 0, false
		}
		if uint32(s>>32) == uint32(h) {
			if i := uint32(s) - 1; string(t.idBytes(i)) == id {
				return i, true
			}
		}
	}
}

// warmGroup is how many conversations a claim looks up at once (warm):
// enough for the reads of one pass to overlap, few enough that what they
// bring in stays in the processor's caches and TLB until it is used.
const warmGroup = 32

// warmed is what the warm passes of a group found, per conversation: the
// record its home slot files under its hash (+1; 0: none), and where that
// record's block starts.
type warmed struct {
	hs         [warmGroup]uint64
	rec        [warmGroup]uint32
	chunk, pos [warmGroup]uint32
	used       [warmGroup]uint32
	sum        uint64 // what the passes read, so that no read is left out
}

// warm hashes the ids of a group of conversations (at most warmGroup)
// into w.hs and reads, a pass over all of them at a time, the memory find
// and has will read for them: their slots (from the home slot to the first
// that files a record under the same hash), then the records those file,
// then the records' blocks. It changes nothing; it only brings that
// memory into the caches. One lookup's three reads depend on one another
// (a slot names a record, a record its block), and in a store of hundreds
// of thousands of conversations each is at a random place in hundreds of
// megabytes: a cache miss and most often a TLB miss. Looked up one after
// another, each waited for its three in turn; in passes, the reads of
// different conversations are independent and overlap. Only the slots
// past the home one are read in turn, and most are in its cache line; a
// record that shares the id's 32-bit hash but not its id only warms what
// find need not read. (Warming the home slot alone left the conversations
// a probe finds further on, a third of them with the table half full, to
// find's three reads in turn.)
func (t *convs) warm(w *warmed, ids func(int) string, n int) {
	mask := uint64(len(t.slots) - 1)
	for j := range n {
		w.hs[j] = t.hash(ids(j))
	}
	for j := range n {
		// find's probe, up to the first slot filing a record under
		// this hash (or none): nearly always in the home slot's cache
		// line.
		h, r := w.hs[j], uint32(0)
		for k := h & mask; ; k = (k + 1) & mask {
			s := t.slots[k]
			if s == 0 {
				break
			}
			if uint32(s>>32) == uint32(h) {
				r = uint32(s)
				break
			}
		}
		w.rec[j] = r
	}
	for j := range n {
		if r := w.rec[j]; r != 0 {
			c := t.rec(r - 1)
			w.chunk[j], w.pos[j], w.used[j] = c.chunk, c.pos, c.used
		}
	}
	sum := w.sum
	for j := range n {
		if w.rec[j] != 0 {
			b := t.arena.chunks[w.chunk[j]]
			// Each cache line of the block (the chunk starts at one).
			for at := w.pos[j] &^ 63; at < w.pos[j]+w.used[j]; at += 64 {
				sum += uint64(b[at])
			}
		}
	}
	w.sum = sum
}

// touchBlocks reads a byte of each cache line of the blocks of n records
// (rec(j) for j below n), and returns their sum, so that no read is left
// out. It changes nothing; it brings the blocks into the caches before
// they are read in turn. A close reads the blocks of the paths it closes,
// in the order of their deadlines: each at a random place in hundreds of
// megabytes, a cache miss and often a TLB miss. Read one after another,
// each copy waited for its block; read here, a group at a time, their
// misses overlap.
func (t *convs) touchBlocks(rec func(int) uint32, n int) uint64 {
	var sum uint64
	for j := range n {
		c := t.rec(rec(j))
		b := t.arena.chunks[c.chunk]
		for at := c.pos &^ 63; at < c.pos+c.used; at += 64 {
			sum += uint64(b[at])
		}
	}
	return sum
}

// touched keeps what touchBlocks read, so that its reads are not taken
// out as unused.
var touched atomic.Uint64

// block returns record i's block, from its id on, as bytes of the arena.
func (t *convs) block(i uint32) []byte {
	c := t.rec(i)
	return t.arena.chunks[c.chunk][c.pos+blockHeader : c.pos+c.used]
}

func (t *convs) idBytes(i uint32) []byte { return t.block(i)[:t.rec(i).idLen] }

func (t *convs) keyBytes(i uint32) []byte { return t.block(i)[t.rec(i).idLen:] }

// add starts holding conversation id (hash h), which the table does not
// hold, with the keys of occs, and returns its record.
func (t *convs) add(id string, h uint64, occs []flowmetrics.Occurrence) uint32 {
	var i uint32
	if n := len(t.free); n > 0 {
		i, t.free = t.free[n-1], t.free[:n-1]
	} else {
		i = t.recs
		if i%pageRecs == 0 {
			t.pages = append(t.pages, t.newPage())
		}
		t.recs++
	}
	t.rec(i).idLen = uint16(len(id))
	t.write(i, id, nil, occs, false)
	t.n++
	if t.n*4 > len(t.slots)*3 {
		t.grow()
	}
	t.insert(uint32(h), i)
	return i
}

// restart empties record i, an expired conversation, to start it over
// with the keys of occs.
func (t *convs) restart(i uint32, occs []flowmetrics.Occurrence) {
	id := t.idBytes(i)
	c := t.rec(i)
	t.arena.release(c.room)
	*c = conv{idLen: c.idLen, gen: c.gen + 1}
	t.write(i, "", id, occs, false)
}

// addKeys adds the keys of occs, none of which record i holds, each once.
func (t *convs) addKeys(i uint32, occs []flowmetrics.Occurrence) {
	c := t.rec(i)
	need := c.used
	for _, o := range occs {
		need += keySize(o.Key)
	}
	if need > c.room {
		t.arena.release(c.room)
		t.write(i, "", t.block(i), occs, true)
		return
	}
	b := t.arena.chunks[c.chunk][c.pos+c.used : c.pos+c.used : c.pos+need]
	for _, o := range occs {
		b = t.appendKey(b, o.Key)
	}
	c.used = need
	count(c, occs)
}

func count(c *conv, occs []flowmetrics.Occurrence) {
	for _, o := range occs {
		c.nkeys++
		c.bytes += uint32(len(o.Key))
	}
}

// write gives record i a new block: id, the block's start (an id, or an
// id and encoded keys), the keys of occs, and when the block grows, room
// for a half more (many conversations never grow; one that did is likely
// to grow again). Its old block, if any, is released already; start may
// be its bytes, which stay in place until the arena is compacted, which
// write does last, if due.
func (t *convs) write(i uint32, id string, start []byte, occs []flowmetrics.Occurrence, grows bool) {
	used := blockHeader + uint32(len(id)+len(start))
	for _, o := range occs {
		used += keySize(o.Key)
	}
	room := used
	if grows {
		room += used / 2
	}
	chunk, pos, b := t.arena.alloc(room)
	b = binary.LittleEndian.AppendUint32(b, i)
	b = binary.LittleEndian.AppendUint32(b, room)
	b = append(append(b, id...), start...)
	for _, o := range occs {
		b = t.appendKey(b, o.Key)
	}
	c := t.rec(i)
	c.chunk, c.pos, c.used, c.room = chunk, pos, used, room
	count(c, occs)
	if t.arena.sparse() {
		t.compact()
	}
}

func (t *convs) tag(k string) byte { return byte(maphash.String(t.seed, k)) }

func keySize(k string) uint32 {
	n := uint32(len(k))
	size := 2 + n
	for n >= 0x80 {
		n >>= 7
		size++
	}
	return size
}

func (t *convs) appendKey(b []byte, k string) []byte {
	b = append(b, t.tag(k))
	b = binary.AppendUvarint(b, uint64(len(k)))
	return append(b, k...)
}

// nextKey returns where the bytes of the first encoded key of b start and
// end.
func nextKey(b []byte) (start, end int) {
	if n := int(b[1]); n < 0x80 {
		return 2, 2 + n
	}
	return longKey(b)
}

func longKey(b []byte) (start, end int) {
	n, w := binary.Uvarint(b[1:])
	return 1 + w, 1 + w + int(n)
}

// has reports whether record i holds key k. It scans the conversation's
// keys, comparing a byte of their hash before their bytes: in a
// conversation that holds as many keys as one may, a few microseconds
// (BenchmarkHasInFullConversation).
func (t *convs) has(i uint32, k string) bool {
	if t.rec(i).nkeys == 0 {
		return false
	}
	want := t.tag(k)
	for b := t.keyBytes(i); len(b) > 1; {
		start, end := 2, 2+int(b[1]) // nextKey, inlined
		if b[1] >= 0x80 {
			start, end = longKey(b)
		}
		if b[0] == want && end-start == len(k) && string(b[start:end]) == k {
			return true
		}
		b = b[end:]
	}
	return false
}

// held returns a mask of those of keys (the first 64) that record i
// holds: bit j for keys[j]. It scans the conversation's keys once,
// comparing each with the keys asked of the same length: no hash of
// theirs is needed, and their bytes, most often in memory the processor
// has not read lately, are read only to compare them with a key as long.
func (t *convs) held(i uint32, keys []string) uint64 {
	if t.rec(i).nkeys == 0 || len(keys) == 0 {
		return 0
	}
	keys = keys[:min(len(keys), 64)]
	all := ^uint64(0) >> (64 - len(keys))
	var held uint64
	for b := t.keyBytes(i); len(b) > 1 && held != all; {
		start, end := 2, 2+int(b[1]) // nextKey, inlined
		if b[1] >= 0x80 {
			start, end = longKey(b)
		}
		k := b[start:end]
		for j, key := range keys {
			if len(key) == len(k) && key == string(k) {
				held |= 1 << j
			}
		}
		b = b[end:]
	}
	return held
}

// size returns what record i holds as a store.Size.
func (t *convs) size(i uint32) store.Size {
	c := t.rec(i)
	return store.Size{Keys: int(c.nkeys), Bytes: int(c.bytes)}
}

// strings returns record i's id and keys as strings of one allocation.
func (t *convs) strings(i uint32) (id string, keys []string) {
	c := t.rec(i)
	b := t.block(i)
	s := string(b)
	id = s[:c.idLen]
	keys = make([]string, 0, c.nkeys)
	for at := int(c.idLen); at < len(b); {
		start, end := nextKey(b[at:])
		keys = append(keys, s[at+start:at+end])
		at += end
	}
	return id, keys
}

// remove stops holding record i's conversation.
func (t *convs) remove(i uint32) {
	t.delete(uint32(maphash.Bytes(t.seed, t.idBytes(i))), i)
	c := t.rec(i)
	t.arena.release(c.room)
	*c = conv{gen: c.gen + 1}
	t.free = append(t.free, i)
	t.n--
	if t.arena.sparse() {
		t.compact()
	}
}

// insert files record i under hash h; the table has room.
func (t *convs) insert(h uint32, i uint32) {
	mask := uint32(len(t.slots) - 1)
	j := h & mask
	for t.slots[j] != 0 {
		j = (j + 1) & mask
	}
	t.slots[j] = uint64(h)<<32 | uint64(i+1)
}

// delete removes record i, filed under hash h, from the table, and moves
// back into the hole each entry after it that probed past it.
func (t *convs) delete(h uint32, i uint32) {
	mask := uint32(len(t.slots) - 1)
	hole := h & mask
	for uint32(t.slots[hole]) != i+1 {
		hole = (hole + 1) & mask
	}
	t.slots[hole] = 0
	for j := (hole + 1) & mask; t.slots[j] != 0; j = (j + 1) & mask {
		home := uint32(t.slots[j]>>32) & mask
		// The entry at j stays where it is when its home lies
		// cyclically in (hole, j]: a lookup from there reaches it
		// without passing the hole.
		if (j-home)&mask < (j-hole)&mask {
			continue
		}
		t.slots[hole], t.slots[j] = t.slots[j], 0
		hole = j
	}
}

// grow doubles the table.
func (t *convs) grow() {
	old := t.slots
	b := t.mem.alloc(2 * len(old) * 8)
	t.slots = unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), 2*len(old))
	for _, s := range old {
		if s != 0 {
			t.insert(uint32(s>>32), uint32(s)-1)
		}
	}
	t.mem.free(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(old))), len(old)*8))
}

// compact moves the live blocks, chunk by chunk in order, to the start of
// a new arena, which reuses each chunk once emptied: it needs about one
// chunk more than the live blocks.
func (t *convs) compact() {
	old := t.arena.chunks
	// While moving, a record in the new arena has its chunk numbered after
	// the old ones, so a dead block in an old chunk is never taken for it.
	base := uint32(len(old))
	to := arena{mem: t.mem}
	t.mem.free(t.arena.spare)
	for k, ch := range old {
		for p := uint32(0); p < uint32(len(ch)); {
			i := binary.LittleEndian.Uint32(ch[p:])
			room := binary.LittleEndian.Uint32(ch[p+4:])
			if c := t.rec(i); c.room != 0 && c.chunk == uint32(k) && c.pos == p {
				chunk, pos, b := to.alloc(room)
				copy(b[:c.used], ch[p:])
				c.chunk, c.pos = base+chunk, pos
			}
			p += room
		}
		old[k] = nil
		if to.spare == nil && cap(ch) == chunkSize {
			to.spare = ch[:0]
		} else {
			t.mem.free(ch)
		}
	}
	for i := range t.recs {
		if c := t.rec(i); c.room != 0 {
			c.chunk -= base
		}
	}
	to.compactions = t.arena.compactions + 1
	t.arena = to
}

// arena is the chunks that hold the conversations' blocks, filled in
// order. A chunk holds chunkSize bytes, or one block that is larger.
type arena struct {
	chunks [][]byte // each of the length used so far
	spare  []byte   // an empty chunk, used next
	live   int      // bytes of the blocks held
	dead   int      // bytes of released blocks and of chunks' unused ends
	mem    *offHeap // where its chunks come from

	compactions int // so far, for tests
}

// size returns the bytes of a's chunks.
func (a *arena) size() int {
	n := cap(a.spare)
	for _, c := range a.chunks {
		n += cap(c)
	}
	return n
}

const (
	chunkSize = hugePage
	// minCompact is the dead bytes below which the arena is not
	// compacted, so that a small store does not compact over and over.
	minCompact = 4 * chunkSize
)

// alloc returns room for a block of n bytes: its chunk, its position, and
// its bytes (length 0, capacity n).
func (a *arena) alloc(n uint32) (chunk, pos uint32, b []byte) {
	a.live += int(n)
	if k := len(a.chunks); k > 0 {
		last := a.chunks[k-1]
		if uint32(cap(last)-len(last)) >= n {
			pos = uint32(len(last))
			a.chunks[k-1] = last[:pos+n]
			return uint32(k - 1), pos, last[pos : pos : pos+n]
		}
		a.dead += cap(last) - len(last)
	}
	var c []byte
	if a.spare != nil && n <= chunkSize {
		c, a.spare = a.spare, nil
	} else {
		c = a.mem.alloc(max(chunkSize, int(n)))[:0]
	}
	a.chunks = append(a.chunks, c[:n])
	return uint32(len(a.chunks) - 1), 0, c[0:0:n]
}

// release marks a block of n bytes dead.
func (a *arena) release(n uint32) {
	a.live -= int(n)
	a.dead += int(n)
}

// sparse reports whether the dead bytes call for a compaction: past a
// quarter of the live ones, so that the arena holds at most a quarter more
// than the live blocks. Each compaction copies the live blocks after a
// quarter as many bytes died: four bytes copied per byte released,
// amortised, as cheap as a memory copy is.
func (a *arena) sparse() bool { return 4*a.dead > a.live && a.dead >= minCompact }
