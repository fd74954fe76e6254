package pipeline

import (
	"sync/atomic"
	"syscall"
	"unsafe"
)

// mapped is what every hugeMem has mapped.
var mapped atomic.Int64

// hugePages: on Linux the known-key cache's arrays are mapped outside the
// Go heap, in huge pages (hugeMem).
const hugePages = true

// madvHugepage is MADV_HUGEPAGE, which the syscall package does not name.
const madvHugepage = 14

// hugeMem maps the known-key cache's arrays (its entries, its index and
// its slab's chunks) outside the Go heap, each aligned to a huge page and
// marked for transparent huge pages. The cache reads them at random, one
// conversation here, the next megabytes away: in pages of 4 KiB nearly
// every lookup missed the TLB, and under a hypervisor each miss walks two
// page tables. The memory holds no Go pointers, so the collector need not
// see it; it is unmapped when freed, or when the cache is collected
// (freeAll, by a cleanup). Where the kernel refuses a mapping, and for a
// small cache (heap), the Go heap serves instead.
type hugeMem struct {
	heap  bool
	maps  map[uintptr][]byte // the start handed out -> its whole mapping
	bytes int64              // bytes handed out and mapped
	free  [][]byte           // chunks handed back, for reuse
}

// alloc returns n zeroed bytes; mapped, rounded up to a whole number of
// huge pages.
func (m *hugeMem) alloc(n int) []byte {
	if m.heap {
		return make([]byte, n)
	}
	n = (n + hugePage - 1) / hugePage * hugePage
	b, err := syscall.Mmap(-1, 0, n+hugePage, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return make([]byte, n)
	}
	off := (hugePage - int(uintptr(unsafe.Pointer(unsafe.SliceData(b))))%hugePage) % hugePage
	a := b[off : off+n : off+n]
	// Advice only: without it the memory is still there, in small pages.
	_ = syscall.Madvise(a, madvHugepage)
	if m.maps == nil {
		m.maps = map[uintptr][]byte{}
	}
	m.maps[uintptr(unsafe.Pointer(unsafe.SliceData(a)))] = b
	m.bytes += int64(n)
	mapped.Add(int64(n))
	return a
}

// release unmaps a, which alloc returned; a slice of the Go heap is left
// to the collector. Nothing may use a afterwards.
func (m *hugeMem) release(a []byte) {
	if cap(a) == 0 {
		return
	}
	p := uintptr(unsafe.Pointer(unsafe.SliceData(a)))
	b, ok := m.maps[p]
	if !ok {
		return
	}
	delete(m.maps, p)
	m.bytes -= int64(len(b) - hugePage)
	mapped.Add(-int64(len(b) - hugePage))
	_ = syscall.Munmap(b)
}

// freeAll unmaps everything alloc returned.
func (m *hugeMem) freeAll() {
	for p, b := range m.maps {
		delete(m.maps, p)
		_ = syscall.Munmap(b)
	}
	mapped.Add(-m.bytes)
	m.bytes = 0
	m.free = nil
}
