package memstore

import (
	"syscall"
	"unsafe"
)

// mapBlock maps n bytes outside the Go heap, from a huge page boundary,
// asking for huge pages if huge; whole is the mapping to unmap.
func mapBlock(n int, huge bool) (b, whole []byte, ok bool) {
	size := (n + hugePage - 1) &^ (hugePage - 1)
	// A huge page more, to start at a boundary; the pages before and
	// after it are never touched, so never resident.
	whole, err := syscall.Mmap(-1, 0, size+hugePage, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, false
	}
	off := -int(uintptr(unsafe.Pointer(unsafe.SliceData(whole)))) & (hugePage - 1)
	b = whole[off : off+n : off+size]
	if huge {
		// Only advice: without it (or where the system refuses it) the
		// block is in small pages.
		_ = syscall.Madvise(whole[off:off+size], syscall.MADV_HUGEPAGE)
	}
	return b, whole, true
}

func unmapBlock(whole []byte) { _ = syscall.Munmap(whole) }
