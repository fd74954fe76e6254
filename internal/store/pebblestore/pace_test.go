package pebblestore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// fakePace is a pacer on a clock that moves only when the pacer sleeps:
// slept is what it asked to sleep, whatever the machine's speed.
type fakePace struct {
	*pacer
	mu    sync.Mutex
	clock time.Time
	slept time.Duration
	l0    int64
}

func newFakePace(rate int64) *fakePace {
	f := &fakePace{pacer: newPacer(rate), clock: time.Unix(1_000_000, 0)}
	f.now = func() time.Time {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.clock
	}
	f.sleep = func(d time.Duration) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.clock = f.clock.Add(d)
		f.slept += d
	}
	l0 := func() int64 {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.l0
	}
	f.l0Tables.Store(&l0)
	return f
}

func (f *fakePace) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clock = f.clock.Add(d)
}

func (f *fakePace) sleptSoFar() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.slept
}

// TestPacerSpreadsTableWrites: a table's bytes are written at the pacer's
// rate (8 MiB at 32 MiB/s: a quarter of a second of sleeps, on a clock
// that moves only when the writer sleeps), other files at full speed, and
// nothing is paced while writes are stalled, while level 0 is backed up
// or while the store closes.
func TestPacerSpreadsTableWrites(t *testing.T) {
	const rate, size, chunk = 32 << 20, 8 << 20, 32 << 10
	want := time.Duration(float64(size) / rate * float64(time.Second))
	fs := vfs.NewMem()
	p := newFakePace(rate)
	write := func(name string) time.Duration {
		t.Helper()
		f, err := fs.Create(name, vfs.WriteCategoryUnspecified)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		w := p.file(name, f)
		before := p.sleptSoFar()
		buf := make([]byte, chunk)
		for range size / chunk {
			if _, err := w.Write(buf); err != nil {
				t.Fatal(err)
			}
		}
		return p.sleptSoFar() - before
	}

	if got := write("000001.sst"); got < want-pacerSlack || got > want {
		t.Errorf("a table of %d MiB at %d MiB/s: slept %v, want %v (less at most %v)", size>>20, rate>>20, got, want, pacerSlack)
	}
	for _, name := range []string{"000002.log", "MANIFEST-000003", "OPTIONS-000004"} {
		if got := write(name); got != 0 {
			t.Errorf("%s: slept %v, want no pacing but tables'", name, got)
		}
	}

	p.stalled.Store(true)
	if got := write("000005.sst"); got != 0 {
		t.Errorf("while writes are stalled: slept %v, want 0", got)
	}
	p.stalled.Store(false)

	p.mu.Lock()
	p.l0 = l0HurryThreshold
	p.mu.Unlock()
	p.advance(pacerCheckEvery)
	if got := write("000006.sst"); got != 0 {
		t.Errorf("with %d tables in level 0: slept %v, want 0", l0HurryThreshold, got)
	}
	p.mu.Lock()
	p.l0 = l0HurryThreshold - 1
	p.mu.Unlock()
	p.advance(pacerCheckEvery)
	if got := write("000007.sst"); got < want-pacerSlack-pacerCheckEvery {
		t.Errorf("once level 0 is back under %d tables: slept %v, want about %v", l0HurryThreshold, got, want)
	}

	p.closing.Store(true)
	if got := write("000008.sst"); got != 0 {
		t.Errorf("while the store closes: slept %v, want 0", got)
	}
}

// TestPacedStoreWritesItsTablesThroughThePacer: a store opened with a
// table write rate writes its flushed tables through the pacer (the flush
// sleeps for about their bytes at the rate), holds what it claimed, and
// closes.
func TestPacedStoreWritesItsTablesThroughThePacer(t *testing.T) {
	ctx := context.Background()
	const rate = 8 << 20
	fs := vfs.NewMem()
	p := newFakePace(rate)
	opts := store.Options{Now: storetest.NewClock(t0).Now}
	s, err := openPaced("db", fs, opts, p.pacer, nil)
	if err != nil {
		t.Fatal(err)
	}
	const convs = 20000
	for start := 0; start < convs; start += 1000 {
		var reqs []flowmetrics.ClaimRequest
		for i := start; i < start+1000; i++ {
			reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: fmt.Sprintf("c%06d", i), Occurrences: occs(3, 0)})
		}
		if _, err := s.Claim(ctx, reqs); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	// A compaction the flush set off writes its tables through the pacer
	// too, and is counted below only once it is done: wait for it.
	for deadline := time.Now().Add(time.Minute); s.db.Metrics().Compact.NumInProgress > 0; {
		if time.Now().After(deadline) {
			t.Fatal("a compaction still running after a minute")
		}
		time.Sleep(time.Millisecond)
	}
	var tables uint64 // written by flushes and compactions
	for _, l := range s.db.Metrics().Levels {
		tables += l.TableBytesFlushed + l.TableBytesCompacted
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if tables == 0 {
		t.Fatal("no table written")
	}
	// Each table may end up to pacerSlack ahead of its rate, unslept.
	want := time.Duration(float64(tables) / rate * float64(time.Second))
	if got := p.sleptSoFar(); got < want/2 || got > want {
		t.Errorf("tables of %d bytes at %d MiB/s: slept %v, want about %v", tables, rate>>20, got, want)
	}

	s, err = openPaced("db", fs, opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < convs; i += 997 {
		got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: fmt.Sprintf("c%06d", i), Occurrences: occs(3, 0)}})
		if err != nil || len(got) != 0 {
			t.Fatalf("claim of conversation %d again: %d new (err %v), want none", i, len(got), err)
		}
	}
}
