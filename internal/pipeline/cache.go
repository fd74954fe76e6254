package pipeline

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// knownCache remembers, per conversation, keys the store is known to hold, so
// an event that brings nothing new (most events: each carries every attribute
// of the participant) is answered without a store call. Entries live for ttl
// from when they were learned, which keeps them inside the store's retention.
// The cache holds at most max conversations and maxBytes bytes (as costed by
// bytes), evicting the least recently used.
//
// It holds no Go pointer per conversation or key, so the garbage collector
// has nothing to scan in it, and it is dense: a conversation is a fixed
// entry (cacheEntry) in one array, found through an open-addressing index
// of integers, and its id and keys are one run of bytes in a slab of large
// chunks. An id that is a UUID takes its 16 bytes; a key takes an 8-byte
// code (keycode.go): its name's id in a bounded name table and its time.
// An id or key of any other form is kept as its bytes, so the cache is
// exact: it answers "known" only for a key it was told for that
// conversation, and a key it cannot keep is simply not known (the store
// answers).
type knownCache struct {
	mu       sync.Mutex
	max      int
	maxBytes int64
	ttl      time.Duration
	seed     maphash.Seed

	ents  []cacheEntry // ents[0] is the sentinel of the LRU ring: ents[0].next is the most recent
	free  int32        // first unused entry, linked by next; 0 when none
	count int
	index []uint64 // linear probing; a slot holds hash<<32 | entry, 0 when empty
	slab  slab
	names nameTable
	buf   []byte // a blob being rebuilt
	codes []uint64
	raws  []string

	warmHashes []uint32 // warm's scratch
	warmEnts   []int32
	warmSum    uint64 // what warm read, so that its reads are not left out
}

// cacheEntry is one conversation: where its bytes are in the slab and its
// place in the LRU ring.
//
// Its bytes are the id (uvarint 0 and 16 bytes for a UUID, else uvarint
// len+1 and the id), then the count of coded keys and of raw keys (uint16
// each), the codes in increasing order (8 bytes each), and the raw keys,
// each after its length (uint16).
type cacheEntry struct {
	expires int64 // unix ns; the expiry of the first learning
	told    int64 // unix ns: when the store last got a request of the conversation
	prev    int32
	next    int32
	hash    uint32
	chunk   uint32
	off     uint32
	size    uint32 // bytes in use
	room    uint32 // bytes reserved in the slab (size and room to grow)
	keysAt  uint16 // where the key counts start
}

// Costs in bytes, as the cache counts them against its bound: an entry
// (cacheEntry and its share of the index, which is at most half full),
// and a name in the name table (the string and its map entry).
const (
	entryCost = 48 + 16
	nameCost  = 64
)

// Bounds on what one conversation keeps (beyond them keys are not
// cached, and the store answers): its bytes, its raw keys and the length
// of one raw key, so that neither a conversation nor a lookup in it can
// grow without bound.
const (
	maxBlob     = 32 << 10
	maxRaw      = 32
	maxRawKey   = 512
	maxCachedID = 1024
	blobSlack   = 16 // room for two more codes when a blob is placed
)

func newKnownCache(max int, maxBytes int64, ttl time.Duration) *knownCache {
	c := &knownCache{max: max, maxBytes: maxBytes, ttl: ttl, seed: maphash.MakeSeed(), ents: make([]cacheEntry, 1)}
	c.names = nameTable{max: maxBytes / 8}
	c.slab.cur = -1
	return c
}

// convID is a conversation id prepared for lookups.
type convID struct {
	s    string
	hash uint32
	uuid bool
	u    [16]byte
}

func (c *knownCache) id(conv string) convID {
	id := convID{s: conv, hash: uint32(maphash.String(c.seed, conv))}
	id.uuid = uuidBytes(conv, &id.u)
	return id
}

// find returns conv's entry and the index slot that holds it, 0 and the
// first empty slot when the cache does not hold it.
func (c *knownCache) find(id *convID) (e int32, slot int) {
	if len(c.index) == 0 {
		return 0, -1
	}
	mask := len(c.index) - 1
	for i := int(id.hash) & mask; ; i = (i + 1) & mask {
		v := c.index[i]
		if v == 0 {
			return 0, i
		}
		if uint32(v>>32) == id.hash && c.sameID(int32(uint32(v)), id) {
			return int32(uint32(v)), i
		}
	}
}

// sameID reports whether entry e is conversation id.
func (c *knownCache) sameID(e int32, id *convID) bool {
	b := c.blob(e)
	n, k := binary.Uvarint(b)
	if n == 0 {
		return id.uuid && bytes.Equal(b[k:k+16], id.u[:])
	}
	return !id.uuid && string(b[k:k+int(n-1)]) == id.s
}

// blob returns entry e's bytes.
func (c *knownCache) blob(e int32) []byte {
	en := &c.ents[e]
	return c.slab.chunks[en.chunk][en.off : en.off+en.size]
}

// warm reads, for each of the n conversations id(i) names (those it
// reports true for), the memory a lookup of it will read (its
// index slot, its entry, the start of its bytes and the entries beside it
// in the LRU ring, which making it the most recent rewrites), so that the
// lookups that follow find them in the processor's caches. At the scale
// of an archive the cache is tens of megabytes read at random, and a
// lookup's reads each depend on the one before, each a cache and TLB
// miss. Read for a whole batch at once, pass by pass, the reads of one
// pass do not depend on one another and overlap. It changes nothing in
// the cache.
func (c *knownCache) warm(n int, id func(i int) (string, bool)) {
	if c == nil || c.max <= 0 || n == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.index) == 0 {
		return
	}
	mask := len(c.index) - 1
	var sum uint64
	// The home slots: independent reads.
	hashes := c.warmHashes[:0]
	for i := range n {
		conv, ok := id(i)
		if !ok {
			continue
		}
		h := uint32(maphash.String(c.seed, conv))
		hashes = append(hashes, h)
		sum += c.index[int(h)&mask]
	}
	c.warmHashes = hashes
	// The entries of the slots that hold the hash (the probes read what
	// the first pass brought in).
	ents := c.warmEnts[:0]
	for _, h := range hashes {
		for i := int(h) & mask; ; i = (i + 1) & mask {
			v := c.index[i]
			if v == 0 {
				break
			}
			if uint32(v>>32) == h {
				e := int32(uint32(v))
				ents = append(ents, e)
				sum += uint64(c.ents[e].off)
				break
			}
		}
	}
	c.warmEnts = ents
	// Their bytes and their neighbours in the ring.
	for _, e := range ents {
		en := &c.ents[e]
		sum += uint64(c.slab.chunks[en.chunk][en.off]) + uint64(c.ents[en.prev].off) + uint64(c.ents[en.next].off)
	}
	c.warmSum += sum
}

// unknown returns the occurrences of occs whose keys are not known for conv
// (occs itself when none is known), nil when all are.
func (c *knownCache) unknown(conv string, occs []flowmetrics.Occurrence, now time.Time) []flowmetrics.Occurrence {
	if c == nil || c.max <= 0 {
		return occs
	}
	id := c.id(conv)
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.use(&id, now)
	if e == 0 {
		return occs
	}
	var out []flowmetrics.Occurrence
	for i, o := range occs {
		if c.has(e, o.Key) {
			if out == nil {
				// The first known key: from here on, copy the others.
				out = make([]flowmetrics.Occurrence, i, len(occs))
				copy(out, occs[:i])
			}
			continue
		}
		if out != nil {
			out = append(out, o)
		}
	}
	if out == nil {
		return occs
	}
	return out
}

// unknownNames is unknown for an event's attribute names, before they are
// parsed: it appends to buf those of names not known for conv and returns
// them (names itself when none is known), and how many were known. A known
// name was a well-formed key when the cache learned it, so it needs no
// parsing again: neither an occurrence nor a malformed name comes of it.
func (c *knownCache) unknownNames(conv string, names []string, now time.Time, buf []string) (out []string, known int) {
	if c == nil || c.max <= 0 || len(names) == 0 {
		return names, 0
	}
	id := c.id(conv)
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.use(&id, now)
	if e == 0 {
		return names, 0
	}
	out = buf[:0]
	for i, k := range names {
		if c.has(e, k) {
			if known == 0 {
				out = append(out, names[:i]...)
			}
			known++
			continue
		}
		if known > 0 {
			out = append(out, k)
		}
	}
	if known == 0 {
		return names, 0
	}
	return out, known
}

// use returns id's entry, made the most recently used, or 0 when the
// cache does not hold it or its time is up (then it is dropped). c.mu must
// be held.
func (c *knownCache) use(id *convID, now time.Time) int32 {
	e, _ := c.find(id)
	if e == 0 {
		return 0
	}
	if now.UnixNano() >= c.ents[e].expires {
		c.remove(e)
		return 0
	}
	c.toFront(e)
	return e
}

// code returns k's code when k has one, interning its name if intern.
func (c *knownCache) code(k string, intern bool) (uint64, bool) {
	name, text, ok := splitKey(k)
	if !ok {
		return 0, false
	}
	t, ok := timeCode(text)
	if !ok {
		return 0, false
	}
	var n uint32
	if intern {
		n, ok = c.names.intern(name)
	} else {
		n, ok = c.names.lookup(name)
	}
	if !ok {
		return 0, false
	}
	return uint64(n)<<codeNameShift | t, true
}

// has reports whether entry e holds key k. A key whose name is not in the
// name table was kept as its bytes if at all (the table never forgets a
// name, nor gives its id to another).
func (c *knownCache) has(e int32, k string) bool {
	b := c.blob(e)[c.ents[e].keysAt:]
	nc, nr := int(binary.LittleEndian.Uint16(b)), int(binary.LittleEndian.Uint16(b[2:]))
	codes, raws := b[4:4+8*nc], b[4+8*nc:]
	if code, ok := c.code(k, false); ok {
		_, found := searchCodes(codes, code)
		return found
	}
	for range nr {
		n := int(binary.LittleEndian.Uint16(raws))
		if string(raws[2:2+n]) == k {
			return true
		}
		raws = raws[2+n:]
	}
	return false
}

// searchCodes finds code among codes (8 bytes each, in increasing
// order): its place, and whether it is there.
func searchCodes(codes []byte, code uint64) (int, bool) {
	lo, hi := 0, len(codes)/8
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if binary.LittleEndian.Uint64(codes[8*m:]) < code {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo, lo < len(codes)/8 && binary.LittleEndian.Uint64(codes[8*lo:]) == code
}

// learn records that the store holds keys for conv. It returns how many
// conversations it evicted because the cache held more than its bytes.
func (c *knownCache) learn(conv string, keys []string, now time.Time) (evicted int) {
	if c == nil || c.max <= 0 || len(keys) == 0 || len(conv) > maxCachedID {
		return 0
	}
	id := c.id(conv)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, slot := c.find(&id)
	if e == 0 {
		e = c.add(&id, slot, len(keys), now)
	}
	// The expiry stays that of the first learning: keys learned later are
	// younger, so the entry still expires before any of them.
	c.ents[e].told = now.UnixNano()
	c.addKeys(e, keys)
	c.toFront(e)
	for c.count > c.max {
		c.remove(c.ents[0].prev)
	}
	for c.bytes() > c.maxBytes && c.count > 0 {
		if c.slab.garbage > c.slab.used/8 {
			// Evicting only turns bytes into garbage: reclaim it first.
			c.compact()
			continue
		}
		c.remove(c.ents[0].prev)
		evicted++
	}
	return evicted
}

// add makes an empty entry for id at index slot, with room for n keys
// (the first ones learned) in its place in the slab.
func (c *knownCache) add(id *convID, slot, n int, now time.Time) int32 {
	if c.count+1 > len(c.index)/2 {
		c.grow()
		slot = -1
	}
	e := c.free
	if e != 0 {
		c.free = c.ents[e].next
	} else {
		c.ents = append(c.ents, cacheEntry{})
		e = int32(len(c.ents) - 1)
	}
	b := c.buf[:0]
	if id.uuid {
		b = binary.AppendUvarint(b, 0)
		b = append(b, id.u[:]...)
	} else {
		b = binary.AppendUvarint(b, uint64(len(id.s))+1)
		b = append(b, id.s...)
	}
	keysAt := len(b)
	b = append(b, 0, 0, 0, 0)
	c.buf = b
	c.ents[e] = cacheEntry{expires: now.Add(c.ttl).UnixNano(), hash: id.hash, keysAt: uint16(keysAt)}
	c.place(e, b, 8*min(n, 16))
	if slot < 0 {
		_, slot = c.find(id)
	}
	c.index[slot] = uint64(id.hash)<<32 | uint64(uint32(e))
	c.count++
	return e
}

// place puts b as entry e's bytes: where they are when they fit, else in
// a new place in the slab with room to grow (grow bytes more than the
// slack).
func (c *knownCache) place(e int32, b []byte, grow int) {
	en := &c.ents[e]
	if en.room > 0 && len(b) <= int(en.room) {
		copy(c.slab.chunks[en.chunk][en.off:], b)
		en.size = uint32(len(b))
		return
	}
	if en.room > 0 {
		c.slab.release(int(en.room))
	}
	room := min(len(b)+blobSlack+grow, maxBlob)
	en.chunk, en.off = c.slab.alloc(room)
	en.room, en.size = uint32(room), uint32(len(b))
	copy(c.slab.chunks[en.chunk][en.off:], b)
}

// addKeys adds those of keys entry e does not hold, as far as its bounds
// allow.
func (c *knownCache) addKeys(e int32, keys []string) {
	old := c.blob(e)
	at := int(c.ents[e].keysAt)
	nc, nr := int(binary.LittleEndian.Uint16(old[at:])), int(binary.LittleEndian.Uint16(old[at+2:]))
	codes := c.codes[:0]
	raws := c.raws[:0]
	for _, k := range keys {
		if code, ok := c.code(k, true); ok {
			if _, dup := searchCodes(old[at+4:at+4+8*nc], code); !dup && !slices.Contains(codes, code) {
				codes = append(codes, code)
			}
			continue
		}
		if len(k) <= maxRawKey && nr+len(raws) < maxRaw && !c.has(e, k) && !slices.Contains(raws, k) {
			raws = append(raws, k)
		}
	}
	c.codes, c.raws = codes, raws
	if len(codes) == 0 && len(raws) == 0 {
		return
	}
	size := len(old) + 8*len(codes)
	for _, k := range raws {
		size += 2 + len(k)
	}
	if size > maxBlob || nc+len(codes) > 0xffff {
		return // not cached: the store answers for these keys
	}
	slices.Sort(codes)
	b := append(c.buf[:0], old[:at]...)
	b = binary.LittleEndian.AppendUint16(b, uint16(nc+len(codes)))
	b = binary.LittleEndian.AppendUint16(b, uint16(nr+len(raws)))
	// Merge the old codes and the new, in order.
	olds := old[at+4 : at+4+8*nc]
	for i, j := 0, 0; i < nc || j < len(codes); {
		if j == len(codes) || (i < nc && binary.LittleEndian.Uint64(olds[8*i:]) < codes[j]) {
			b = append(b, olds[8*i:8*i+8]...)
			i++
		} else {
			b = binary.LittleEndian.AppendUint64(b, codes[j])
			j++
		}
	}
	b = append(b, old[at+4+8*nc:]...)
	for _, k := range raws {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(k)))
		b = append(b, k...)
	}
	c.buf = b
	c.place(e, b, 0)
}

// tell reports whether the store should hear of an event of conv that the
// cache answered, because it last got a request of the conversation every
// or longer ago (and then counts it as told now). A conversation the cache
// does not hold reaches the store anyway.
func (c *knownCache) tell(conv string, now time.Time, every time.Duration) bool {
	if c == nil || every <= 0 {
		return false
	}
	id := c.id(conv)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, _ := c.find(&id)
	if e == 0 || now.UnixNano()-c.ents[e].told < int64(every) {
		return false
	}
	c.ents[e].told = now.UnixNano()
	return true
}

// toFront makes e the most recently used.
func (c *knownCache) toFront(e int32) {
	ents := c.ents
	if ents[e].prev != 0 || ents[e].next != 0 || ents[0].next == e {
		ents[ents[e].prev].next, ents[ents[e].next].prev = ents[e].next, ents[e].prev
	}
	ents[e].prev, ents[e].next = 0, ents[0].next
	ents[ents[0].next].prev = e
	ents[0].next = e
}

// remove drops entry e.
func (c *knownCache) remove(e int32) {
	ents := c.ents
	ents[ents[e].prev].next, ents[ents[e].next].prev = ents[e].next, ents[e].prev
	c.unindex(e)
	c.slab.release(int(ents[e].room))
	ents[e] = cacheEntry{next: c.free}
	c.free = e
	c.count--
}

// unindex takes entry e out of the index, moving back the entries after
// it that would no longer be found (deletion in linear probing, without
// tombstones).
func (c *knownCache) unindex(e int32) {
	mask := len(c.index) - 1
	i := int(c.ents[e].hash) & mask
	for uint32(c.index[i]) != uint32(e) {
		i = (i + 1) & mask
	}
	for j := (i + 1) & mask; c.index[j] != 0; j = (j + 1) & mask {
		home := int(c.index[j]>>32) & mask
		// Entry j may move to the hole at i unless its home lies in the
		// cyclic range (i, j].
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			c.index[i] = c.index[j]
			i = j
		}
	}
	c.index[i] = 0
}

// grow doubles the index.
func (c *knownCache) grow() {
	old := c.index
	c.index = make([]uint64, max(2*len(old), 1024))
	mask := len(c.index) - 1
	for _, v := range old {
		if v == 0 {
			continue
		}
		i := int(v>>32) & mask
		for c.index[i] != 0 {
			i = (i + 1) & mask
		}
		c.index[i] = v
	}
}

// bytes returns what the cache counts against its bound: its entries, the
// slab's bytes handed out (live and not yet reclaimed) and the name table.
func (c *knownCache) bytes() int64 {
	return int64(c.count)*entryCost + c.slab.used + c.names.bytes
}

// compact moves every entry's bytes into fresh chunks, chunk by chunk,
// giving each chunk back once it is empty, so the slab holds no garbage
// and needs at most one more chunk while it moves.
func (c *knownCache) compact() {
	s := &c.slab
	// The entries of each chunk (a counting sort by chunk).
	start := make([]int32, len(s.chunks)+1)
	for e := c.ents[0].next; e != 0; e = c.ents[e].next {
		start[c.ents[e].chunk+1]++
	}
	for i := 1; i < len(start); i++ {
		start[i] += start[i-1]
	}
	order := make([]int32, c.count)
	fill := slices.Clone(start[:len(s.chunks)])
	for e := c.ents[0].next; e != 0; e = c.ents[e].next {
		ch := c.ents[e].chunk
		order[fill[ch]] = e
		fill[ch]++
	}
	old := len(s.chunks)
	s.cur, s.fill, s.used, s.garbage = -1, 0, 0, 0
	s.spare = s.spare[:0]
	for ch := range old {
		if s.chunks[ch] != nil && start[ch] == start[ch+1] {
			s.spare = append(s.spare, ch)
		}
	}
	for ch := range old {
		if start[ch] == start[ch+1] {
			continue
		}
		for _, e := range order[start[ch]:start[ch+1]] {
			en := &c.ents[e]
			src := s.chunks[en.chunk][en.off : en.off+en.size]
			en.chunk, en.off = s.alloc(int(en.room))
			copy(s.chunks[en.chunk][en.off:], src)
		}
		// Every entry has left it; it never was a target, as it was not
		// spare.
		s.spare = append(s.spare, ch)
	}
	// Keep one spare chunk; the others go back to the Go heap.
	for len(s.spare) > 1 {
		s.chunks[s.spare[len(s.spare)-1]] = nil
		s.spare = s.spare[:len(s.spare)-1]
	}
}

// size returns the conversations and bytes the cache holds.
func (c *knownCache) size() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count, c.bytes()
}

// chunkSize is the size of the slab's chunks; a conversation's bytes
// (at most maxBlob) are never split between two.
const chunkSize = 256 << 10

// slab hands out runs of bytes from large chunks, in order. A run given
// back is garbage until the cache compacts.
type slab struct {
	chunks  [][]byte // nil: given back to the Go heap
	spare   []int    // chunks holding nothing, for reuse
	cur     int      // the chunk being filled, -1 for none
	fill    int      // its bytes handed out
	used    int64    // bytes handed out since the last compaction, garbage included
	garbage int64
}

// alloc returns the place of n new bytes.
func (s *slab) alloc(n int) (chunk, off uint32) {
	if s.cur < 0 || s.fill+n > chunkSize {
		if s.cur >= 0 {
			// The rest of the full chunk is garbage.
			s.used += int64(chunkSize - s.fill)
			s.garbage += int64(chunkSize - s.fill)
		}
		s.cur, s.fill = s.newChunk(), 0
	}
	off = uint32(s.fill)
	s.fill += n
	s.used += int64(n)
	return uint32(s.cur), off
}

func (s *slab) newChunk() int {
	if n := len(s.spare); n > 0 {
		ch := s.spare[n-1]
		s.spare = s.spare[:n-1]
		return ch
	}
	for i, ch := range s.chunks {
		if ch == nil {
			s.chunks[i] = make([]byte, chunkSize)
			return i
		}
	}
	s.chunks = append(s.chunks, make([]byte, chunkSize))
	return len(s.chunks) - 1
}

// release makes n bytes of a run garbage.
func (s *slab) release(n int) { s.garbage += int64(n) }

// nameTable gives key names (a flow, "Metric_", a metric) small ids. It is
// bounded in bytes and ids and never forgets a name nor reuses an id, so a
// code stays the code of one key for the cache's life. Past its bounds a
// new name gets no id, and its keys are kept as their bytes.
type nameTable struct {
	ids   map[string]uint32
	bytes int64
	max   int64
}

// maxName is the longest name the table takes.
const maxName = 512

func (t *nameTable) lookup(name string) (uint32, bool) {
	id, ok := t.ids[name]
	return id, ok
}

func (t *nameTable) intern(name string) (uint32, bool) {
	if id, ok := t.ids[name]; ok {
		return id, true
	}
	cost := int64(nameCost + len(name))
	if len(name) > maxName || len(t.ids) >= maxNameID || t.bytes+cost > t.max {
		return 0, false
	}
	if t.ids == nil {
		t.ids = map[string]uint32{}
	}
	id := uint32(len(t.ids))
	t.ids[strings.Clone(name)] = id
	t.bytes += cost
	return id, true
}
