package memstore

import "unsafe"

// hugePage is the size of the pages the store's large memory is mapped
// in where the system has them (Linux's transparent huge pages).
const hugePage = 2 << 20

// smallPagesFirst is how much of a store's mapped memory is left in the
// system's small pages before it asks for huge ones: a store that holds a
// few conversations (a test's) then keeps only the pages it touched, not
// 2 MiB for each of its record pages and arena chunks.
const smallPagesFirst = 8 << 20

// offHeap gives the store its large blocks of memory (arena chunks, record
// pages, the table once it is large) outside the Go heap, mapped in huge
// pages where the system allows, and takes them back. Held in the Go heap
// in 4 KiB pages, a shuffled replay's lookups, each at a random place in
// hundreds of megabytes, missed the TLB nearly every time, and every page
// of them cost a page fault; in 2 MiB pages the TLB covers 512 times as
// much and a fault brings in 2 MiB. Where mapping is not supported, or
// fails, a block comes from the Go heap, as does any block smaller than
// a huge page.
//
// The blocks hold no pointers (TestConvRecordHoldsNoPointer), so the
// collector need not see them. They are unmapped when the store closes,
// or else once the store is unreachable (Store's cleanup).
type offHeap struct {
	maps   map[*byte][]byte // a block's first byte → its whole mapping
	mapped int              // bytes of the blocks mapped
}

// alloc returns n zeroed bytes.
func (m *offHeap) alloc(n int) []byte {
	if n >= hugePage {
		if b, whole, ok := mapBlock(n, m.mapped >= smallPagesFirst); ok {
			if m.maps == nil {
				m.maps = map[*byte][]byte{}
			}
			m.maps[unsafe.SliceData(b)] = whole
			m.mapped += cap(b)
			return b
		}
	}
	return make([]byte, n)
}

// free gives back a block alloc returned (b may be resliced from its
// start: b[:0] frees it too). A block of the Go heap is left to the
// collector.
func (m *offHeap) free(b []byte) {
	if cap(b) == 0 {
		return
	}
	p := unsafe.SliceData(b[:1])
	if whole, ok := m.maps[p]; ok {
		delete(m.maps, p)
		m.mapped -= cap(b)
		unmapBlock(whole)
	}
}

// freeAll gives back every block mapped.
func (m *offHeap) freeAll() {
	for p, whole := range m.maps {
		delete(m.maps, p)
		unmapBlock(whole)
	}
	m.mapped = 0
}
