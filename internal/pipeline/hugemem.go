package pipeline

import "unsafe"

// hugePage is the size of a transparent huge page on x86-64 and arm64
// (with 4 KiB base pages): hugeMem's unit.
const hugePage = 2 << 20

// minHugeCache is the least byte bound of a known-key cache whose arrays
// are mapped in huge pages (hugeMem): a smaller one would take more memory
// in its first pages than it may hold.
const minHugeCache = 16 * hugePage

func newHugeMem(maxBytes int64) *hugeMem {
	return &hugeMem{heap: !hugePages || maxBytes < minHugeCache}
}

// CacheOnGoHeap reports whether a known-key cache bounded to cacheBytes
// keeps its bytes on the Go heap (else they are mapped outside it, and a
// soft memory limit of the Go heap need not leave room for them).
func CacheOnGoHeap(cacheBytes int64) bool { return newHugeMem(cacheBytes).heap }

// chunk returns a slab chunk (chunkSize bytes): one handed back before, or
// one of a new huge page's.
func (m *hugeMem) chunk() []byte {
	if m.heap {
		return make([]byte, chunkSize)
	}
	if len(m.free) == 0 {
		r := m.alloc(hugePage)
		for off := 0; off < len(r); off += chunkSize {
			m.free = append(m.free, r[off:off+chunkSize:off+chunkSize])
		}
	}
	ch := m.free[len(m.free)-1]
	m.free = m.free[:len(m.free)-1]
	return ch
}

// putChunk takes back a chunk no entry uses, for the next chunk call (on
// the Go heap: for the collector). A huge page's chunks stay mapped while
// the cache lives: their number is bounded by the cache's bytes, as the
// chunks in use are.
func (m *hugeMem) putChunk(ch []byte) {
	if !m.heap {
		m.free = append(m.free, ch)
	}
}

var entrySize = int(unsafe.Sizeof(cacheEntry{}))

// entriesOf views b as entries (cacheEntry holds no pointer).
func entriesOf(b []byte) []cacheEntry {
	return unsafe.Slice((*cacheEntry)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/entrySize)
}

// bytesOfEntries is the memory of e's backing array, for release.
func bytesOfEntries(e []cacheEntry) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(e))), cap(e)*entrySize)
}

// uint64sOf views b as n integers.
func uint64sOf(b []byte, n int) []uint64 {
	return unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/8)[:n:n]
}

// bytesOfUint64s is the memory of u's backing array, for release.
func bytesOfUint64s(u []uint64) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(u))), cap(u)*8)
}
