package pebblestore

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// unindexedKey marks a store whose deadline index may lack the entries of
// open paths: written, synced, before the first claim that files none
// (DeferPathIndex), and deleted in the synced batch that completes the
// index again (indexPaths). While it is there, every ClosePaths, and every
// Open with paths on, first files an entry for each open path from the
// headers, so a replay killed halfway leaves no path that never closes.
var unindexedKey = []byte("x/paths-unindexed")

// DeferPathIndex stops filing open paths in the deadline index, for a
// caller that names every close it makes by its conversation (a replay,
// whose clock names the paths due: ClosePathsOf): its claims then write no
// index entry and its closes delete none, a record each per conversation
// fewer in the memtable, the log and the tables. The first ClosePaths
// (the replay's closes at the end of its input) files the open paths from
// their headers before it reads the index, and a store opened again after
// a crash does the same at Open. A store without paths is left as it is.
func (s *Store) DeferPathIndex() (err error) {
	if s.opts.Paths == nil {
		return nil
	}
	if err := s.usable(); err != nil {
		return err
	}
	defer s.fatal.recover(&err)
	s.indexMu.Lock()
	defer s.indexMu.Unlock()
	if s.unindexed.Load() {
		return nil
	}
	if err := s.db.Set(unindexedKey, nil, pebble.Sync); err != nil {
		return fmt.Errorf("pebblestore: defer path index: %w", err)
	}
	s.unindexed.Store(true)
	return nil
}

// openUnindexed completes the index at Open when an earlier process left
// it incomplete (DeferPathIndex, then no ClosePaths before it ended).
func (s *Store) openUnindexed() error {
	_, closer, err := s.db.Get(unindexedKey)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pebblestore: open: %w", err)
	}
	closer.Close()
	s.unindexed.Store(true)
	if s.opts.Paths == nil {
		return nil // completed by the first Open with paths on
	}
	return s.indexPaths()
}

// indexPaths files every open path in the deadline index under the
// deadline its header says it is filed under, then deletes the marker, in
// batches of sweepChunk headers, the last one synced (the log keeps their
// order: a crash before it leaves the marker, and the next Open files them
// again; filing an entry that is there already changes nothing). Claims
// wait meanwhile (indexMu), so none writes a header the scan has passed
// without its entry. A close by name beside it may close a path the scan
// filed: its entry is then stale, which the closer drops as it does any.
func (s *Store) indexPaths() error {
	s.indexMu.Lock()
	defer s.indexMu.Unlock()
	if !s.unindexed.Load() {
		return nil
	}
	b := s.db.NewBatch()
	defer func() { b.Close() }()
	floor := int64(0)
	n := 0
	err := s.scan(keyPrefix, func(k, v []byte) error {
		id, ok := headerOf(k)
		if !ok {
			return nil // one of a conversation's keys
		}
		h, err := decodeHeader(v)
		if err != nil {
			return fmt.Errorf("pebblestore: header of %q: %w", id, err)
		}
		p := h.path
		if p.Closed || p.Due == 0 {
			return nil
		}
		at := p.Filed
		if at == 0 {
			at = p.Due
		}
		if err := b.Set(dueKey(at, string(id)), nil, nil); err != nil {
			return err
		}
		if floor == 0 || at < floor {
			floor = at
		}
		if n++; n%sweepChunk == 0 {
			if err := b.Commit(pebble.NoSync); err != nil {
				return err
			}
			b.Close()
			b = s.db.NewBatch()
		}
		return nil
	})
	if err == nil {
		err = b.Delete(unindexedKey, nil)
	}
	if err == nil {
		err = b.Commit(pebble.Sync)
	}
	if err != nil {
		return fmt.Errorf("pebblestore: file open paths: %w", err)
	}
	if floor != 0 {
		s.lowerFloor(floor)
	}
	s.unindexed.Store(false)
	return nil
}
