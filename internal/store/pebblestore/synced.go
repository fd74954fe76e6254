package pebblestore

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// logMarks tells when a batch applied without a sync of its own (a
// replay's close) is durable: once a batch applied after it has been
// synced, since the write-ahead log keeps the order batches were applied
// in. A close takes a mark once it is applied (closed); a claim takes the
// marks applied so far before it applies its batch, and passes them on as
// durable once its sync is done. A close whose mark no later sync covers
// within logMarkWait syncs the log itself; SyncLog makes every close
// applied so far durable at once (a replay at the end of its input, where no
// claim follows).
type logMarks struct {
	applied atomic.Uint64 // marks taken by unsynced batches once applied

	mu      sync.Mutex
	durable uint64        // every mark up to this one is durable
	moved   chan struct{} // closed when durable moves
}

// logMarkWait is how long a close waits for a claim's sync to make it
// durable before it syncs the log itself: a safety net. A replay syncs a
// claim every few milliseconds, and syncs the log (SyncLog) once its
// claims are done.
const logMarkWait = 250 * time.Millisecond

func newLogMarks() *logMarks { return &logMarks{moved: make(chan struct{})} }

// closed returns the mark of a batch just applied without a sync.
func (l *logMarks) closed() uint64 { return l.applied.Add(1) }

// before returns the marks of the batches applied so far: a batch about to
// be applied follows them all in the log.
func (l *logMarks) before() uint64 { return l.applied.Load() }

// synced records that a batch that followed every mark up to m in the log
// is durable.
func (l *logMarks) synced(m uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m > l.durable {
		l.durable = m
		close(l.moved)
		l.moved = make(chan struct{})
	}
}

// await returns once mark m is durable: covered by a later batch's sync,
// or, when none came within logMarkWait, by a sync of the log of its own.
func (l *logMarks) await(db *pebble.DB, m uint64) error {
	timer := time.NewTimer(logMarkWait)
	defer timer.Stop()
	for {
		l.mu.Lock()
		done, moved := l.durable >= m, l.moved
		l.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-moved:
		case <-timer.C:
			return l.sync(db)
		}
	}
}

// sync syncs the log: every mark taken so far is durable.
func (l *logMarks) sync(db *pebble.DB) error {
	// A record of no data, synced: everything before it is durable.
	upTo := l.before()
	if err := db.LogData(nil, pebble.Sync); err != nil {
		return err
	}
	l.synced(upTo)
	return nil
}

// SyncLog makes every close applied so far durable (those StartClosePathsOf
// applied without a sync of their own, which a later claim's sync would
// otherwise make durable).
func (s *Store) SyncLog() (err error) {
	if err := s.usable(); err != nil {
		return err
	}
	defer s.fatal.recover(&err)
	if err := s.marks.sync(s.db); err != nil {
		s.fatal.fail(fmt.Errorf("pebblestore: write-ahead log: %w", err))
		return s.fatal.Err()
	}
	return nil
}
