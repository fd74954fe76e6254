//go:build cgo

package pebblestore

// With cgo, Pebble allocates its block cache and memtables with C's malloc
// (calloc), outside the Go heap and its soft limit. glibc's defaults let
// that memory grow well past what Pebble holds:
//
//   - an arena per thread that mallocs (up to eight per core): a block is
//     freed into the arena of the thread that allocated it, and each arena
//     keeps its free chunks and the free top of its heap;
//   - a dynamic mmap threshold: the first memtable (2 to 16 MiB) is
//     mmapped, but freeing it raises the threshold to its size and the trim
//     threshold to twice that, so every later memtable is carved out of an
//     arena's heap, zeroed there page by page, and up to 32 MiB free at the
//     top of each heap is kept.
//
// In a durable replay of a shuffled archive of a million conversations,
// glibc held about 136 MiB in 12 arenas and mmapped chunks for Pebble's
// 76 MiB in use (docs/PERFORMANCE.md, "Memory").
//
// So, where the C library is glibc, a constructor sets, before any thread
// mallocs: one arena (M_ARENA_MAX), and fixed mmap and trim thresholds of
// 1 MiB, under the smallest memtable (2 MiB) and above Pebble's blocks: a
// memtable is then mmapped and unmapped when freed (the heap's free top,
// at most 1 MiB, cannot hold one), and the heap that holds the blocks gives
// back a free top past 1 MiB. An environment that sets glibc's malloc
// (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, or any
// glibc.malloc tunable in GLIBC_TUNABLES) keeps its own settings. Other C
// libraries (musl) are left as they are.

/*
#include <stdlib.h>
#include <string.h>

#if defined(__GLIBC__)
#include <malloc.h>
#include <stdio.h>

static int flowmetrics_malloc_tuned;

__attribute__((constructor)) static void flowmetrics_tune_malloc(void) {
	const char *t = getenv("GLIBC_TUNABLES");
	if (t != NULL && strstr(t, "glibc.malloc.") != NULL) {
		return;
	}
	if (getenv("MALLOC_ARENA_MAX") != NULL || getenv("MALLOC_MMAP_THRESHOLD_") != NULL ||
	    getenv("MALLOC_TRIM_THRESHOLD_") != NULL) {
		return;
	}
	if (mallopt(M_ARENA_MAX, 1) && mallopt(M_MMAP_THRESHOLD, 1 << 20) &&
	    mallopt(M_TRIM_THRESHOLD, 1 << 20)) {
		flowmetrics_malloc_tuned = 1;
	}
}

static int flowmetrics_malloc_is_tuned(void) { return flowmetrics_malloc_tuned; }

// flowmetrics_malloc_info writes malloc_info's XML into buf (at most n
// bytes) and returns its length, or -1.
static long flowmetrics_malloc_info(char *buf, size_t n) {
	char *p = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&p, &len);
	if (f == NULL) {
		return -1;
	}
	if (malloc_info(0, f) != 0) {
		fclose(f);
		free(p);
		return -1;
	}
	fclose(f);
	if (len > n) {
		len = n;
	}
	memcpy(buf, p, len);
	free(p);
	return (long)len;
}
#else
static int flowmetrics_malloc_is_tuned(void) { return 0; }
static long flowmetrics_malloc_info(char *buf, size_t n) { return -1; }
#endif
*/
import "C"

import "unsafe"

// mallocTuned reports whether the C allocator's settings above are in
// effect (glibc, and no malloc settings in the environment).
func mallocTuned() bool { return C.flowmetrics_malloc_is_tuned() != 0 }

// mallocInfo returns glibc's malloc_info XML (its arenas, their free and
// mmapped bytes), or "" with another C library.
func mallocInfo() string {
	buf := make([]byte, 1<<20)
	n := C.flowmetrics_malloc_info((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
	if n < 0 {
		return ""
	}
	return string(buf[:n])
}

// cCalloc and cFree allocate and free as Pebble's manual package does.
func cCalloc(n int) unsafe.Pointer { return C.calloc(C.size_t(n), 1) }
func cFree(p unsafe.Pointer)       { C.free(p) }
