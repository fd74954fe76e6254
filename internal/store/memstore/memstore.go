// Package memstore is the in-memory flowmetrics.Store: for tests and for
// ephemeral replays, where nothing needs to outlive the process.
package memstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// Store keeps claims and the outbox in maps guarded by one mutex.
type Store struct {
	opts store.Options

	mu      sync.Mutex
	convs   map[string]*conversation
	entries []flowmetrics.Entry
	last    uint64
	cursors map[string]uint64
	states  map[string]map[string][]byte
	closed  bool
}

type conversation struct {
	keys    map[string]struct{}
	bytes   int   // total length of the keys
	changed int64 // unix nanoseconds
}

// New returns an empty store.
func New(opts store.Options) *Store {
	return &Store{opts: opts.WithDefaults(), convs: map[string]*conversation{}, cursors: map[string]uint64{}, states: map[string]map[string][]byte{}}
}

var errClosed = errors.New("memstore: closed")

// Claim implements flowmetrics.Store.
func (s *Store) Claim(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	now := s.opts.Now()
	var out []flowmetrics.Occurrence
	var refused store.Refusals
	for i, r := range reqs {
		if err := store.CheckID(r.ConversationID); err != nil {
			refused.Add(i, flowmetrics.RefusedIDTooLong, err)
			continue
		}
		c := s.convs[r.ConversationID]
		if c != nil && s.opts.Expired(timeOf(c.changed), now) {
			c = nil
		}
		fresh := store.FilterNew(r.Occurrences, func(k string) bool {
			if c == nil {
				return false
			}
			_, ok := c.keys[k]
			return ok
		})
		if len(fresh) == 0 {
			continue
		}
		var size store.Size
		if c != nil {
			size = store.Size{Keys: len(c.keys), Bytes: c.bytes}
		}
		if err := size.Plus(fresh).Check(r.ConversationID); err != nil {
			refused.Add(i, flowmetrics.RefusedConversation, err)
			continue
		}
		if c == nil {
			c = &conversation{keys: map[string]struct{}{}}
			s.convs[r.ConversationID] = c
		}
		for _, o := range fresh {
			c.keys[o.Key] = struct{}{}
			c.bytes += len(o.Key)
		}
		c.changed = now.UnixNano()
		out = append(out, fresh...)
	}
	if len(out) > 0 {
		s.last++
		s.entries = append(s.entries, flowmetrics.Entry{Seq: s.last, Occurrences: out})
	}
	return out, refused.Err()
}

// Sweep removes expired conversations and returns how many.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	n := 0
	for id, c := range s.convs {
		if s.opts.Expired(timeOf(c.changed), now) {
			delete(s.convs, id)
			n++
		}
	}
	return n, nil
}

// Conversations returns how many conversations the store holds.
func (s *Store) Conversations() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.convs)
}

// ReadOutbox implements flowmetrics.Store.
func (s *Store) ReadOutbox(ctx context.Context, after uint64, limit int) ([]flowmetrics.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []flowmetrics.Entry
	for _, e := range s.entries {
		if e.Seq <= after {
			continue
		}
		if len(out) >= limit {
			break
		}
		out = append(out, e)
	}
	return out, nil
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
	next := map[string]uint64{}
	for _, name := range sinks {
		c, ok := s.cursors[name]
		if !ok {
			c = s.last
		}
		next[name] = c
	}
	s.cursors = next
	for name := range s.states {
		if _, ok := next[name]; !ok {
			delete(s.states, name)
		}
	}
	s.discard()
	return nil
}

// Ack implements flowmetrics.Store.
func (s *Store) Ack(ctx context.Context, sink string, seq uint64) error {
	return s.AckState(ctx, sink, seq, nil)
}

// AckState implements flowmetrics.Store.
func (s *Store) AckState(ctx context.Context, sink string, seq uint64, update flowmetrics.StateUpdate) error {
	if err := flowmetrics.CheckState(update); err != nil {
		return fmt.Errorf("memstore: ack %s: %w", sink, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.cursors[sink]; !ok {
		return errors.New("memstore: ack from unregistered sink " + sink)
	}
	if seq > s.cursors[sink] {
		s.cursors[sink] = seq
	}
	if len(update) > 0 {
		st := s.states[sink]
		if st == nil {
			st = map[string][]byte{}
			s.states[sink] = st
		}
		for k, v := range update {
			if v == nil {
				delete(st, k)
			} else {
				st[k] = bytes.Clone(v)
			}
		}
	}
	s.discard()
	return nil
}

// SinkState implements flowmetrics.Store.
func (s *Store) SinkState(ctx context.Context, sink string) (map[string][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string][]byte, len(s.states[sink]))
	for k, v := range s.states[sink] {
		out[k] = bytes.Clone(v)
	}
	return out, nil
}

func (s *Store) discard() {
	m, ok := store.MinCursor(s.cursors)
	if !ok {
		m = s.last
	}
	i := 0
	for i < len(s.entries) && s.entries[i].Seq <= m {
		i++
	}
	s.entries = append(s.entries[:0], s.entries[i:]...)
}

// OutboxDepth implements flowmetrics.Store.
func (s *Store) OutboxDepth(ctx context.Context, sink string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cursors[sink]
	var n int64
	for _, e := range s.entries {
		if e.Seq > c {
			n += int64(len(e.Occurrences))
		}
	}
	return n, nil
}

// Close implements flowmetrics.Store.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func timeOf(ns int64) time.Time { return time.Unix(0, ns) }
