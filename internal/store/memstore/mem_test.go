package memstore

import (
	"context"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// TestOffHeapGivesBackWhatItMaps: blocks come zeroed and writable, from a
// huge page boundary where mapped, and every mapped byte is given back.
func TestOffHeapGivesBackWhatItMaps(t *testing.T) {
	var m offHeap
	var blocks [][]byte
	for _, n := range []int{100, hugePage, hugePage + 1, 3 * hugePage, hugePage, hugePage, hugePage, hugePage, hugePage} {
		b := m.alloc(n)
		if len(b) != n {
			t.Fatalf("alloc(%d): %d bytes", n, len(b))
		}
		for _, at := range []int{0, n / 2, n - 1} {
			if b[at] != 0 {
				t.Fatalf("alloc(%d): byte %d is %d, not zero", n, at, b[at])
			}
			b[at] = 1
		}
		if _, mapped := m.maps[unsafe.SliceData(b)]; mapped && uintptr(unsafe.Pointer(unsafe.SliceData(b)))%hugePage != 0 {
			t.Errorf("alloc(%d): mapped off a huge page boundary", n)
		}
		blocks = append(blocks, b)
	}
	if runtime.GOOS == "linux" && (len(m.maps) != 8 || m.mapped != 11*hugePage) {
		t.Fatalf("%d blocks mapped, %d bytes; want 8 and %d (the small one from the Go heap)", len(m.maps), m.mapped, 11*hugePage)
	}
	m.free(blocks[3][:0])
	m.free(blocks[0]) // the Go heap's: left to the collector
	if runtime.GOOS == "linux" && (len(m.maps) != 7 || m.mapped != 8*hugePage) {
		t.Fatalf("after a free: %d blocks mapped, %d bytes; want 7 and %d", len(m.maps), m.mapped, 8*hugePage)
	}
	m.freeAll()
	if len(m.maps) != 0 || m.mapped != 0 {
		t.Fatalf("after freeAll: %d blocks mapped, %d bytes", len(m.maps), m.mapped)
	}
}

// TestCloseGivesBackTheConversations: a closed store maps nothing, and a
// closed store's calls find none of what it held.
func TestCloseGivesBackTheConversations(t *testing.T) {
	ctx := context.Background()
	s := New(store.Options{Paths: &flowmetrics.PathOptions{}})
	reqs := make([]flowmetrics.ClaimRequest, 0, 2000)
	for i := range 100_000 {
		reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: string(rune('a'+i%26)) + string(rune(i)), Occurrences: occs("k")})
		if len(reqs) == cap(reqs) {
			if _, err := s.Claim(ctx, reqs); err != nil {
				t.Fatal(err)
			}
			reqs = reqs[:0]
		}
	}
	if runtime.GOOS == "linux" && s.convs.mem.mapped == 0 {
		t.Fatal("a store of 100,000 conversations mapped nothing")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.convs.mem.mapped != 0 || s.convs.n != 0 {
		t.Fatalf("closed: %d bytes mapped, %d conversations", s.convs.mem.mapped, s.convs.n)
	}
	if _, err := s.Sweep(ctx); err == nil {
		t.Error("Sweep of a closed store: no error")
	}
	if _, err := s.ClosePaths(ctx, time.Now(), 0, func(flowmetrics.ClosedPath) []flowmetrics.PathPoint { return nil }); err == nil {
		t.Error("ClosePaths of a closed store: no error")
	}
}
