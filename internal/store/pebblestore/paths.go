package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// trackPath applies a request of c's conversation to its path state (in the
// header), and marks the fresh occurrences AfterClose when the path had
// closed. It reports whether the change must be synced (an end event; a
// request that only kept the path open need not be: after a crash the path
// closes at most a Step earlier).
func (s *Store) trackPath(c *staged, fresh []flowmetrics.Occurrence, ended bool, now time.Time) (sync bool) {
	if c.h.path.Closed {
		for i := range fresh {
			fresh[i].AfterClose = true
		}
	}
	p, changed := s.opts.Next(c.h.path, len(fresh) > 0, ended, now)
	if !changed {
		return false
	}
	sync = p.Ended != c.h.path.Ended
	c.h.path = p
	c.h.changed = now.UnixNano()
	c.dirty = true
	return sync
}

// fileIndex moves c's entry in the deadline index when the header it
// writes files its path elsewhere than the header it read, and returns the
// new deadline (0 when none).
func fileIndex(b *pebble.Batch, c *staged) (int64, error) {
	at := c.h.path.Filed
	if c.h.path.Closed {
		at = 0
	}
	if at == c.filed {
		return 0, nil
	}
	if c.filed != 0 {
		if err := b.Delete(dueKey(c.filed, c.id), nil); err != nil {
			return 0, err
		}
	}
	if at != 0 {
		if err := b.Set(dueKey(at, c.id), nil, nil); err != nil {
			return 0, err
		}
	}
	return at, nil
}

// lowerFloor makes sure the next ClosePaths scans the index from at (or
// earlier): called after a commit that filed a path at at.
func (s *Store) lowerFloor(at int64) {
	for {
		f := s.dueFloor.Load()
		if at >= f || s.dueFloor.CompareAndSwap(f, at) {
			return
		}
	}
}

// closeExamine bounds the index entries one ClosePaths call looks at, in
// multiples of its limit: entries of paths that were closed, expired or
// filed again are dropped on the way, and an entry whose path is not due
// yet (its deadline moved after it was filed) is filed again; the call
// reads on past them, up to this bound.
const closeExamine = 4

// ClosePaths implements flowmetrics.Store: it reads the deadline index up
// to asOf, locks the conversations found, checks each one's path state
// (in its header) again under its lock, and commits the closed marks, the
// index changes and the outbox entry of their points in one synced batch.
// It reads as many entries as it has paths left to close: when some of
// them were stale (dropped or filed again), it reads on, in another round
// with a batch of its own, up to closeExamine times limit entries in all.
//
// The index is read from a floor kept in memory: every entry below it was
// deleted by an earlier call or round (a claim that files a path below it
// lowers it), so a call does not step over the deleted entries of the
// calls before it, which Pebble keeps until a compaction.
func (s *Store) ClosePaths(ctx context.Context, asOf time.Time, limit int, derive flowmetrics.Deriver) (closed int, err error) {
	if err := s.canClose(ctx); err != nil {
		return 0, err
	}
	defer s.fatal.recover(&err)
	if limit <= 0 {
		limit = store.ClosePathsLimit
	}
	for examined := 0; closed < limit && examined < closeExamine*limit; {
		want := min(limit-closed, closeExamine*limit-examined)
		n, found, err := s.closeRound(asOf, want, derive)
		if err != nil {
			return closed, err // the rounds before are closed
		}
		closed += n
		examined += found
		if found < want {
			break // every entry due was read
		}
	}
	return closed, nil
}

// closeRound reads up to n entries of the deadline index due at asOf, from
// the floor, and closes those due in one synced batch; it returns how many
// it closed and how many entries it read.
func (s *Store) closeRound(asOf time.Time, n int, derive flowmetrics.Deriver) (closed, found int, err error) {
	floor := s.dueFloor.Load()
	var cs []closing
	err = s.scanRange(dueKey(floor, ""), dueKey(asOf.UnixNano()+1, ""), func(k, _ []byte) error {
		if len(cs) >= n {
			return errStop
		}
		k = k[len(duePrefix):]
		if len(k) < 8 {
			return nil
		}
		cs = append(cs, closing{id: string(k[8:]), at: int64(binary.BigEndian.Uint64(k[:8]))})
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return 0, 0, err
	}
	if len(cs) == 0 {
		return 0, 0, nil
	}
	closed, last, pc, err := s.closeAll(cs, len(cs), asOf, derive, false)
	if err != nil {
		return 0, 0, err
	}
	if err := pc.wait(); err != nil {
		return 0, 0, err
	}
	// Every entry before last's deadline is gone now, unless a claim filed
	// one there since the round began (it lowered the floor, and the swap
	// fails).
	if last != 0 {
		s.dueFloor.CompareAndSwap(floor, max(last, floor))
	}
	return closed, len(cs), nil
}

// ClosePathsOf implements flowmetrics.PathCloser: it closes those of the
// named conversations whose path is open and due at asOf, as ClosePaths
// would (their entries in the deadline index go with the close), in one
// synced batch with one outbox entry. A replay names the conversations
// whose end its clock has passed, while their headers are still recent.
func (s *Store) ClosePathsOf(ctx context.Context, ids []string, asOf time.Time, derive flowmetrics.Deriver) (closed int, err error) {
	if err := s.canClose(ctx); err != nil {
		return 0, err
	}
	defer s.fatal.recover(&err)
	cs := s.named(ids)
	if len(cs) == 0 {
		return 0, nil
	}
	closed, _, pc, err := s.closeAll(cs, len(cs), asOf, derive, false)
	if err != nil {
		return 0, err
	}
	if err := pc.wait(); err != nil {
		return 0, err
	}
	return closed, nil
}

// StartClosePathsOf is ClosePathsOf in two halves, as StartClaim is Claim's:
// it returns once the closes are applied (every later claim and close sees
// them) without waiting for their sync, and wait waits until they are
// durable; their points are delivered only then. wait must be called. A
// replay applies its closes beside its claims this way: the sync of a
// close overlaps the claims after it instead of holding them up.
func (s *Store) StartClosePathsOf(ctx context.Context, ids []string, asOf time.Time, derive flowmetrics.Deriver) (closed int, wait func() error, err error) {
	if err := s.canClose(ctx); err != nil {
		return 0, nil, err
	}
	defer s.fatal.recover(&err)
	cs := s.named(ids)
	if len(cs) == 0 {
		return 0, func() error { return nil }, nil
	}
	closed, _, pc, err := s.closeAll(cs, len(cs), asOf, derive, true)
	if err != nil {
		return 0, nil, err
	}
	return closed, pc.wait, nil
}

// named returns the closings of ids, each valid id once.
func (s *Store) named(ids []string) []closing {
	seen := make(map[string]bool, len(ids))
	cs := make([]closing, 0, len(ids))
	for _, id := range ids {
		if store.CheckID(id) == nil && !seen[id] {
			seen[id] = true
			cs = append(cs, closing{id: id, at: byName})
		}
	}
	return cs
}

func (s *Store) canClose(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.opts.Paths == nil {
		return flowmetrics.ErrPathsUnsupported
	}
	return s.usable()
}

// byName is closing.at of a conversation named to ClosePathsOf, not found
// in the deadline index.
const byName = -1

// closeAll closes up to limit of found (entries of the deadline index in
// deadline order, or named conversations) that are due at asOf, under
// their locks, in one synced batch with the outbox entry of their points.
// last is the deadline of the last index entry it dealt with. With
// overlap, the batch is applied without waiting for its sync (pc.wait
// waits); otherwise it is committed, synced, before closeAll returns.
// pc.wait must be called.
func (s *Store) closeAll(found []closing, limit int, asOf time.Time, derive flowmetrics.Deriver, overlap bool) (closed int, last int64, pc *pendingClose, err error) {
	ids := make([]string, len(found))
	for i, f := range found {
		ids[i] = f.id
	}
	unlock := s.stripes.Lock(ids)
	defer unlock()
	var rewrote []string // the conversations of headers
	// The headers claims wrote of them are not what the batch writes;
	// and if it fails, holding none of them costs only a read.
	defer func() { s.recent.forget(rewrote) }()
	now := s.opts.Now()
	b := s.db.NewBatch()
	defer func() {
		if b != nil {
			b.Close()
		}
	}()
	// Headers are point reads (Get stops at the newest level that holds
	// one, the memtable when it was written lately, and Bloom filters
	// answer for the tables that do not); the keys of a conversation
	// whose header does not carry them are read through one iterator,
	// in key order, opened only when needed.
	var it *pebble.Iterator
	defer func() {
		if it != nil {
			it.Close()
		}
	}()
	iter := func() (*pebble.Iterator, error) {
		if it == nil {
			var err error
			if it, err = s.db.NewIter(&pebble.IterOptions{LowerBound: keyPrefix, UpperBound: prefixEnd(keyPrefix)}); err != nil {
				it = nil
				return nil, fmt.Errorf("pebblestore: close paths: %w", err)
			}
		}
		return it, nil
	}
	// The points are encoded as they are derived, into the outbox
	// entry's body: no slice of them all is built.
	var points pointsWriter
	// The batch is written in key order (the index's changes, then the
	// headers, then the outbox entry), as a claim's is: Pebble inserts
	// each key into its memtable from where the one before went.
	var index [][2][]byte // deadline index changes: key, and nil to delete or an empty value to set
	var headers [][2][]byte
	// The entries in deadline order, a chunk at a time of at most the
	// paths still to close, so no header is read beyond the limit.
	for rest := found; len(rest) > 0 && closed < limit; {
		cs := rest[:min(limit-closed, len(rest))]
		rest = rest[len(cs):]
		for _, c := range cs {
			if c.at != byName {
				last = max(last, c.at)
			}
		}
		if err := s.readClosing(iter, cs, asOf, now); err != nil {
			return 0, 0, nil, err
		}
		for i := range cs {
			c := &cs[i]
			if c.at != byName {
				index = append(index, [2][]byte{dueKey(c.at, c.id), nil})
			}
			switch c.action {
			case closeRefile:
				index = append(index, [2][]byte{dueKey(c.h.path.Filed, c.id), {}})
				headers = append(headers, [2][]byte{c.key, c.h.encode()})
				rewrote = append(rewrote, c.id)
			case closeNow:
				if c.at == byName && c.h.path.Filed != 0 {
					index = append(index, [2][]byte{dueKey(c.h.path.Filed, c.id), nil})
				}
				pts := derive(flowmetrics.ClosedPath{ConversationID: c.id, Ended: c.h.path.Ended, Keys: c.keys})
				for i := range pts {
					points.add(&pts[i])
				}
				c.h.path = c.h.path.Close()
				c.h.changed = now.UnixNano()
				headers = append(headers, [2][]byte{c.key, c.h.encode()})
				rewrote = append(rewrote, c.id)
				closed++
			}
		}
	}
	for _, ops := range [][][2][]byte{index, headers} {
		// Each key once: no two ops to order among themselves.
		slices.SortFunc(ops, func(a, b [2][]byte) int { return bytes.Compare(a[0], b[0]) })
		for _, op := range ops {
			var err error
			if op[1] == nil {
				err = b.Delete(op[0], nil)
			} else {
				err = b.Set(op[0], op[1], nil)
			}
			if err != nil {
				return 0, 0, nil, fmt.Errorf("pebblestore: close paths: %w", err)
			}
		}
	}
	if b.Empty() {
		return 0, last, &pendingClose{}, nil
	}
	pc = &pendingClose{s: s, points: int64(points.n)}
	if points.n > 0 {
		pc.seq = s.seq.Begin()
		if err := b.Set(outboxKey(pc.seq), points.entry(), nil); err != nil {
			s.seq.End(pc.seq, 0, false)
			return 0, 0, nil, fmt.Errorf("pebblestore: close paths: %w", err)
		}
	}
	if !overlap {
		err = b.Commit(pebble.Sync)
	} else if err = b.Commit(pebble.NoSync); err == nil {
		// Durable with the next claim's sync (or, failing one soon, a
		// sync of its own: wait).
		pc.mark, pc.unsynced = s.marks.closed(), true
	}
	if err != nil {
		if points.n > 0 {
			s.seq.End(pc.seq, 0, false)
		}
		return 0, 0, nil, fmt.Errorf("pebblestore: close paths: %w", err)
	}
	if !pc.unsynced && points.n > 0 {
		s.seq.End(pc.seq, pc.points, true)
	}
	// Every header the batch rewrote is closed or filed again: none is
	// held any longer.
	s.ended.forget(rewrote)
	return closed, last, pc, nil
}

// pendingClose is a close batch closeAll wrote: applied and, when
// unsynced, not yet known to be durable.
type pendingClose struct {
	s        *Store
	unsynced bool   // applied without a sync: durable once mark is
	mark     uint64 // its log mark (logMarks)
	seq      uint64 // its outbox entry; 0: none
	points   int64
}

// wait waits until the close is durable, and makes its outbox entry, if
// any, visible to the sinks' cursors.
func (pc *pendingClose) wait() (err error) {
	if !pc.unsynced {
		return nil
	}
	s := pc.s
	defer s.fatal.recover(&err)
	if err := s.marks.await(s.db, pc.mark); err != nil {
		// The write-ahead log failed, as for a claim (pendingClaim).
		if pc.seq != 0 {
			s.seq.End(pc.seq, 0, false)
		}
		s.fatal.fail(fmt.Errorf("pebblestore: write-ahead log: %w", err))
		return s.fatal.Err()
	}
	if pc.seq != 0 {
		s.seq.End(pc.seq, pc.points, true)
	}
	return nil
}

// closing is one deadline index entry a ClosePaths call looks at, or a
// conversation named to ClosePathsOf: what it found in the conversation's
// header, and what it does with it.
type closing struct {
	id  string
	at  int64  // the deadline the entry is filed under; byName: none
	key []byte // its header's

	h      header
	action int
	keys   []string // closeNow: the keys of its epoch
}

const (
	closeStale  = iota // closed, filed again, expired or gone: drop the entry (named: not due)
	closeRefile        // not due yet (its deadline moved): file it again
	closeNow
)

// readClosing reads the headers of cs, decides each one's action as of
// asOf and now, and reads the keys of those that close and whose header
// does not carry them (through iter's iterator); it reads in key
// order (each header, then its keys), whatever order cs is in.
func (s *Store) readClosing(iter func() (*pebble.Iterator, error), cs []closing, asOf, now time.Time) error {
	order := make([]*closing, len(cs))
	for i := range cs {
		order[i] = &cs[i]
		cs[i].key = headerKey(cs[i].id)
	}
	slices.SortFunc(order, func(a, b *closing) int { return bytes.Compare(a.key, b.key) })
	// The headers held in memory (endedHeaders) are not read; the others
	// through one iterator, its seeks in key order, as a claim reads
	// (stageAll): a Get each set up an iterator of its own.
	var hit *pebble.Iterator
	defer func() {
		if hit != nil {
			hit.Close()
		}
	}()
	for _, c := range order {
		h, held := s.ended.get(c.id)
		if !held {
			if hit == nil {
				var err error
				if hit, err = s.db.NewIter(claimIterOptions); err != nil {
					hit = nil
					return fmt.Errorf("pebblestore: close paths: %w", err)
				}
			}
			if !seek(hit, c.key) {
				if err := hit.Error(); err != nil {
					return fmt.Errorf("pebblestore: read conversation %q: %w", c.id, err)
				}
				continue // gone: stale
			}
			var err error
			if h, err = decodeHeader(hit.Value()); err != nil {
				return fmt.Errorf("pebblestore: conversation %q: %w", c.id, err)
			}
		}
		c.h = h
		p := h.path
		switch {
		case p.Closed || p == (store.Path{}) || c.at != byName && p.Filed != c.at || s.opts.Expired(time.Unix(0, h.changed), now):
			// Closed by a call that held the lock first, filed again, or
			// expired: a stale entry, nothing to close.
		case c.at == byName && p.Refile(asOf):
			// Named, not due: its entry in the index stays.
		case p.Refile(asOf):
			c.h.path.Filed = p.Due
			c.action = closeRefile
		case h.inline:
			// The header carries the keys: none to read.
			c.action = closeNow
			var err error
			if c.keys, err = h.inlineList(); err != nil {
				return fmt.Errorf("pebblestore: conversation %q: %w", c.id, err)
			}
		default:
			// Its keys follow the header.
			c.action = closeNow
			it, err := iter()
			if err != nil {
				return err
			}
			if c.keys, err = keysOf(it, c.id, c.h.epoch, c.h.keys); err != nil {
				return fmt.Errorf("pebblestore: read conversation %q: %w", c.id, err)
			}
		}
	}
	return nil
}

// keysOf returns the keys of epoch a conversation holds (n of them, as
// its header says), read through it, an iterator over every conversation's
// keys.
func keysOf(it *pebble.Iterator, id string, epoch uint64, n int) ([]string, error) {
	p := keyPrefixOf(id)
	keys := make([]string, 0, n)
	for valid := it.SeekGE(p); valid && bytes.HasPrefix(it.Key(), p); valid = it.Next() {
		if len(it.Key()) == len(p) {
			continue // the header
		}
		if e, n := binary.Uvarint(it.Value()); n > 0 && e == epoch {
			keys = append(keys, string(it.Key()[len(p):]))
		}
	}
	return keys, it.Error()
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

// dueKey is d/<at, 8 bytes BE><id>, in one allocation.
func dueKey(at int64, id string) []byte {
	b := make([]byte, 0, len(duePrefix)+8+len(id))
	b = binary.BigEndian.AppendUint64(append(b, duePrefix...), uint64(at))
	return append(b, id...)
}

// convertPaths moves path records of stores written before the path state
// lived in the conversation's header (one p/ record each) into the
// header, a chunk per batch, like convertLegacy. The deadline index
// entries stay: each is where the converted header says its path is filed.
func (s *Store) convertPaths() (err error) {
	defer s.fatal.recover(&err)
	return s.convertChunks(pathPrefix, "convert paths", func(b *pebble.Batch, k, v []byte) error {
		id := string(k[len(pathPrefix):])
		changed, p, err := decodeOldPath(v)
		if err != nil {
			return fmt.Errorf("pebblestore: path %q: %w", id, err)
		}
		h, _, err := s.header(id)
		if err != nil {
			return err
		}
		h.path = p
		h.changed = max(h.changed, changed)
		b.Set(headerKey(id), h.encode(), nil)
		return nil
	})
}

// decodeOldPath reads a p/ record: last change, deadline, flags.
func decodeOldPath(v []byte) (changed int64, p store.Path, err error) {
	changed, n := binary.Varint(v)
	if n <= 0 {
		return 0, p, errCorrupt
	}
	due, m := binary.Varint(v[n:])
	if m <= 0 || len(v) != n+m+1 {
		return 0, p, errCorrupt
	}
	f := v[n+m]
	p = store.Path{Due: due, Ended: f&pathEnded != 0, Closed: f&pathClosed != 0}
	if !p.Closed {
		p.Filed = due
	}
	return changed, p, nil
}
