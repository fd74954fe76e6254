package store

import (
	"hash/fnv"
	"sort"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// DefaultRetention is how long a conversation's state is kept after its last
// change. EventBridge retries for 24 h and Genesys queues for days when AWS
// is unreachable, so a week keeps late repeats from being recounted.
const DefaultRetention = 7 * 24 * time.Hour

// Options are the settings every store takes.
type Options struct {
	// Retention after a conversation's last change; DefaultRetention if zero.
	Retention time.Duration
	// Now is the clock; time.Now if nil. Tests pass their own.
	Now func() time.Time
	// Paths, when set, turns on conversation paths (Store.ClosePaths).
	Paths *flowmetrics.PathOptions
	// TableWriteRate, when set, is the rate in bytes per second at which
	// the embedded store writes each of its tables (memtable flushes and
	// compactions) while it keeps up, so that they do not slow the syncs
	// acknowledgements wait for; 0 writes them as fast as the disk takes
	// them. Other stores ignore it.
	TableWriteRate int64
	// RecentHeaderBytes, when set, is the memory the embedded store may
	// take to hold the headers its claims wrote lately, so that a claim
	// of a conversation claimed a moment before reads nothing (serve,
	// whose claims are small); 0 holds none. Other stores ignore it.
	RecentHeaderBytes int
}

// WithDefaults fills in the zero fields.
func (o Options) WithDefaults() Options {
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Expired reports whether state last changed at changed has outlived the
// retention at now.
func (o Options) Expired(changed, now time.Time) bool {
	return now.Sub(changed) >= o.Retention
}

// Stripes serialises claims per conversation without one global lock: a
// conversation always maps to the same mutex, and a batch takes its mutexes in
// index order so two batches never deadlock.
type Stripes struct {
	mu [256]sync.Mutex
}

// Lock locks the stripes of the given conversations and returns the function
// that unlocks them.
func (s *Stripes) Lock(convs []string) (unlock func()) {
	idx := make([]int, 0, len(convs))
	seen := [256]bool{}
	for _, c := range convs {
		h := fnv.New32a()
		h.Write([]byte(c))
		i := int(h.Sum32() % 256)
		if !seen[i] {
			seen[i] = true
			idx = append(idx, i)
		}
	}
	sort.Ints(idx)
	for _, i := range idx {
		s.mu[i].Lock()
	}
	return func() {
		for j := len(idx) - 1; j >= 0; j-- {
			s.mu[idx[j]].Unlock()
		}
	}
}

// Sequencer hands out outbox sequence numbers and tracks which are still being
// written, so readers never pass an entry that is about to appear: with
// concurrent commits, entry 7 can become visible before entry 6.
type Sequencer struct {
	mu       sync.Mutex
	next     uint64
	inflight map[uint64]struct{}
	// pending is the size in occurrences of each committed entry not yet
	// discarded, in sequence order.
	pending []SeqCount
}

// SeqCount is an outbox entry's sequence number and its occurrence count.
type SeqCount struct {
	Seq uint64
	N   int64
}

// NewSequencer starts after last (the highest sequence number ever used).
func NewSequencer(last uint64, existing []SeqCount) *Sequencer {
	return &Sequencer{next: last + 1, inflight: map[uint64]struct{}{}, pending: existing}
}

// Begin allocates the next sequence number.
func (s *Sequencer) Begin() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := s.next
	s.next++
	s.inflight[seq] = struct{}{}
	return seq
}

// End marks seq as finished; committed says whether its entry exists.
func (s *Sequencer) End(seq uint64, n int64, committed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inflight, seq)
	if !committed {
		return
	}
	i := len(s.pending)
	for i > 0 && s.pending[i-1].Seq > seq {
		i--
	}
	s.pending = append(s.pending, SeqCount{})
	copy(s.pending[i+1:], s.pending[i:])
	s.pending[i] = SeqCount{seq, n}
}

// Visible returns the highest sequence number below which every entry is
// either committed or abandoned.
func (s *Sequencer) Visible() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.next - 1
	for seq := range s.inflight {
		if seq-1 < v {
			v = seq - 1
		}
	}
	return v
}

// Last returns the highest sequence number handed out.
func (s *Sequencer) Last() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.next - 1
}

// Depth returns the occurrences in entries after cursor.
func (s *Sequencer) Depth(cursor uint64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.pending), func(i int) bool { return s.pending[i].Seq > cursor })
	var n int64
	for _, p := range s.pending[i:] {
		n += p.N
	}
	return n
}

// Discard forgets entries up to and including seq.
func (s *Sequencer) Discard(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.pending), func(i int) bool { return s.pending[i].Seq > seq })
	s.pending = append(s.pending[:0], s.pending[i:]...)
}

// MinCursor returns the lowest cursor of the given sinks, and false when
// there are none.
func MinCursor(cursors map[string]uint64) (uint64, bool) {
	first := true
	var m uint64
	for _, c := range cursors {
		if first || c < m {
			m, first = c, false
		}
	}
	return m, !first
}

// FilterNew returns the occurrences of occs whose keys known does not hold,
// each key once, in order. A request may repeat a key (two participants of one
// event carrying the same attribute); it is still one occurrence.
//
// It takes time linear in len(occs) (plus what known costs): a short
// request is checked for repeats by scanning, a long one with a set, so an
// event carrying thousands of distinct keys does not cost their square.
func FilterNew(occs []flowmetrics.Occurrence, known func(string) bool) []flowmetrics.Occurrence {
	return AppendNew(nil, occs, known)
}

// AppendNew is FilterNew appending to out, for a store that gathers the new
// occurrences of a whole claim in one slice.
func AppendNew(out, occs []flowmetrics.Occurrence, known func(string) bool) []flowmetrics.Occurrence {
	var seen map[string]struct{}
	if len(occs) > scanRepeats {
		seen = make(map[string]struct{}, len(occs))
	}
	for i, o := range occs {
		if known(o.Key) {
			continue
		}
		if seen != nil {
			if _, dup := seen[o.Key]; dup {
				continue
			}
			seen[o.Key] = struct{}{}
		} else if repeated(occs[:i], o.Key) {
			continue
		}
		out = append(out, o)
	}
	return out
}

// scanRepeats is the longest request FilterNew checks for repeated keys by
// scanning: below it a scan is cheaper than building a set.
const scanRepeats = 16

func repeated(occs []flowmetrics.Occurrence, key string) bool {
	for _, o := range occs {
		if o.Key == key {
			return true
		}
	}
	return false
}

// Path is a conversation's path state, as every store keeps it when paths
// are on, next to the conversation's keys (it expires with them). The zero
// Path is a conversation with no path state yet.
type Path struct {
	// Due is when the path closes (unix ns); 0 once closed.
	Due int64
	// Filed is the deadline the conversation is filed under in the store's
	// index of open paths (0: not filed). It is at most Due: a store moves
	// the index entry only when Due moved by a Step or more, and the
	// closer, finding an entry whose path is not due yet, files it again
	// at Due (Refile). So a conversation's many requests do not each
	// rewrite the index.
	Filed  int64
	Ended  bool
	Closed bool
}

// Next returns the path state after a claim request of the conversation at
// now, and whether it changed (and must be written). fresh says the
// request claimed new keys, ended that it carried the customer.end. Every
// request is an event of the conversation, so it keeps the path open:
//
//   - the first end sets the deadline to now+Grace; later ones keep it;
//   - before the end, new keys set it to now+Idle+Step at least;
//   - a request that brings only known keys moves it only when now+Idle
//     is past it, and then to now+Idle+Step: the store writes at most once
//     per Step for such requests (none within a Step of new keys), and the
//     path closes no earlier than Idle after the last request (nor more
//     than a Step later);
//   - a closed path only has its retention refreshed by new keys.
func (o Options) Next(p Path, fresh, ended bool, now time.Time) (Path, bool) {
	step := o.Paths.Step()
	switch {
	case p.Closed:
		return p, fresh
	case ended && !p.Ended:
		p.Ended = true
		p.Due = now.Add(o.Paths.Grace).UnixNano()
	case p.Ended:
		// Ended, still open: the deadline stays; new keys move the
		// retention.
		if !fresh {
			return p, false
		}
	case fresh:
		p.Due = max(p.Due, now.Add(o.Paths.Idle).UnixNano()+int64(step))
	default:
		due := now.Add(o.Paths.Idle).UnixNano()
		if p.Due != 0 && due <= p.Due {
			return p, false
		}
		p.Due = due + int64(step)
	}
	if p.Filed == 0 || p.Due < p.Filed || p.Due-p.Filed >= int64(step) {
		p.Filed = p.Due
	}
	return p, true
}

// Refile reports whether the closer, finding p's index entry at asOf,
// files it again at p.Due rather than closing it: its deadline moved past
// asOf after it was filed.
func (p Path) Refile(asOf time.Time) bool { return p.Due > asOf.UnixNano() }

// Close returns p closed.
func (p Path) Close() Path {
	p.Closed, p.Due, p.Filed = true, 0, 0
	return p
}

// ClosePathsLimit is the most conversations one ClosePaths call closes when
// its limit is not positive.
const ClosePathsLimit = 256
