package pebblestore

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// pacer spreads the writes of the store's tables (memtable flushes and
// compactions) over time, so that they do not hold up the write-ahead
// log's syncs, which every acknowledgement waits for.
//
// A log sync waits for the writes the disk was given before it: a table
// written as fast as the disk takes it (Pebble starts its writeback every
// BytesPerSync, 512 KiB) keeps megabytes ahead of every sync while it is
// written. On serve at 10,000 events/s offered, the log's syncs that ran
// beside a memtable flush took 5.9 ms at the median against 0.7 ms for
// the others, and such syncs are about 1 % of all: the p99
// (docs/PERFORMANCE.md, "serve's tail at 10,000 events/s"). Written at
// rate bytes per second, its writeback started every pacedBytesPerSync,
// a table is a trickle beside the log: BenchmarkLogSyncBesideTable.
//
// The pacing gives way whenever the store falls behind: while writes are
// stalled (a memtable filled before the one before it was flushed), while
// level 0 holds l0HurryThreshold tables (writes stop at
// l0StopWritesThreshold) and while the store closes, tables are written
// as fast as the disk takes them. So pacing delays flushes and
// compactions, and if ingest ever waits for one, the rest of it is written
// at full speed.
type pacer struct {
	rate float64 // bytes per second of each table being written
	// l0Tables counts the tables in level 0; nil while the store opens.
	l0Tables atomic.Pointer[func() int64]
	stalled  atomic.Bool
	closing  atomic.Bool // the store is closing: Close waits for compactions
	// now and sleep are the clock (time.Now and time.Sleep; tests pass
	// their own).
	now   func() time.Time
	sleep func(time.Duration)
	// behind caches whether level 0 is backed up, asked of db at most
	// every pacerCheckEvery.
	behind    atomic.Bool
	checkedAt atomic.Int64 // unix ns
}

const (
	// pacedBytesPerSync is how often a paced table's writeback starts
	// (Pebble's BytesPerSync; its default is 512 KiB).
	pacedBytesPerSync = 128 << 10
	// l0HurryThreshold: with this many tables in level 0, compactions and
	// flushes are not paced (writes stop at l0StopWritesThreshold).
	l0HurryThreshold = l0StopWritesThreshold - 2
	pacerCheckEvery  = 50 * time.Millisecond
	// pacerSlack is how far ahead of its rate a table may get before its
	// writer sleeps: fewer, longer sleeps.
	pacerSlack = 4 * time.Millisecond
)

// newPacer returns a pacer of rate bytes per second; nil for none.
func newPacer(rate int64) *pacer {
	if rate <= 0 {
		return nil
	}
	return &pacer{rate: float64(rate), now: time.Now, sleep: time.Sleep}
}

// watch has the pacer follow db's level 0.
func (p *pacer) watch(db *pebble.DB) {
	l0 := func() int64 { return db.Metrics().Levels[0].TablesCount }
	p.l0Tables.Store(&l0)
}

// hurry reports whether tables must be written at full speed.
func (p *pacer) hurry() bool {
	if p.stalled.Load() || p.closing.Load() {
		return true
	}
	l0 := p.l0Tables.Load()
	if l0 == nil {
		// Opening: the flush of a replayed log.
		return true
	}
	now := p.now().UnixNano()
	if at := p.checkedAt.Load(); now-at >= int64(pacerCheckEvery) && p.checkedAt.CompareAndSwap(at, now) {
		p.behind.Store((*l0)() >= l0HurryThreshold)
	}
	return p.behind.Load()
}

// listen has the pacer follow the store's write stalls.
func (p *pacer) listen(l *pebble.EventListener) {
	begin, end := l.WriteStallBegin, l.WriteStallEnd
	l.WriteStallBegin = func(i pebble.WriteStallBeginInfo) {
		p.stalled.Store(true)
		if begin != nil {
			begin(i)
		}
	}
	l.WriteStallEnd = func() {
		p.stalled.Store(false)
		if end != nil {
			end()
		}
	}
}

// file returns f paced, if it is a table (name ends in .sst).
func (p *pacer) file(name string, f vfs.File) vfs.File {
	if p == nil || !strings.HasSuffix(name, ".sst") {
		return f
	}
	return &pacedFile{File: f, p: p}
}

type pacedFile struct {
	vfs.File
	p    *pacer
	next time.Time // when the bytes written so far are due, at the rate
}

func (f *pacedFile) Write(b []byte) (int, error) {
	n, err := f.File.Write(b)
	now := f.p.now()
	if f.next.Before(now) {
		f.next = now
	}
	f.next = f.next.Add(time.Duration(float64(n) / f.p.rate * float64(time.Second)))
	if ahead := f.next.Sub(now); ahead > pacerSlack {
		if f.p.hurry() {
			f.next = now
		} else {
			f.p.sleep(ahead)
		}
	}
	return n, err
}
