// Package pebblestore is the embedded, durable flowmetrics.Store: one Pebble
// database in the data directory holds the claims of every conversation, the
// outbox and the sinks' cursors.
//
// Pebble was picked over bbolt and Badger by BenchmarkEmbeddedCandidates
// (integration/embedbench): its write-ahead log groups the fsyncs of
// concurrent commits, which is what durable acknowledgement of many
// concurrent ingest requests needs; bbolt serialises every transaction's
// fsync.
//
// Layout:
//
//	c/<conversation id> -> last change (unix ns), then the claimed keys
//	o/<seq, 8 bytes BE>  -> outbox entry: the occurrences one Claim found new
//	k/<sink name>        -> the sink's cursor (8 bytes BE)
//	s/<sink name>\x00<key> -> one key of the sink's own state (AckState)
package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

var (
	convPrefix   = []byte("c/")
	outboxPrefix = []byte("o/")
	cursorPrefix = []byte("k/")
	statePrefix  = []byte("s/")
)

// Store is a flowmetrics.Store on a Pebble database.
type Store struct {
	db      *pebble.DB
	opts    store.Options
	stripes store.Stripes
	seq     *store.Sequencer

	mu      sync.Mutex // guards cursors
	cursors map[string]uint64
	closed  atomic.Bool
}

// Open opens (creating if needed) the store in dir. Only one process may have
// it open at a time; Pebble locks the directory.
func Open(dir string, opts store.Options, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	db, err := pebble.Open(dir, &pebble.Options{
		Logger:       pebbleLogger{log.With("component", "pebble")},
		MemTableSize: 32 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	s := &Store{db: db, opts: opts.WithDefaults(), cursors: map[string]uint64{}}
	if err := s.load(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// load rebuilds the in-memory view of the outbox and the cursors.
func (s *Store) load() error {
	var last uint64
	var pending []store.SeqCount
	err := s.scan(outboxPrefix, func(k, v []byte) error {
		seq := binary.BigEndian.Uint64(k[len(outboxPrefix):])
		n, _ := binary.Uvarint(v)
		pending = append(pending, store.SeqCount{Seq: seq, N: int64(n)})
		last = seq
		return nil
	})
	if err != nil {
		return err
	}
	err = s.scan(cursorPrefix, func(k, v []byte) error {
		c := binary.BigEndian.Uint64(v)
		s.cursors[string(k[len(cursorPrefix):])] = c
		if c > last {
			last = c
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.seq = store.NewSequencer(last, pending)
	return nil
}

func (s *Store) scan(prefix []byte, fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
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

func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	end[len(end)-1]++
	return end
}

var errClosed = errors.New("pebblestore: closed")

// Claim implements flowmetrics.Store. Conversations of the batch are locked
// (striped) from the read of their state until the batch, claims and outbox
// entry together, is synced to the write-ahead log.
func (s *Store) Claim(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.closed.Load() {
		return nil, errClosed
	}
	convs := make([]string, len(reqs))
	for i, r := range reqs {
		convs[i] = r.ConversationID
	}
	unlock := s.stripes.Lock(convs)
	defer unlock()

	now := s.opts.Now()
	var out []flowmetrics.Occurrence
	b := s.db.NewBatch()
	defer b.Close()
	// A conversation may appear twice in one batch: the second request must
	// see the first one's keys, which are only in the batch so far.
	staged := map[string]*conversation{}
	for _, r := range reqs {
		if len(r.Occurrences) == 0 {
			continue
		}
		c, ok := staged[r.ConversationID]
		if !ok {
			var err error
			c, err = s.get(r.ConversationID)
			if err != nil {
				return nil, err
			}
			if c != nil && s.opts.Expired(time.Unix(0, c.changed), now) {
				c = nil
			}
		}
		fresh := store.FilterNew(r.Occurrences, func(k string) bool { return c != nil && c.has(k) })
		if len(fresh) == 0 {
			continue
		}
		if c == nil {
			c = &conversation{}
		}
		for _, o := range fresh {
			c.add(o.Key)
		}
		c.changed = now.UnixNano()
		staged[r.ConversationID] = c
		out = append(out, fresh...)
	}
	if len(out) == 0 {
		return nil, nil
	}
	for id, c := range staged {
		if err := b.Set(convKey(id), c.encode(), nil); err != nil {
			return nil, fmt.Errorf("pebblestore: claim: %w", err)
		}
	}
	seq := s.seq.Begin()
	if err := b.Set(outboxKey(seq), encodeEntry(out), nil); err != nil {
		s.seq.End(seq, 0, false)
		return nil, fmt.Errorf("pebblestore: claim: %w", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		s.seq.End(seq, 0, false)
		return nil, fmt.Errorf("pebblestore: claim: %w", err)
	}
	s.seq.End(seq, int64(len(out)), true)
	return out, nil
}

func (s *Store) get(id string) (*conversation, error) {
	v, closer, err := s.db.Get(convKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pebblestore: read conversation %q: %w", id, err)
	}
	defer closer.Close()
	c, err := decodeConversation(v)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: conversation %q: %w", id, err)
	}
	return c, nil
}

// Sweep deletes the conversations whose retention has passed and returns how
// many. Claim already treats them as absent; sweeping keeps the database from
// growing without bound. It holds each conversation's stripe while deciding,
// so it never deletes a conversation a concurrent Claim is refreshing.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	now := s.opts.Now()
	var expired []string
	err := s.scan(convPrefix, func(k, v []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		changed, n := binary.Varint(v)
		if n > 0 && s.opts.Expired(time.Unix(0, changed), now) {
			expired = append(expired, string(k[len(convPrefix):]))
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
			c, err := s.get(id)
			if err != nil || c == nil || !s.opts.Expired(time.Unix(0, c.changed), now) {
				continue
			}
			b.Delete(convKey(id), nil)
			removed++
		}
		err := b.Commit(pebble.NoSync)
		b.Close()
		unlock()
		if err != nil {
			return removed, fmt.Errorf("pebblestore: sweep: %w", err)
		}
	}
	return removed, nil
}

// ReadOutbox implements flowmetrics.Store.
func (s *Store) ReadOutbox(ctx context.Context, after uint64, limit int) ([]flowmetrics.Entry, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	visible := s.seq.Visible()
	if after >= visible {
		return nil, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: outboxKey(after + 1), UpperBound: outboxKey(visible + 1)})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: read outbox: %w", err)
	}
	defer it.Close()
	var out []flowmetrics.Entry
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		seq := binary.BigEndian.Uint64(it.Key()[len(outboxPrefix):])
		occs, err := decodeEntry(it.Value())
		if err != nil {
			return out, fmt.Errorf("pebblestore: outbox entry %d: %w", seq, err)
		}
		out = append(out, flowmetrics.Entry{Seq: seq, Occurrences: occs})
	}
	return out, it.Error()
}

// Cursor implements flowmetrics.Store.
func (s *Store) Cursor(ctx context.Context, sink string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cursors[sink], nil
}

// Register implements flowmetrics.Store.
func (s *Store) Register(ctx context.Context, sinks []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.db.NewBatch()
	defer b.Close()
	next := map[string]uint64{}
	for _, name := range sinks {
		c, ok := s.cursors[name]
		if !ok {
			c = s.seq.Last()
			b.Set(cursorKey(name), be64(c), nil)
		}
		next[name] = c
	}
	for name := range s.cursors {
		if _, ok := next[name]; !ok {
			b.Delete(cursorKey(name), nil)
			p := stateKey(name, "")
			if err := b.DeleteRange(p, prefixEnd(p), nil); err != nil {
				return fmt.Errorf("pebblestore: register sinks: %w", err)
			}
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("pebblestore: register sinks: %w", err)
	}
	s.cursors = next
	return s.discardLocked()
}

// Ack implements flowmetrics.Store.
func (s *Store) Ack(ctx context.Context, sink string, seq uint64) error {
	return s.AckState(ctx, sink, seq, nil)
}

// AckState implements flowmetrics.Store: the cursor and the state update are
// one synced batch.
func (s *Store) AckState(ctx context.Context, sink string, seq uint64, update flowmetrics.StateUpdate) error {
	if err := flowmetrics.CheckState(update); err != nil {
		return fmt.Errorf("pebblestore: ack %s: %w", sink, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return errClosed
	}
	cur, ok := s.cursors[sink]
	if !ok {
		return fmt.Errorf("pebblestore: ack from unregistered sink %q", sink)
	}
	if seq <= cur && len(update) == 0 {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	if seq > cur {
		b.Set(cursorKey(sink), be64(seq), nil)
	}
	for k, v := range update {
		if v == nil {
			b.Delete(stateKey(sink, k), nil)
		} else {
			b.Set(stateKey(sink, k), v, nil)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("pebblestore: ack %s: %w", sink, err)
	}
	if seq > cur {
		s.cursors[sink] = seq
	}
	return s.discardLocked()
}

// SinkState implements flowmetrics.Store.
func (s *Store) SinkState(ctx context.Context, sink string) (map[string][]byte, error) {
	if s.closed.Load() {
		return nil, errClosed
	}
	p := stateKey(sink, "")
	out := map[string][]byte{}
	err := s.scan(p, func(k, v []byte) error {
		out[string(k[len(p):])] = bytes.Clone(v)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: sink state %s: %w", sink, err)
	}
	return out, nil
}

// discardLocked deletes the entries every sink has delivered. The deletion
// need not be synced: after a crash the entries are back, but the cursors
// (synced) keep them from being delivered twice.
func (s *Store) discardLocked() error {
	m, ok := store.MinCursor(s.cursors)
	if !ok {
		m = s.seq.Visible()
	}
	if m == 0 {
		return nil
	}
	if err := s.db.DeleteRange(outboxPrefix, outboxKey(m+1), pebble.NoSync); err != nil {
		return fmt.Errorf("pebblestore: discard outbox: %w", err)
	}
	s.seq.Discard(m)
	return nil
}

// OutboxDepth implements flowmetrics.Store.
func (s *Store) OutboxDepth(ctx context.Context, sink string) (int64, error) {
	s.mu.Lock()
	c := s.cursors[sink]
	s.mu.Unlock()
	return s.seq.Depth(c), nil
}

// Close flushes and closes the database; it is safe to call twice.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	if err := s.db.Flush(); err != nil {
		s.db.Close()
		return fmt.Errorf("pebblestore: flush: %w", err)
	}
	return s.db.Close()
}

func convKey(id string) []byte  { return append(bytes.Clone(convPrefix), id...) }
func cursorKey(n string) []byte { return append(bytes.Clone(cursorPrefix), n...) }

// stateKey is s/<sink>\x00<key>: sink names hold no NUL, so one sink's
// prefix never covers another's.
func stateKey(sink, key string) []byte {
	b := append(bytes.Clone(statePrefix), sink...)
	b = append(b, 0)
	return append(b, key...)
}
func outboxKey(seq uint64) []byte { return append(bytes.Clone(outboxPrefix), be64(seq)...) }

func be64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...))
}

// Fatalf is how Pebble reports a broken invariant; it must not return.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error(msg)
	panic("pebble: " + msg)
}

// Sinks returns the names of the registered sinks.
func (s *Store) Sinks() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.cursors))
	for n := range s.cursors {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
