package pipeline

import (
	"encoding/binary"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/uuid"
)

// knownCache remembers, per conversation, keys the store is known to hold, so
// an event that brings nothing new (most events: each carries every attribute
// of the participant) is answered without a store call. Entries live for ttl
// from when they were learned, which keeps them inside the store's retention.
// The cache holds at most max conversations and maxBytes bytes (as costed by
// bytes); past either it evicts a conversation not used since the clock's
// hand last passed it (second chance).
//
// It holds no Go pointer per conversation or key, so the garbage collector
// has nothing to scan in it, and it is dense: a conversation is a fixed
// 56-byte entry (cacheEntry) in pages of entries, found through an
// open-addressing index of 4-byte slots. A conversation whose id is a UUID
// and whose keys are few keeps them all in its entry: the id's 16 bytes and
// each key as a delta of its code (keycode.go: its name's id in a bounded
// name table and its time). Any other conversation keeps its id and keys
// as a run of bytes in a slab of large chunks, each key as its code or, if
// it has none, its bytes. So the cache is exact: it answers "known" only
// for a key it was told for that conversation, and a key it cannot keep is
// simply not known (the store answers).
type knownCache struct {
	mu       sync.Mutex
	max      int
	maxBytes int64
	ttl      int64 // ms, at most maxTTL
	seed     maphash.Seed

	pages []*[pageEntries]cacheEntry // entry e is pages[e>>pageShift][e&pageMask]; entry 0 is never used
	n     int32                      // entries handed out so far (the next new entry), from 1
	free  int32                      // first free entry, linked through its keys; 0 when none
	count int
	hand  int32    // the entry the clock looked at last
	based bool     // base is set (at the first learning)
	base  int64    // unix ms the entries' expiries count from
	index []uint32 // linear probing; a slot holds the hash's top byte << 24 | entry, 0 when empty
	slab  slab
	names nameTable
	buf   []byte // a run of keys being rebuilt
	codes []uint64
	raws  []string

	warmHashes []uint32 // warm's scratch
	warmEnts   []int32
	warmSum    uint64 // what warm read, so that its reads are not left out
}

// cacheEntry is one conversation, 56 bytes.
//
// keys[0] says what the rest holds. Up to maxInline: the conversation's id
// is a UUID (its bytes in id) and keys[1:1+keys[0]] are its keys in the
// order learned, each one token: the uvarint 0 for the end key, or the
// uvarint of the code's name and form bits plus one, then the varint of its
// milliseconds minus those of the coded key before it (0 for the first).
// spilled: the keys (and an id that is not a UUID) are a run of bytes in
// the slab (spillRef says where); free: the entry is unused.
type cacheEntry struct {
	id   [16]byte
	keys [32]byte
	exp  uint32 // expiry: ms after the cache's base, rounded down; usedBit: used since the hand passed
	told uint32 // unix ms, wrapping: when the store last got a request of the conversation
}

const (
	maxInline   = 31
	spilled     = 0x80
	freeEntry   = 0xff
	usedBit     = 1 << 31
	pageShift   = 12
	pageEntries = 1 << pageShift
	pageMask    = pageEntries - 1
	entryBits   = 24 // an index slot's entry; its top byte is a tag of the hash
	entryMask   = 1<<entryBits - 1
	maxEntries  = entryMask - 1
	// maxTTL bounds how long an entry is trusted, so that its expiry
	// counts from a base at most maxTTL old in 31 bits, and its told time
	// is at most that old in 32.
	maxTTL = 1 << 30
	// endCode is the code of the end key (""): its name bits are all ones,
	// an id the name table never gives.
	endCode = ^uint64(0)
)

// spillRef is where a spilled entry's bytes are. Its bytes are the id
// (uvarint 0 for a UUID, whose bytes are in the entry, else uvarint
// len+1 and the id), then the count of coded keys and of raw keys (uint16
// each), the codes in increasing order (8 bytes each), and the raw keys,
// each after its length (uint16).
type spillRef struct {
	chunk, off uint32
	size       uint32 // bytes in use
	room       uint32 // bytes reserved in the slab (size and room to grow)
	hash       uint32 // the id's hash (an id that is not a UUID is not in the entry)
	keysAt     uint16 // where the key counts start
	uuid       bool
}

func (en *cacheEntry) spill() spillRef {
	k := &en.keys
	return spillRef{
		chunk: binary.LittleEndian.Uint32(k[4:]), off: binary.LittleEndian.Uint32(k[8:]),
		size: binary.LittleEndian.Uint32(k[12:]), room: binary.LittleEndian.Uint32(k[16:]),
		hash: binary.LittleEndian.Uint32(k[20:]), keysAt: binary.LittleEndian.Uint16(k[24:]),
		uuid: k[1] == 1,
	}
}

func (en *cacheEntry) setSpill(s spillRef) {
	k := &en.keys
	k[0], k[1] = spilled, 0
	if s.uuid {
		k[1] = 1
	}
	binary.LittleEndian.PutUint32(k[4:], s.chunk)
	binary.LittleEndian.PutUint32(k[8:], s.off)
	binary.LittleEndian.PutUint32(k[12:], s.size)
	binary.LittleEndian.PutUint32(k[16:], s.room)
	binary.LittleEndian.PutUint32(k[20:], s.hash)
	binary.LittleEndian.PutUint16(k[24:], s.keysAt)
}

// Costs in bytes, as the cache counts them against its bound: an entry
// (cacheEntry and its share of the index, which is at most half full),
// and a name in the name table (the string and its map entry).
const (
	entryCost = 56 + 8
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
	c := &knownCache{max: min(max, maxEntries), maxBytes: maxBytes, ttl: min(ttl.Milliseconds(), maxTTL), seed: maphash.MakeSeed(), n: 1}
	c.names = nameTable{max: maxBytes / 8}
	c.slab.cur = -1
	return c
}

// ent returns entry e.
func (c *knownCache) ent(e int32) *cacheEntry {
	return &c.pages[e>>pageShift][e&pageMask]
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
	id.uuid = uuid.Parse(conv, &id.u)
	return id
}

// entryHash returns the hash of entry e's id: a UUID's is that of its
// text, written again from its bytes (the one text that gives them).
func (c *knownCache) entryHash(e int32) uint32 {
	en := c.ent(e)
	if en.keys[0] == spilled {
		return en.spill().hash
	}
	var b [36]byte
	return uint32(maphash.Bytes(c.seed, uuid.Text(&b, &en.id)))
}

// find returns conv's entry and the index slot that holds it, 0 and the
// first empty slot when the cache does not hold it.
func (c *knownCache) find(id *convID) (e int32, slot int) {
	if len(c.index) == 0 {
		return 0, -1
	}
	mask := len(c.index) - 1
	tag := id.hash &^ entryMask
	for i := int(id.hash) & mask; ; i = (i + 1) & mask {
		v := c.index[i]
		if v == 0 {
			return 0, i
		}
		if v&^entryMask == tag && c.sameID(int32(v&entryMask), id) {
			return int32(v & entryMask), i
		}
	}
}

// sameID reports whether entry e is conversation id.
func (c *knownCache) sameID(e int32, id *convID) bool {
	en := c.ent(e)
	if en.keys[0] != spilled || en.keys[1] == 1 {
		return id.uuid && en.id == id.u
	}
	b := c.blob(e)
	n, k := binary.Uvarint(b)
	return !id.uuid && n > 0 && string(b[k:k+int(n-1)]) == id.s
}

// blob returns spilled entry e's bytes.
func (c *knownCache) blob(e int32) []byte {
	s := c.ent(e).spill()
	return c.slab.chunks[s.chunk][s.off : s.off+s.size]
}

// warm reads, for each of the n conversations id(i) names (those it
// reports true for), the memory a lookup of it will read (its index slot,
// its entry, and a spilled entry's bytes), so that the lookups that follow
// find them in the processor's caches. At the scale of an archive the
// cache is tens of megabytes read at random, and a lookup's reads each
// depend on the one before, each a cache and TLB miss. Read for a whole
// batch at once, pass by pass, the reads of one pass do not depend on one
// another and overlap. It changes nothing in the cache.
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
		sum += uint64(c.index[int(h)&mask])
	}
	c.warmHashes = hashes
	// The entries of the slots whose tag is the hash's (the probes read
	// what the first pass brought in): both ends, as most entries cross
	// a cache line.
	ents := c.warmEnts[:0]
	for _, h := range hashes {
		tag := h &^ entryMask
		for i := int(h) & mask; ; i = (i + 1) & mask {
			v := c.index[i]
			if v == 0 {
				break
			}
			if v&^entryMask == tag {
				e := int32(v & entryMask)
				en := c.ent(e)
				sum += uint64(en.id[0]) + uint64(en.exp)
				if en.keys[0] == spilled {
					ents = append(ents, e)
				}
				break
			}
		}
	}
	c.warmEnts = ents
	// The bytes of spilled entries.
	for _, e := range ents {
		s := c.ent(e).spill()
		sum += uint64(c.slab.chunks[s.chunk][s.off])
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

// use returns id's entry, marked used, or 0 when the cache does not hold
// it or its time is up (then it is dropped). c.mu must be held.
func (c *knownCache) use(id *convID, now time.Time) int32 {
	e, _ := c.find(id)
	if e == 0 {
		return 0
	}
	en := c.ent(e)
	if c.expired(en, now) {
		c.remove(e)
		return 0
	}
	if en.exp&usedBit == 0 {
		en.exp |= usedBit
	}
	return e
}

// expired reports whether en's time is up. Its expiry was rounded down
// to the millisecond, so it never outlives the one it was given.
func (c *knownCache) expired(en *cacheEntry, now time.Time) bool {
	return now.UnixMilli() >= c.base+int64(en.exp&^usedBit)
}

// code returns k's code when k has one, interning its name if intern.
// The end key has a code of its own.
func (c *knownCache) code(k string, intern bool) (uint64, bool) {
	if k == "" {
		return endCode, true
	}
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
	en := c.ent(e)
	code, coded := c.code(k, false)
	if en.keys[0] != spilled {
		return coded && inlineHas(en.keys[1:1+en.keys[0]], code)
	}
	b := c.blob(e)[en.spill().keysAt:]
	nc, nr := int(binary.LittleEndian.Uint16(b)), int(binary.LittleEndian.Uint16(b[2:]))
	codes, raws := b[4:4+8*nc], b[4+8*nc:]
	if coded {
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

// inlineHas reports whether the tokens of an entry's keys (cacheEntry)
// hold code.
func inlineHas(b []byte, code uint64) bool {
	var ms int64
	for len(b) > 0 {
		t, n := binary.Uvarint(b)
		b = b[n:]
		if t == 0 {
			if code == endCode {
				return true
			}
			continue
		}
		d, m := binary.Varint(b)
		b = b[m:]
		ms += d
		if (t-1)<<codeTimeBits|uint64(ms) == code {
			return true
		}
	}
	return false
}

// inlineCodes appends the codes of an entry's tokens to codes, and
// returns them with the milliseconds of the last coded one.
func inlineCodes(b []byte, codes []uint64) ([]uint64, int64) {
	var ms int64
	for len(b) > 0 {
		t, n := binary.Uvarint(b)
		b = b[n:]
		if t == 0 {
			codes = append(codes, endCode)
			continue
		}
		d, m := binary.Varint(b)
		b = b[m:]
		ms += d
		codes = append(codes, (t-1)<<codeTimeBits|uint64(ms))
	}
	return codes, ms
}

// appendToken appends code's token, its time a delta from prev's (which
// it then becomes).
func appendToken(b []byte, code uint64, prev *int64) []byte {
	if code == endCode {
		return append(b, 0)
	}
	b = binary.AppendUvarint(b, code>>codeTimeBits+1)
	ms := int64(code & (codeMillis - 1))
	b = binary.AppendVarint(b, ms-*prev)
	*prev = ms
	return b
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
	ms := now.UnixMilli()
	c.rebase(ms)
	e, slot := c.find(&id)
	if e == 0 {
		exp := ms + c.ttl
		if exp <= c.base {
			// The clock went back by more than the time an entry is
			// trusted: its expiry cannot be counted from the base.
			return 0
		}
		e = c.add(&id, slot, len(keys), exp)
	} else {
		c.ent(e).exp |= usedBit
	}
	// The expiry stays that of the first learning: keys learned later are
	// younger, so the entry still expires before any of them.
	c.ent(e).told = uint32(ms)
	c.addKeys(e, keys)
	for c.count > c.max {
		c.evict(e)
	}
	for c.bytes() > c.maxBytes && c.count > 0 {
		if c.slab.garbage > c.slab.used/8 {
			// Evicting only turns bytes into garbage: reclaim it first.
			c.compact()
			continue
		}
		c.evict(e)
		evicted++
	}
	return evicted
}

// rebase moves the base the entries' expiries count from to now, when now
// is so far past it that a new expiry could not be counted in 31 bits,
// dropping the entries whose time is up. The first learning sets it.
func (c *knownCache) rebase(ms int64) {
	if !c.based {
		c.base, c.based = ms, true
		return
	}
	d := ms - c.base
	if d < maxTTL {
		return
	}
	for e := int32(1); e < c.n; e++ {
		en := c.ent(e)
		if en.keys[0] == freeEntry {
			continue
		}
		left := int64(en.exp&^usedBit) - d
		if left <= 0 {
			c.remove(e)
			continue
		}
		en.exp = en.exp&usedBit | uint32(left)
	}
	c.base = ms
}

// add makes an empty entry for id at index slot, expiring at exp (unix
// ms), with room for n keys (the first ones learned) if they go in the
// slab.
func (c *knownCache) add(id *convID, slot, n int, exp int64) int32 {
	if c.count+1 > len(c.index)/2 {
		c.grow()
		slot = -1
	}
	e := c.free
	if e != 0 {
		c.free = int32(binary.LittleEndian.Uint32(c.ent(e).keys[4:]))
	} else {
		if int(c.n)>>pageShift == len(c.pages) {
			c.pages = append(c.pages, new([pageEntries]cacheEntry))
		}
		e = c.n
		c.n++
	}
	en := c.ent(e)
	*en = cacheEntry{exp: uint32(exp - c.base)}
	if id.uuid {
		en.id = id.u
	} else {
		b := binary.AppendUvarint(c.buf[:0], uint64(len(id.s))+1)
		b = append(b, id.s...)
		keysAt := len(b)
		b = append(b, 0, 0, 0, 0)
		c.buf = b
		en.setSpill(spillRef{hash: id.hash, keysAt: uint16(keysAt)})
		c.place(e, b, 8*min(n, 16))
	}
	if slot < 0 {
		_, slot = c.find(id)
	}
	c.index[slot] = id.hash&^entryMask | uint32(e)
	c.count++
	return e
}

// place puts b as spilled entry e's bytes: where they are when they fit,
// else in a new place in the slab with room to grow (grow bytes more than
// the slack).
func (c *knownCache) place(e int32, b []byte, grow int) {
	en := c.ent(e)
	s := en.spill()
	if s.room > 0 && len(b) <= int(s.room) {
		copy(c.slab.chunks[s.chunk][s.off:], b)
		s.size = uint32(len(b))
		en.setSpill(s)
		return
	}
	if s.room > 0 {
		c.slab.release(int(s.room))
	}
	room := min(len(b)+blobSlack+grow, maxBlob)
	s.chunk, s.off = c.slab.alloc(room)
	s.room, s.size = uint32(room), uint32(len(b))
	copy(c.slab.chunks[s.chunk][s.off:], b)
	en.setSpill(s)
}

// addKeys adds those of keys entry e does not hold, as far as its bounds
// allow. An entry's keys stay in it while they are all coded and their
// tokens fit; else they move to the slab.
func (c *knownCache) addKeys(e int32, keys []string) {
	en := c.ent(e)
	if en.keys[0] != spilled {
		old := en.keys[1 : 1+en.keys[0]]
		b := append(c.buf[:0], old...)
		_, prev := inlineCodes(old, c.codes[:0])
		fits := true
		for _, k := range keys {
			code, ok := c.code(k, true)
			if !ok {
				fits = false
				break
			}
			if !inlineHas(b, code) {
				b = appendToken(b, code, &prev)
			}
		}
		c.buf = b
		if fits && len(b) <= maxInline {
			en.keys[0] = byte(copy(en.keys[1:], b))
			return
		}
		c.spill(e)
	}
	c.addBlobKeys(e, keys)
}

// spill moves entry e's keys from the entry into the slab.
func (c *knownCache) spill(e int32) {
	en := c.ent(e)
	codes, _ := inlineCodes(en.keys[1:1+en.keys[0]], c.codes[:0])
	slices.Sort(codes)
	c.codes = codes
	b := binary.AppendUvarint(c.buf[:0], 0)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(codes)))
	b = binary.LittleEndian.AppendUint16(b, 0)
	for _, code := range codes {
		b = binary.LittleEndian.AppendUint64(b, code)
	}
	c.buf = b
	en.setSpill(spillRef{hash: c.entryHash(e), keysAt: 1, uuid: true})
	c.place(e, b, 8*len(codes))
}

// addBlobKeys adds those of keys spilled entry e does not hold, as far as
// its bounds allow.
func (c *knownCache) addBlobKeys(e int32, keys []string) {
	old := c.blob(e)
	at := int(c.ent(e).spill().keysAt)
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
// does not hold reaches the store anyway. Times are whole milliseconds, so
// it may tell up to one early, never late.
func (c *knownCache) tell(conv string, now time.Time, every time.Duration) bool {
	if c == nil || every <= 0 {
		return false
	}
	id := c.id(conv)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, _ := c.find(&id)
	if e == 0 {
		return false
	}
	en := c.ent(e)
	if c.expired(en, now) {
		return false
	}
	// An entry lives at most maxTTL after it was learned, which set told,
	// so the wrapping difference is the time since (or, should the clock
	// have gone back, a large one: told).
	ms := now.UnixMilli()
	if (int64(uint32(ms)-en.told)+1)*int64(time.Millisecond) <= int64(every) {
		return false
	}
	en.told = uint32(ms)
	return true
}

// evict drops a conversation not used since the clock's hand last passed
// it, clearing the mark of those it passes; never keep, the entry being
// learned, unless it is the only one.
func (c *knownCache) evict(keep int32) {
	if c.count == 1 {
		c.remove(keep)
		return
	}
	for {
		c.hand++
		if c.hand >= c.n {
			c.hand = 1
		}
		en := c.ent(c.hand)
		if en.keys[0] == freeEntry || c.hand == keep {
			continue
		}
		if en.exp&usedBit != 0 {
			en.exp &^= usedBit
			continue
		}
		c.remove(c.hand)
		return
	}
}

// remove drops entry e.
func (c *knownCache) remove(e int32) {
	c.unindex(e)
	en := c.ent(e)
	if en.keys[0] == spilled {
		c.slab.release(int(en.spill().room))
	}
	*en = cacheEntry{}
	en.keys[0] = freeEntry
	binary.LittleEndian.PutUint32(en.keys[4:], uint32(c.free))
	c.free = e
	c.count--
}

// unindex takes entry e out of the index, moving back the entries after
// it that would no longer be found (deletion in linear probing, without
// tombstones).
func (c *knownCache) unindex(e int32) {
	mask := len(c.index) - 1
	i := int(c.entryHash(e)) & mask
	for c.index[i]&entryMask != uint32(e) {
		i = (i + 1) & mask
	}
	for j := (i + 1) & mask; c.index[j] != 0; j = (j + 1) & mask {
		home := int(c.entryHash(int32(c.index[j]&entryMask))) & mask
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
	c.index = make([]uint32, max(2*len(old), 1024))
	mask := len(c.index) - 1
	for _, v := range old {
		if v == 0 {
			continue
		}
		i := int(c.entryHash(int32(v&entryMask))) & mask
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

// compact moves every spilled entry's bytes into fresh chunks, chunk by
// chunk, giving each chunk back once it is empty, so the slab holds no
// garbage and needs at most one more chunk while it moves.
func (c *knownCache) compact() {
	s := &c.slab
	// The entries of each chunk (a counting sort by chunk).
	start := make([]int32, len(s.chunks)+1)
	spills := 0
	for e := int32(1); e < c.n; e++ {
		if en := c.ent(e); en.keys[0] == spilled {
			start[en.spill().chunk+1]++
			spills++
		}
	}
	for i := 1; i < len(start); i++ {
		start[i] += start[i-1]
	}
	order := make([]int32, spills)
	fill := slices.Clone(start[:len(s.chunks)])
	for e := int32(1); e < c.n; e++ {
		if en := c.ent(e); en.keys[0] == spilled {
			ch := en.spill().chunk
			order[fill[ch]] = e
			fill[ch]++
		}
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
			en := c.ent(e)
			sp := en.spill()
			src := s.chunks[sp.chunk][sp.off : sp.off+sp.size]
			sp.chunk, sp.off = s.alloc(int(sp.room))
			copy(s.chunks[sp.chunk][sp.off:], src)
			en.setSpill(sp)
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
