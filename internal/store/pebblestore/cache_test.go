package pebblestore

import (
	"encoding/binary"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flowmetrics/flowmetrics/internal/store"
)

// TestBlockCacheBesideMemtables: Pebble reserves each memtable's size in
// the block cache, so a cache sized for the blocks alone holds nothing once
// the memtables are full-sized, and every read decodes its blocks again.
// After enough writes to grow the memtables to their largest, reads of
// flushed keys must be served from the cache.
func TestBlockCacheBesideMemtables(t *testing.T) {
	dir := t.TempDir()
	if memTableSize(dir) < maxMemTableSize {
		t.Skipf("the filesystem of %s is too small for the largest memtable (%d MiB)", dir, maxMemTableSize>>20)
	}
	s := mustOpen(t, dir, store.Options{})
	value := make([]byte, 1024)
	key := func(i int) []byte { return binary.BigEndian.AppendUint32([]byte("m/test/"), uint32(i)) }
	const n = 4 * maxMemTableSize / 1024 // four largest memtables' worth
	b := s.db.NewBatch()
	for i := range n {
		if err := b.Set(key(i), value, nil); err != nil {
			t.Fatal(err)
		}
		if b.Len() > 1<<20 {
			if err := b.Commit(pebble.NoSync); err != nil {
				t.Fatal(err)
			}
			b = s.db.NewBatch()
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ {
		for i := 0; i < n; i += 97 {
			_, closer, err := s.db.Get(key(i))
			if err != nil {
				t.Fatalf("get %d: %v", i, err)
			}
			closer.Close()
		}
	}
	m := s.db.Metrics()
	if m.BlockCache.Size == 0 || m.BlockCache.Hits == 0 {
		t.Errorf("block cache after reading flushed keys twice: got %d bytes held, %d hits, %d misses; want blocks held and hits (memtables: %d, %d bytes)",
			m.BlockCache.Size, m.BlockCache.Hits, m.BlockCache.Misses, m.MemTable.Count, m.MemTable.Size)
	}
}
