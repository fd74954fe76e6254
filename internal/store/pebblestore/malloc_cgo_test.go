//go:build cgo

package pebblestore

import (
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"unsafe"
)

// mallocState returns, from malloc_info, the number of arenas and the
// bytes the C allocator holds from the system: its heaps and the chunks it
// has mmapped.
func mallocState(t *testing.T) (arenas int, held int64) {
	t.Helper()
	info := mallocInfo()
	if info == "" {
		t.Fatal("malloc_info gave nothing")
	}
	arenas = len(regexp.MustCompile(`<heap nr="\d+">`).FindAllString(info, -1))
	mmap := regexp.MustCompile(`<total type="mmap" count="\d+" size="(\d+)"/>`).FindStringSubmatch(info)
	// The last <system type="current"> is the total over every arena.
	heaps := regexp.MustCompile(`<system type="current" size="(\d+)"/>`).FindAllStringSubmatch(info, -1)
	if mmap == nil || heaps == nil {
		t.Fatalf("no totals in malloc_info:\n%s", info)
	}
	m, _ := strconv.ParseInt(mmap[1], 10, 64)
	h, _ := strconv.ParseInt(heaps[len(heaps)-1][1], 10, 64)
	return arenas, m + h
}

// Threads that allocate at once share one arena: a block freed anywhere
// goes back where the next one is taken from, instead of staying in the
// arena of the thread that happened to read it.
func TestMallocOneArena(t *testing.T) {
	if !mallocTuned() {
		t.Skip("C allocator not tuned: not glibc, or malloc settings in the environment")
	}
	const threads, blocks = 8, 64
	var wg sync.WaitGroup
	start := make(chan struct{})
	held := make([][]unsafe.Pointer, threads)
	for i := range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			<-start
			for range blocks {
				held[i] = append(held[i], cCalloc(32<<10))
			}
		}()
	}
	close(start)
	wg.Wait()
	arenas, _ := mallocState(t)
	for _, ps := range held {
		for _, p := range ps {
			cFree(p)
		}
	}
	if arenas != 1 {
		t.Errorf("%d arenas after %d threads allocated at once, want 1", arenas, threads)
	}
}

// Freeing a memtable gives its memory back: with glibc's dynamic
// threshold, the first one freed would raise the mmap threshold to its
// size, and the next ones would be carved out of the heap and kept there
// (up to twice their size free at its top).
func TestMallocMemtablesGivenBack(t *testing.T) {
	if !mallocTuned() {
		t.Skip("C allocator not tuned: not glibc, or malloc settings in the environment")
	}
	for _, size := range []int{minMemTableSize, maxMemTableSize} {
		_, before := mallocState(t)
		for round := range 3 {
			p := cCalloc(size)
			cFree(p)
			// What the heap may keep free at its top (the trim threshold).
			if _, after := mallocState(t); after > before+1<<20 {
				t.Errorf("memtable of %d bytes, round %d: the allocator holds %d bytes after its free, %d before", size, round, after, before)
			}
		}
	}
}
