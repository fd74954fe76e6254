package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// stagedPath is a conversation's path state within one Claim: as read
// (old, to delete its deadline from the index) and as it will be written.
type stagedPath struct {
	id      string
	old     *store.Path
	cur     store.Path
	changed bool
}

// stagePath reads (once per batch) the path state of r's conversation and
// applies r's end event to it.
func (s *Store) stagePath(paths map[string]*stagedPath, r flowmetrics.ClaimRequest, now time.Time) error {
	sp := paths[r.ConversationID]
	if sp == nil {
		old, err := s.getPath(r.ConversationID)
		if err != nil {
			return err
		}
		if s.opts.ExpiredPath(old, now) {
			old = nil
		}
		sp = &stagedPath{id: r.ConversationID, old: old}
		if old != nil {
			sp.cur = *old
		}
		paths[r.ConversationID] = sp
	}
	if r.Ended {
		if p, ok := s.opts.Next(&sp.cur, false, true, now); ok {
			sp.cur, sp.changed = p, true
		}
	}
	return nil
}

// claimed applies new keys to the path state, and marks them AfterClose when
// the path had closed.
func (sp *stagedPath) claimed(o store.Options, fresh []flowmetrics.Occurrence, now time.Time) []flowmetrics.Occurrence {
	if sp.cur.Closed {
		for i := range fresh {
			fresh[i].AfterClose = true
		}
	}
	if p, ok := o.Next(&sp.cur, true, false, now); ok {
		sp.cur, sp.changed = p, true
	}
	return fresh
}

// writePaths adds the changed path states and their deadline index entries
// to b.
func writePaths(b *pebble.Batch, paths map[string]*stagedPath) error {
	for id, sp := range paths {
		if !sp.changed {
			continue
		}
		if err := setPath(b, id, sp.old, sp.cur); err != nil {
			return err
		}
	}
	return nil
}

// setPath writes path state cur over old (nil: none), keeping the deadline
// index in step.
func setPath(b *pebble.Batch, id string, old *store.Path, cur store.Path) error {
	if old != nil && !old.Closed && old.Due != 0 && (cur.Closed || cur.Due != old.Due) {
		if err := b.Delete(dueKey(old.Due, id), nil); err != nil {
			return err
		}
	}
	if !cur.Closed && (old == nil || old.Closed || old.Due != cur.Due) {
		if err := b.Set(dueKey(cur.Due, id), nil, nil); err != nil {
			return err
		}
	}
	return b.Set(pathKey(id), encodePath(cur), nil)
}

func (s *Store) getPath(id string) (*store.Path, error) {
	v, closer, err := s.db.Get(pathKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pebblestore: read path %q: %w", id, err)
	}
	defer closer.Close()
	p, err := decodePath(v)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: path %q: %w", id, err)
	}
	return p, nil
}

// ClosePaths implements flowmetrics.Store: it reads the deadline index up
// to asOf, locks the conversations found, checks each one's path state
// again under its lock, and commits the closed marks and the outbox entry of
// their points in one synced batch.
func (s *Store) ClosePaths(ctx context.Context, asOf time.Time, limit int, derive flowmetrics.Deriver) (closed int, err error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if s.opts.Paths == nil {
		return 0, flowmetrics.ErrPathsUnsupported
	}
	if err := s.usable(); err != nil {
		return 0, err
	}
	defer s.fatal.recover(&err)
	if limit <= 0 {
		limit = store.ClosePathsLimit
	}
	type due struct {
		id string
		at int64
	}
	var found []due
	err = s.scanRange(duePrefix, dueKey(asOf.UnixNano()+1, ""), func(k, _ []byte) error {
		if len(found) >= limit {
			return errStop
		}
		k = k[len(duePrefix):]
		if len(k) < 8 {
			return nil
		}
		found = append(found, due{string(k[8:]), int64(binary.BigEndian.Uint64(k[:8]))})
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return 0, err
	}
	if len(found) == 0 {
		return 0, nil
	}
	ids := make([]string, len(found))
	for i, f := range found {
		ids[i] = f.id
	}
	unlock := s.stripes.Lock(ids)
	defer unlock()
	now := s.opts.Now()
	b := s.db.NewBatch()
	defer b.Close()
	var points []flowmetrics.PathPoint
	for _, f := range found {
		p, err := s.getPath(f.id)
		if err != nil {
			return 0, err
		}
		if p == nil || p.Closed || p.Due != f.at {
			// Closed by a call that held the lock first (which deleted
			// this index entry), or a stale entry: nothing to close.
			b.Delete(dueKey(f.at, f.id), nil)
			continue
		}
		cp := flowmetrics.ClosedPath{ConversationID: f.id, Ended: p.Ended}
		c, err := s.get(f.id)
		if err != nil {
			return 0, err
		}
		if c != nil && !s.opts.Expired(time.Unix(0, c.changed), now) {
			cp.Keys = c.keys
		}
		points = append(points, derive(cp)...)
		next := *p
		next.Closed, next.Due, next.Changed = true, 0, now.UnixNano()
		if err := setPath(b, f.id, p, next); err != nil {
			return 0, fmt.Errorf("pebblestore: close paths: %w", err)
		}
		closed++
	}
	if len(points) == 0 {
		if err := b.Commit(pebble.Sync); err != nil {
			return 0, fmt.Errorf("pebblestore: close paths: %w", err)
		}
		return closed, nil
	}
	seq := s.seq.Begin()
	if err := b.Set(outboxKey(seq), encodeEntry(nil, points), nil); err != nil {
		s.seq.End(seq, 0, false)
		return 0, fmt.Errorf("pebblestore: close paths: %w", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		s.seq.End(seq, 0, false)
		return 0, fmt.Errorf("pebblestore: close paths: %w", err)
	}
	s.seq.End(seq, int64(len(points)), true)
	return closed, nil
}

var errStop = errors.New("stop")

// scanRange calls fn for each key in [lo, hi).
func (s *Store) scanRange(lo, hi []byte, fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("pebblestore: scan: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if err := fn(it.Key(), it.Value()); err != nil {
			return err
		}
	}
	return it.Error()
}

// sweepPaths deletes the path states whose retention has passed (with
// their index entries).
func (s *Store) sweepPaths(ctx context.Context, now time.Time) (int, error) {
	var expired []string
	err := s.scan(pathPrefix, func(k, v []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p, err := decodePath(v); err == nil && s.opts.ExpiredPath(p, now) {
			expired = append(expired, string(k[len(pathPrefix):]))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	removed := 0
	for start := 0; start < len(expired); start += 1000 {
		chunk := expired[start:min(start+1000, len(expired))]
		unlock := s.stripes.Lock(chunk)
		b := s.db.NewBatch()
		for _, id := range chunk {
			p, err := s.getPath(id)
			if err != nil || !s.opts.ExpiredPath(p, now) || p == nil {
				continue
			}
			if !p.Closed {
				b.Delete(dueKey(p.Due, id), nil)
			}
			b.Delete(pathKey(id), nil)
			removed++
		}
		err := b.Commit(pebble.NoSync)
		b.Close()
		unlock()
		if err != nil {
			return removed, fmt.Errorf("pebblestore: sweep paths: %w", err)
		}
	}
	return removed, nil
}

func pathKey(id string) []byte { return append(bytes.Clone(pathPrefix), id...) }

func dueKey(at int64, id string) []byte {
	b := append(bytes.Clone(duePrefix), be64(uint64(at))...)
	return append(b, id...)
}

const (
	pathEnded  = 1
	pathClosed = 2
)

func encodePath(p store.Path) []byte {
	b := make([]byte, 0, 2*binary.MaxVarintLen64+1)
	b = binary.AppendVarint(b, p.Changed)
	b = binary.AppendVarint(b, p.Due)
	var f byte
	if p.Ended {
		f |= pathEnded
	}
	if p.Closed {
		f |= pathClosed
	}
	return append(b, f)
}

func decodePath(v []byte) (*store.Path, error) {
	changed, n := binary.Varint(v)
	if n <= 0 {
		return nil, errCorrupt
	}
	due, m := binary.Varint(v[n:])
	if m <= 0 || len(v) != n+m+1 {
		return nil, errCorrupt
	}
	f := v[n+m]
	return &store.Path{Changed: changed, Due: due, Ended: f&pathEnded != 0, Closed: f&pathClosed != 0}, nil
}
