package pebblestore

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// TestNewConversationsReadNoTable: once the store's tables sit in the
// bottom level (where a store smaller than Pebble's base level keeps all of
// them), a claim of conversations the store does not hold is answered by
// the tables' Bloom filters and reads (almost) nothing from them. Pebble skips the
// filters of the bottom level unless the iterator asks for them; without
// them each such claim read a data block.
func TestNewConversationsReadNoTable(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := store.Options{Now: storetest.NewClock(t0).Now}
	s := mustOpen(t, dir, opts)
	const held = 20000 // c000000, c000002, …
	for start := 0; start < held; start += 1000 {
		var reqs []flowmetrics.ClaimRequest
		for i := start; i < start+1000; i++ {
			reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: fmt.Sprintf("c%06d", 2*i), Occurrences: occs(2, 0)})
		}
		if _, err := s.Claim(ctx, reqs); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.db.Compact(ctx, keyPrefix, prefixEnd(keyPrefix), false); err != nil {
		t.Fatal(err)
	}
	m := s.db.Metrics()
	if n := m.Levels[6].TablesCount; n == 0 || m.Levels[0].TablesCount != 0 {
		t.Fatalf("after the compaction: %d tables in L0, %d in L6; want all in L6", m.Levels[0].TablesCount, n)
	}
	s.Close()

	fs := &countingFS{FS: vfs.Default}
	s, err := OpenFS(dir, fs, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	claimNew := func(i int) {
		t.Helper()
		// Odd: between the held ones, all over the tables.
		id := fmt.Sprintf("c%06d", (2*i*97+1)%(2*held))
		got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: id, Occurrences: occs(2, 0)}})
		if err != nil || len(got) != 2 {
			t.Fatalf("claim of %s: %d new (%v), want 2", id, len(got), err)
		}
	}
	// The first claims, all over the key space, open the tables and read
	// their filters.
	const warm, fresh = 40, 200
	for i := range warm {
		claimNew(i * held / warm)
	}
	fs.reads.Store(0)
	for i := 1; i <= fresh; i++ {
		claimNew(i)
	}
	// A filter of 10 bits a key answers "maybe" for about 1 % of what
	// a table does not hold, and such a claim reads an index and a data
	// block: a few reads. Without the filters it was one or more a claim.
	if n := fs.reads.Load(); n > fresh/10 {
		t.Errorf("%d claims of new conversations read %d blocks from the tables, want at most %d (Bloom false positives)", fresh, n, fresh/10)
	}
	// A conversation the store holds is still found.
	got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c012344", Occurrences: occs(3, 0)}})
	if err != nil || len(got) != 1 {
		t.Errorf("claim of 3 keys, 2 held: %d new (%v), want 1", len(got), err)
	}
}

// countingFS counts the reads of table files.
type countingFS struct {
	vfs.FS
	reads atomic.Int64
}

func (c *countingFS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := c.FS.Open(name, opts...)
	if err != nil || !strings.HasSuffix(name, ".sst") {
		return f, err
	}
	return countingFile{File: f, reads: &c.reads}, nil
}

type countingFile struct {
	vfs.File
	reads *atomic.Int64
}

func (f countingFile) ReadAt(p []byte, off int64) (int, error) {
	f.reads.Add(1)
	return f.File.ReadAt(p, off)
}

// TestClaimAnswersFromTheHeader: a small conversation's header carries its
// keys (with paths on or off), and a claim answers from it which keys the
// conversation holds, reading no other record. Whatever else its prefix
// holds is deleted behind the store's back: a claim that read keys there
// would count them again.
func TestClaimAnswersFromTheHeader(t *testing.T) {
	for _, paths := range []bool{false, true} {
		opts := store.Options{}
		if paths {
			opts = pathOptions(storetest.NewClock(t0))
		}
		t.Run(fmt.Sprintf("paths=%v", paths), func(t *testing.T) { claimAnswersFromTheHeader(t, opts) })
	}
}

func claimAnswersFromTheHeader(t *testing.T, opts store.Options) {
	ctx := context.Background()
	s := mustOpen(t, t.TempDir(), opts)
	first := occs(3, 0)
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c", Occurrences: first}}); err != nil {
		t.Fatal(err)
	}
	p := keyPrefixOf("c")
	if err := s.db.DeleteRange(append(bytes.Clone(p), 0), prefixEnd(p), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c", Occurrences: occs(4, 0)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Key != occs(1, 3)[0].Key {
		t.Errorf("claim of 3 held keys and a new one: new %v, want only the 4th", got)
	}
}

// TestClaimReadsNoReadahead: a claim of many conversations reads them in
// key order, one data block each, at rising offsets of the same tables,
// which Pebble took for a scan: it asked the kernel to read ahead, then
// opened each table a second time for sequential reads. A claim's reads
// are point reads; none of that may happen.
func TestClaimReadsNoReadahead(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := store.Options{Now: storetest.NewClock(t0).Now}
	s := mustOpen(t, dir, opts)
	const held = 20000
	id := func(i int) string { return fmt.Sprintf("c%06d", i) }
	for start := 0; start < held; start += 1000 {
		var reqs []flowmetrics.ClaimRequest
		for i := start; i < start+1000; i++ {
			reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: id(i), Occurrences: occs(2, 0)})
		}
		if _, err := s.Claim(ctx, reqs); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.db.Compact(ctx, keyPrefix, prefixEnd(keyPrefix), false); err != nil {
		t.Fatal(err)
	}
	s.Close()

	fs := &readaheadFS{FS: vfs.Default}
	s, err := OpenFS(dir, fs, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Every 10th conversation, a new key each: about one data block a
	// conversation, in key order, none of them in the block cache.
	var reqs []flowmetrics.ClaimRequest
	for i := 0; i < held; i += 10 {
		reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: id(i), Occurrences: occs(3, 0)})
	}
	fs.reads.Store(0)
	got, err := s.Claim(ctx, reqs)
	if err != nil || len(got) != len(reqs) {
		t.Fatalf("claim of %d conversations, one new key each: %d new (%v)", len(reqs), len(got), err)
	}
	if fs.reads.Load() < int64(len(reqs))/10 {
		t.Fatalf("the claim read %d blocks from the tables: the test reads too little to tell", fs.reads.Load())
	}
	if n, p := fs.sequential.Load(), fs.prefetches.Load(); n != 0 || p != 0 {
		t.Errorf("a claim of %d conversations opened tables for sequential reads %d times and asked to read ahead %d times, want neither", len(reqs), n, p)
	}
}

// readaheadFS counts the reads of table files and the read-ahead asked
// for them: opens for sequential reads, and prefetches.
type readaheadFS struct {
	vfs.FS
	reads, sequential, prefetches atomic.Int64
}

func (r *readaheadFS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := r.FS.Open(name, opts...)
	if err != nil || !strings.HasSuffix(name, ".sst") {
		return f, err
	}
	for _, o := range opts {
		if o == vfs.SequentialReadsOption {
			r.sequential.Add(1)
		}
	}
	return readaheadFile{File: f, fs: r}, nil
}

type readaheadFile struct {
	vfs.File
	fs *readaheadFS
}

func (f readaheadFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.reads.Add(1)
	return f.File.ReadAt(p, off)
}

func (f readaheadFile) Prefetch(off, n int64) error {
	f.fs.prefetches.Add(1)
	return f.File.Prefetch(off, n)
}
