// Package memstore is the in-memory flowmetrics.Store: for tests and for
// ephemeral replays, where nothing needs to outlive the process.
package memstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// Store keeps the conversations (convs) under one mutex, mu, and the
// outbox under another, ob: a close call derives its paths' points under
// mu, and the delivery of the call before (which reads the outbox and
// moves cursors) goes on meanwhile. A call that changes both (Claim, a
// close) holds mu throughout and takes ob only to append its entry, so
// the entries are in the order of the calls; ob is never held while mu is
// taken.
type Store struct {
	opts store.Options

	mu     sync.Mutex
	convs  convs
	closed bool

	ob      sync.Mutex // the outbox: entries, last, cursors, states
	entries []flowmetrics.Entry
	last    uint64
	cursors map[string]uint64
	states  map[string]map[string][]byte

	// due orders the open paths (Options.Paths) by the deadline they are
	// filed under. A path filed again leaves its old item behind,
	// recognised as stale by its deadline.
	due dueHeap

	pairs store.PairSet // the cardinality guard's admitted pairs

	warmed warmed // a claim's group of lookups under way (convs.warm)
	// Room for a claim's new occurrences, empty between claims (Claim).
	fresh []flowmetrics.Occurrence
}

// dueItem files the conversation of record c, as it was at generation
// gen, under deadline due. It is stale once that conversation was started
// over or swept (the record's generation changed), or its path is filed
// under another deadline or closed; the closer also skips it once the
// conversation expired.
type dueItem struct {
	due int64
	c   uint32
	gen uint32
}

// stale reports whether it no longer files a path of t.
func (it dueItem) stale(t *convs) bool {
	c := t.rec(it.c)
	return c.gen != it.gen || c.path.Closed || c.path.Filed != it.due
}

// dueHeap is a binary min-heap of dueItems by deadline, typed so that a
// push allocates nothing (container/heap boxes each item it is given).
type dueHeap []dueItem

func (h *dueHeap) push(it dueItem) {
	*h = append(*h, it)
	h.up(len(*h) - 1)
}

func (h *dueHeap) pop() dueItem {
	old := *h
	it := old[0]
	n := len(old) - 1
	old[0] = old[n]
	old[n] = dueItem{}
	*h = old[:n]
	h.down(0)
	return it
}

func (h dueHeap) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if h[parent].due <= h[i].due {
			return
		}
		h[parent], h[i] = h[i], h[parent]
		i = parent
	}
}

func (h dueHeap) down(i int) {
	for {
		least := i
		if l := 2*i + 1; l < len(h) && h[l].due < h[least].due {
			least = l
		}
		if r := 2*i + 2; r < len(h) && h[r].due < h[least].due {
			least = r
		}
		if least == i {
			return
		}
		h[i], h[least] = h[least], h[i]
		i = least
	}
}

// init orders h as a heap.
func (h dueHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

// New returns an empty store. Its conversations' memory is given back
// when it is closed, or else once it is unreachable.
func New(opts store.Options) *Store {
	s := &Store{opts: opts.WithDefaults(), convs: newConvs(), cursors: map[string]uint64{}, states: map[string]map[string][]byte{}}
	runtime.AddCleanup(s, (*offHeap).freeAll, s.convs.mem)
	return s
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
	// The claim's new occurrences are gathered in a slice the store keeps
	// from claim to claim, then copied once into one of their number: a
	// slice grown from nothing allocated and copied them about twice over
	// (a claim of replay's has about a thousand), and the outbox kept its
	// spare room.
	out := s.fresh[:0]
	var refused store.Refusals
	w := &s.warmed
	for i, r := range reqs {
		if i%warmGroup == 0 {
			// The next group's lookups, at once (see warm).
			group := reqs[i:min(i+warmGroup, len(reqs))]
			s.convs.warm(w, func(j int) string { return group[j].ConversationID }, len(group))
		}
		if err := store.CheckID(r.ConversationID); err != nil {
			refused.Add(i, flowmetrics.RefusedIDTooLong, err)
			continue
		}
		h := w.hs[i%warmGroup]
		c, found := s.convs.find(r.ConversationID, h)
		held := found && !s.opts.Expired(timeOf(s.convs.rec(c).changed), now)
		// The request's new occurrences, at the end of out.
		start := len(out)
		out = store.AppendNew(out, r.Occurrences, func(k string) bool {
			return held && s.convs.has(c, k)
		})
		fresh := out[start:]
		var size store.Size
		if held {
			size = s.convs.size(c)
		}
		if len(fresh) > 0 {
			if err := size.Plus(fresh).Check(r.ConversationID); err != nil {
				refused.Add(i, flowmetrics.RefusedConversation, err)
				out = out[:start]
				continue
			}
		}
		track := s.opts.Paths != nil && (len(r.Occurrences) > 0 || r.Ended)
		switch {
		case held:
			if len(fresh) > 0 {
				s.convs.addKeys(c, fresh)
			}
		case !track && len(fresh) == 0:
			continue
		case found: // expired: it starts over
			s.convs.restart(c, fresh)
		default:
			c = s.convs.add(r.ConversationID, h, fresh)
		}
		if track {
			s.trackPath(c, len(fresh) > 0, r.Ended, now, fresh)
		}
		if len(fresh) > 0 {
			s.convs.rec(c).changed = now.UnixNano()
		}
	}
	// Kept for the next claim, holding nothing: the occurrences' strings
	// may share a whole decoded record.
	s.fresh = out[:0]
	if len(out) == 0 {
		return nil, refused.Err()
	}
	occs := slices.Clone(out)
	clear(out)
	s.append(flowmetrics.Entry{Occurrences: occs})
	return occs, refused.Err()
}

// HeldKeys implements flowmetrics.KeyHolder: it looks the conversations
// up as Claim does, a warmGroup at a time, under s.mu. A closed store
// holds nothing.
func (s *Store) HeldKeys(qs []flowmetrics.KeyQuery, margin time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range qs {
		qs[i].Held, qs[i].Quiet = 0, false
	}
	if s.closed {
		return
	}
	later := s.opts.Now().Add(margin)
	w := &s.warmed
	for i := 0; i < len(qs); i += warmGroup {
		group := qs[i:min(i+warmGroup, len(qs))]
		s.convs.warm(w, func(j int) string { return group[j].ConversationID }, len(group))
		for j := range group {
			q := &group[j]
			c, found := s.convs.find(q.ConversationID, w.hs[j])
			if !found {
				continue
			}
			rec := s.convs.rec(c)
			// Held at the claim only if not expired by then: expired, the
			// claim would start the conversation over, its keys new again.
			if s.opts.Expired(timeOf(rec.changed), later) {
				continue
			}
			q.Held = s.convs.held(c, q.Keys)
			// A request of held keys only changes nothing when Next says
			// so; later in time, it says so of fewer paths (a deadline
			// only moves on), so asking as of the margin's end answers
			// for every claim before it.
			q.Quiet = s.opts.Paths == nil
			if !q.Quiet {
				_, changed := s.opts.Next(rec.path, false, false, later)
				q.Quiet = !changed
			}
		}
	}
}

// trackPath updates record i's path state for a request, and marks the
// fresh occurrences AfterClose when the path had closed. s.mu is held.
func (s *Store) trackPath(i uint32, fresh, ended bool, now time.Time, occs []flowmetrics.Occurrence) {
	c := s.convs.rec(i)
	if c.path.Closed {
		for i := range occs {
			occs[i].AfterClose = true
		}
	}
	p, changed := s.opts.Next(c.path, fresh, ended, now)
	if !changed {
		return
	}
	c.changed = now.UnixNano()
	old := c.path.Filed
	c.path = p
	if p.Filed != 0 && p.Filed != old {
		s.file(i, p.Filed, now)
	}
}

// file adds an item for record i at deadline at to the heap. s.mu is
// held.
func (s *Store) file(i uint32, at int64, now time.Time) {
	s.due.push(dueItem{at, i, s.convs.rec(i).gen})
	if len(s.due) > 2*s.convs.n+1024 {
		s.compactDue(now)
	}
}

// compactDue drops the heap's stale items, and those of expired
// conversations (which they would otherwise keep in memory). s.mu is held.
func (s *Store) compactDue(now time.Time) {
	live := s.due[:0]
	for _, it := range s.due {
		if !it.stale(&s.convs) && !s.opts.Expired(timeOf(s.convs.rec(it.c).changed), now) {
			live = append(live, it)
		}
	}
	clear(s.due[len(live):])
	s.due = live
	s.due.init()
}

// ClosePaths implements flowmetrics.Store.
func (s *Store) ClosePaths(ctx context.Context, asOf time.Time, limit int, derive flowmetrics.Deriver) (int, error) {
	if limit <= 0 {
		limit = store.ClosePathsLimit
	}
	return s.closeEach(ctx, derive, func(now time.Time, take func(uint32)) {
		for n := 0; n < limit && len(s.due) > 0 && s.due[0].due <= asOf.UnixNano(); {
			it := s.due.pop()
			if it.stale(&s.convs) {
				continue
			}
			c := s.convs.rec(it.c)
			if s.opts.Expired(timeOf(c.changed), now) {
				continue
			}
			if c.path.Refile(asOf) {
				c.path.Filed = c.path.Due
				s.due.push(dueItem{c.path.Due, it.c, it.gen})
				continue
			}
			take(it.c)
			n++
		}
	})
}

// ClosePathsOf implements flowmetrics.PathCloser: it closes those of the
// named conversations whose path is open and due at asOf (their items in
// the heap become stale), with one outbox entry.
func (s *Store) ClosePathsOf(ctx context.Context, ids []string, asOf time.Time, derive flowmetrics.Deriver) (int, error) {
	return s.closeEach(ctx, derive, func(now time.Time, take func(uint32)) {
		for _, id := range ids {
			i, ok := s.convs.find(id, s.convs.hash(id))
			if !ok {
				continue
			}
			c := s.convs.rec(i)
			if c.path == (store.Path{}) || c.path.Closed || c.path.Refile(asOf) || s.opts.Expired(timeOf(c.changed), now) {
				continue // no path, closed, not due or expired
			}
			take(i)
		}
	})
}

// closeEach is a close call of ClosePaths or ClosePathsOf: under s.mu, pick
// closes the paths it chooses with take, and their points go into one
// outbox entry, in the order pick took them. It returns how many pick
// closed.
func (s *Store) closeEach(ctx context.Context, derive flowmetrics.Deriver, pick func(now time.Time, take func(uint32))) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if s.opts.Paths == nil {
		return 0, flowmetrics.ErrPathsUnsupported
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, errClosed
	}
	now := s.opts.Now()
	var closed []closing
	pick(now, func(i uint32) {
		c := s.convs.rec(i)
		closed = append(closed, closing{i, c.path.Ended})
		c.path = c.path.Close()
		c.changed = now.UnixNano()
	})
	s.addPaths(s.derive(closed, derive))
	return len(closed), nil
}

// closing is a path a close call closed: its record, and whether its
// conversation ended.
type closing struct {
	rec   uint32
	ended bool
}

// deriveApart is the fewest paths a close call derives in several
// goroutines (one per processor, each a contiguous part of them). At the
// end of a replay into the memory store every path closes at once, in
// calls of thousands, and deriving their points is most of the work: in
// one goroutine, the other processor had only the delivery of the call
// before to do.
const deriveApart = 512

// derive returns the points of the paths closed, put together once their
// number is known, so that the outbox entry is written once, not grown
// point by point. The conversations are read, not changed, while the
// parts are derived: s.mu is held.
func (s *Store) derive(closing []closing, derive flowmetrics.Deriver) []flowmetrics.PathPoint {
	if len(closing) == 0 {
		return nil
	}
	each := make([][]flowmetrics.PathPoint, len(closing))
	part := func(from, to int) {
		var sum uint64
		for g := from; g < to; g += warmGroup {
			// The group's blocks, read at once (see touchBlocks), then
			// copied and derived one by one.
			end := min(g+warmGroup, to)
			sum += s.convs.touchBlocks(func(j int) uint32 { return closing[g+j].rec }, end-g)
			for k := g; k < end; k++ {
				cp := flowmetrics.ClosedPath{Ended: closing[k].ended}
				cp.ConversationID, cp.Keys = s.convs.strings(closing[k].rec)
				each[k] = derive(cp)
			}
		}
		touched.Add(sum)
	}
	if parts := min(runtime.GOMAXPROCS(0), len(closing)/(deriveApart/2)); parts > 1 {
		var wg sync.WaitGroup
		for k := range parts {
			wg.Go(func() { part(k*len(closing)/parts, (k+1)*len(closing)/parts) })
		}
		wg.Wait()
	} else {
		part(0, len(closing))
	}
	total, some := 0, 0
	for k, p := range each {
		total += len(p)
		if len(p) > 0 {
			some = k
		}
	}
	if total == len(each[some]) {
		return each[some] // one path's points, or none
	}
	points := make([]flowmetrics.PathPoint, 0, total)
	for _, p := range each {
		points = append(points, p...)
	}
	return points
}

// addPaths appends an outbox entry of points, if any. s.mu is held.
func (s *Store) addPaths(points []flowmetrics.PathPoint) {
	if len(points) > 0 {
		s.append(flowmetrics.Entry{Paths: points})
	}
}

// append adds e to the outbox under the next sequence number. s.mu is
// held (so entries are added in the order of the calls that hold it).
func (s *Store) append(e flowmetrics.Entry) {
	s.ob.Lock()
	defer s.ob.Unlock()
	s.last++
	e.Seq = s.last
	s.entries = append(s.entries, e)
}

// Sweep removes expired conversations and returns how many.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, errClosed
	}
	now := s.opts.Now()
	n := 0
	for i := range s.convs.recs {
		if c := s.convs.rec(i); c.room != 0 && s.opts.Expired(timeOf(c.changed), now) {
			s.convs.remove(uint32(i))
			n++
		}
	}
	s.compactDue(now)
	return n, nil
}

// Conversations returns how many conversations the store holds.
func (s *Store) Conversations() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.convs.n
}

// ReadOutbox implements flowmetrics.Store.
func (s *Store) ReadOutbox(ctx context.Context, after uint64, limit int) ([]flowmetrics.Entry, error) {
	s.ob.Lock()
	defer s.ob.Unlock()
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
	s.ob.Lock()
	defer s.ob.Unlock()
	return s.cursors[sink], nil
}

// Register implements flowmetrics.Store.
func (s *Store) Register(ctx context.Context, sinks []string) error {
	s.ob.Lock()
	defer s.ob.Unlock()
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

// AckState implements flowmetrics.Store.
func (s *Store) AckState(ctx context.Context, sink string, seq uint64, update flowmetrics.StateUpdate) error {
	if err := flowmetrics.CheckState(update); err != nil {
		return fmt.Errorf("memstore: ack %s: %w", sink, err)
	}
	s.ob.Lock()
	defer s.ob.Unlock()
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
	s.ob.Lock()
	defer s.ob.Unlock()
	out := make(map[string][]byte, len(s.states[sink]))
	for k, v := range s.states[sink] {
		out[k] = bytes.Clone(v)
	}
	return out, nil
}

// discard drops the entries every cursor has passed. s.ob is held.
func (s *Store) discard() {
	m, ok := store.MinCursor(s.cursors)
	if !ok {
		m = s.last
	}
	i := 0
	for i < len(s.entries) && s.entries[i].Seq <= m {
		i++
	}
	n := copy(s.entries, s.entries[i:])
	// The delivered entries left behind the live ones must not keep their
	// occurrences alive.
	clear(s.entries[n:])
	s.entries = s.entries[:n]
}

// OutboxDepth implements flowmetrics.Store.
func (s *Store) OutboxDepth(ctx context.Context, sink string) (int64, error) {
	s.ob.Lock()
	defer s.ob.Unlock()
	c := s.cursors[sink]
	var n int64
	for _, e := range s.entries {
		if e.Seq > c {
			n += int64(len(e.Occurrences) + len(e.Paths))
		}
	}
	return n, nil
}

// Pairs implements flowmetrics.Store.
func (s *Store) Pairs(ctx context.Context) ([]flowmetrics.Pair, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pairs.List(), nil
}

// AdmitPairs implements flowmetrics.Store.
func (s *Store) AdmitPairs(ctx context.Context, pairs []flowmetrics.Pair, limit int) ([]flowmetrics.Pair, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errClosed
	}
	add := s.pairs.Missing(pairs, limit)
	for _, p := range add {
		if _, err := store.EncodePair(p); err != nil {
			return nil, fmt.Errorf("memstore: admit: %w", err)
		}
	}
	for _, p := range add {
		s.pairs.Add(p)
	}
	return s.pairs.List(), nil
}

// Close implements flowmetrics.Store.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	// Nothing reads the conversations after this: their memory goes back.
	s.convs.release()
	s.due = nil
	return nil
}

func timeOf(ns int64) time.Time { return time.Unix(0, ns) }

var (
	_ flowmetrics.Sweeper   = (*Store)(nil)
	_ flowmetrics.KeyHolder = (*Store)(nil)
)
