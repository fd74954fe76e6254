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
//	m/<len(id), uvarint><id>            -> header: last change (unix ns), epoch, keys held and their bytes,
//	                                       path state (paths on): ended, closed, deadline, deadline filed under,
//	                                       and, while they fit in 1 KiB, the keys themselves (sorted, each as
//	                                       the length it shares with the key before it and the rest)
//	m/<len(id), uvarint><id><key>       -> one claimed key of a conversation whose keys outgrew its header
//	                                       (value: the epoch it was claimed in)
//	o/<seq, 8 bytes BE>                 -> outbox entry: the occurrences one Claim found new
//
// A conversation is one Pebble record while its keys fit in its header (a
// flow sets a handful of metric attributes per conversation): a claim
// reads one value (a point read, answered by Bloom filters when the
// conversation is new) and writes one value, and its path's close derives
// from the header alone. Past 1 KiB the keys spill, in the claim that
// crosses the bound, to one Pebble key each under the conversation's
// prefix: a claim then reads the header and looks up only the keys of its
// request, and writes only the new ones, so its cost never grows with the
// conversation. The header is the prefix itself, so it sorts just before
// the keys and mostly shares their data block (headers under h/<id>, as
// stores wrote them before, are moved there at Open). A conversation that
// outlived the retention starts a new epoch, its keys in its header again:
// keys of an older epoch are not held (Sweep deletes them with their
// header). Stores written before keys could be inline have every key as a
// record: such a header says so (it lacks the inline flag), and its
// conversation keeps its records, with no conversion. Stores written
// before the per-key layout kept each conversation as one value under c/;
// Open converts them.
//
//	k/<sink name>        -> the sink's cursor (8 bytes BE)
//	s/<sink name>\x00<key> -> one key of the sink's own state (AckState)
//	d/<deadline, 8 bytes BE><conversation id> -> empty: the open paths by the deadline they are filed under
//	g/<slot, 4 bytes BE> -> the cardinality guard's slot-th admitted flow/metric pair (AdmitPairs)
//
// Stores written before the path state moved into the header kept it under
// p/<conversation id>; Open converts them.
//
// Failure: Pebble cannot survive some errors (a failed write-ahead-log write,
// for example on a full disk): it calls its logger's Fatalf or panics, and
// its commit pipeline stays locked. The store turns both into a failure it
// reports on Done/Err instead of a panic in the caller (an HTTP handler,
// where net/http would recover it and every later commit would hang). From
// then on every method returns Err at once without touching Pebble, and the
// process must exit: serve's main does, with a non-zero status.
package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/diskguard"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

var (
	keyPrefix    = []byte("m/") // a conversation's header, then its keys
	oldHeaders   = []byte("h/") // headers before they moved beside their keys
	legacyPrefix = []byte("c/") // one value per conversation, before the per-key layout
	outboxPrefix = []byte("o/")
	cursorPrefix = []byte("k/")
	statePrefix  = []byte("s/")
	pathPrefix   = []byte("p/") // path state before it moved into the header
	duePrefix    = []byte("d/")
	pairPrefix   = []byte("g/")
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
	fatal   *fatal
	// dueFloor: the deadline index holds no entry below it (see
	// ClosePaths).
	dueFloor atomic.Int64

	pairMu sync.Mutex // guards pairs and serialises AdmitPairs
	pairs  store.PairSet

	// fresh answers the header reads of conversations claimed for the
	// first time, when the store held none at Open (fresh.go); nil
	// otherwise.
	fresh *freshFilter
	// freshSkips counts the header reads fresh answered.
	freshSkips atomic.Int64

	pace *pacer // nil: tables written at full speed

	// ended holds the headers the closes read next (paths on).
	ended *endedHeaders
	// recent holds the headers claims wrote lately (nil: none,
	// store.Options.RecentHeaderBytes).
	recent *recentHeaders
	// marks tell when a close applied without a sync of its own is durable.
	marks *logMarks
}

// Sizes. A write-ahead log holds what its memtable holds, and Pebble keeps
// up to MemTableStopWritesThreshold+1 of them (the others recycled): the
// memtable size sets how much the logs can take on disk, about 3.3 times
// MemTableSize. So it follows the disk: a 512th of the filesystem, between
// 2 MiB (a 40 MiB disk keeps its logs near 7 MiB) and 16 MiB (from 8 GiB
// up). The logs then never take more than 0.65 % of the disk (7 MiB at
// least), a third of the free space serve keeps before it refuses ingest
// (2 %, 16 MiB at least: diskguard's MinFree). Pebble would also
// preallocate each log to 110 % of MemTableSize at its first write, which
// made a fresh store cost that much on disk before it held anything; the
// store's filesystem turns preallocation off (noPrealloc), so a log takes
// the space of what it holds.
//
// On a large disk the bigger memtable is what makes a large replay fast:
// outbox entries delivered and deleted while still in the memtable, and
// headers rewritten there, never reach a table, and flushes are fewer and
// larger. 16 MiB does that as well as 32 MiB did (the outbox is flushed
// every 20,000 occurrences, about 2 MB), and the memtables are most of the
// store's memory (BenchmarkArchive, docs/PERFORMANCE.md).
//
// Pebble counts its memtables against the block cache: each reserves its
// size there while it lives. The cache is therefore sized as the blocks it
// should hold (blockCacheSize) plus the memtables that can live at once
// (the mutable one, those waiting to be flushed, and one kept for reuse).
// Sized as the blocks alone, it was all taken by the memtables of a large
// replay, and every read of a claim decoded its index, filter and data
// blocks again from the file (TestBlockCacheBesideMemtables).
//
// Level 0 is compacted once it holds l0CompactionThreshold tables, not
// Pebble's 4. Conversation ids are random, so every table flushed to L0
// spans the whole key space, and each compaction out of L0 rewrites the
// whole base level beneath it: gathering 8 flushes per compaction instead
// of 4 halves those rewrites (a time-ordered replay of 500,000
// conversations: 250 MB read and 776 MB written by compactions instead of
// 464 MB and 990 MB; docs/PERFORMANCE.md). A claim's reads pay little for
// the extra tables: their Bloom filters answer for what they do not hold.
// The most L0 can hold, and so the disk it can take beyond the data, is
// still set by l0StopWritesThreshold, unchanged: writes wait at 12 tables.
const (
	minMemTableSize             = 2 << 20
	maxMemTableSize             = 16 << 20
	memTableShare               = 512
	memTableStopWritesThreshold = 2
	liveMemTables               = memTableStopWritesThreshold + 1
	l0CompactionThreshold       = 8
	l0StopWritesThreshold       = 12
	// blockCacheSize holds the blocks claims read (headers, keys and the
	// Bloom filters and indexes of every table) beyond the memtables;
	// Pebble's default is 8 MiB.
	blockCacheSize = 24 << 20
)

// memTableSize returns the memtable size for a store in dir: a share of its
// filesystem's size, the smallest where that is unknown.
func memTableSize(dir string) uint64 {
	for d := dir; ; d = filepath.Dir(d) {
		sp, err := diskguard.SpaceOf(d)
		if err == nil {
			return min(max(sp.Total/memTableShare, minMemTableSize), maxMemTableSize)
		}
		if !errors.Is(err, os.ErrNotExist) || filepath.Dir(d) == d {
			return minMemTableSize
		}
	}
}

// Open opens (creating if needed) the store in dir. Only one process may have
// it open at a time; Pebble locks the directory.
func Open(dir string, opts store.Options, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	return open(dir, nil, opts, log)
}

// open is Open on the filesystem fs (nil: the operating system's).
func open(dir string, fs vfs.FS, opts store.Options, log *slog.Logger) (*Store, error) {
	return openPaced(dir, fs, opts, newPacer(opts.TableWriteRate), log)
}

// openPaced is open with its tables' writes paced by pace (nil: none).
func openPaced(dir string, fs vfs.FS, opts store.Options, pace *pacer, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	f := newFatal()
	db, err := openDB(dir, fs, f, pace, log)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, opts: opts.WithDefaults(), cursors: map[string]uint64{}, fatal: f, pace: pace, ended: newEndedHeaders(maxEndedBytes), recent: newRecentHeaders(opts.RecentHeaderBytes), marks: newLogMarks()}
	err = s.convertHeaders()
	if err == nil {
		err = s.convertLegacy()
	}
	if err == nil {
		err = s.convertPaths()
	}
	if err == nil {
		err = s.load()
	}
	if err == nil {
		err = s.startFresh()
	}
	if err != nil {
		if f.Err() == nil {
			db.Close()
		}
		return nil, err
	}
	return s, nil
}

// openDB opens Pebble, turning a panic or a Fatalf during the open (a
// write-ahead-log replay on a full disk) into an error.
func openDB(dir string, fs vfs.FS, f *fatal, pace *pacer, log *slog.Logger) (db *pebble.DB, err error) {
	defer f.recover(&err)
	memTable := uint64(minMemTableSize)
	if fs == nil {
		memTable = memTableSize(dir)
		fs = vfs.Default
	}
	fs = noPrealloc{FS: fs, pace: pace}
	opts := &pebble.Options{
		FS:                          fs,
		Logger:                      pebbleLogger{log: log.With("component", "pebble"), fatal: f, errors: &limiter{}},
		MemTableSize:                memTable,
		CacheSize:                   blockCacheSize + liveMemTables*int64(memTable),
		MemTableStopWritesThreshold: memTableStopWritesThreshold,
		L0CompactionThreshold:       l0CompactionThreshold,
		L0StopWritesThreshold:       l0StopWritesThreshold,
	}
	// Most reads of a claim are for what the store does not hold (a new
	// conversation's header, a new key): a Bloom filter per table, on every
	// level, answers them without reading a data block.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	opts.Local.ReadaheadConfig = pointReadahead()
	if pace != nil {
		opts.BytesPerSync = pacedBytesPerSync
		opts.EventListener = &pebble.EventListener{}
		pace.listen(opts.EventListener)
	}
	db, err = pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("pebblestore: open %s: %w", dir, err)
	}
	if pace != nil {
		pace.watch(db)
	}
	return db, nil
}

// pointReadahead is the store's read-ahead: none where Pebble would guess
// it, the operating system's for compactions, which read whole tables.
// Pebble guesses a scan from two reads of a table at rising offsets, and
// a claim's reads rise: its conversations are read in key order. So a
// claim of many conversations, each a point read of one data block, had
// Pebble ask the kernel to read ahead (a readahead call per block), then
// open the table a second time, with FADV_SEQUENTIAL, for the rest of the
// iterator's reads, and close it again: system calls that read nothing a
// claim uses (TestClaimReadsNoReadahead). A scan of a table the page cache
// does not hold still gets the kernel's own read-ahead.
func pointReadahead() *pebble.ReadaheadConfig {
	rc := objstorageprovider.NewReadaheadConfig()
	rc.Set(objstorageprovider.FadviseSequential, objstorageprovider.NoReadahead)
	return rc
}

// startFresh turns the filter of claimed conversations on when the store
// holds no conversation (see fresh.go).
func (s *Store) startFresh() error {
	empty := true
	err := s.scan(keyPrefix, func(k, v []byte) error {
		empty = false
		return errChunk
	})
	if err != nil && !errors.Is(err, errChunk) {
		return err
	}
	if empty {
		s.fresh = newFreshFilter(freshBlocks, maxFresh)
	}
	return nil
}

// Done is closed when the store has failed in a way it cannot survive (see
// the package comment); Err then says why. Only main should act on it, by
// exiting.
func (s *Store) Done() <-chan struct{} { return s.fatal.done }

// Err returns the failure that closed Done, or nil.
func (s *Store) Err() error { return s.fatal.Err() }

// load rebuilds the in-memory view of the outbox and the cursors.
func (s *Store) load() error {
	var last uint64
	var pending []store.SeqCount
	err := s.scan(outboxPrefix, func(k, v []byte) error {
		seq := binary.BigEndian.Uint64(k[len(outboxPrefix):])
		n, _ := binary.Uvarint(v)
		if n == 0 {
			// An entry of path points (ClosePaths): rare enough to decode.
			if _, paths, err := decodeEntry(v); err == nil {
				n = uint64(len(paths))
			}
		}
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
	return s.scan(pairPrefix, func(k, v []byte) error {
		p, err := store.DecodePair(v)
		if err != nil {
			return fmt.Errorf("pebblestore: admitted pair %x: %w", k, err)
		}
		s.pairs.Add(p)
		return nil
	})
}

func (s *Store) scan(prefix []byte, fn func(k, v []byte) error) (err error) {
	defer s.fatal.recover(&err)
	if err := s.fatal.Err(); err != nil {
		return err
	}
	return s.scanRange(prefix, prefixEnd(prefix), fn)
}

func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	end[len(end)-1]++
	return end
}

var errClosed = errors.New("pebblestore: closed")

// Claim implements flowmetrics.Store: StartClaim, then its wait.
func (s *Store) Claim(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	return s.StartClaim(ctx, reqs)()
}

// StartClaim is Claim in two halves. Conversations of the batch are locked
// (striped) from the read of their state until the batch, claims and
// outbox entry together, is applied: StartClaim then returns, and every
// later claim or read sees the batch. wait waits until the batch is
// synced to the write-ahead log and returns what Claim returns; it must
// be called. So a claim of the same conversations may start while this
// one's sync is under way: its batch follows this one in the log, so it
// is never durable before this one, and its outbox entry, like this one's,
// is read only once durable (the sequencer holds it back until wait).
func (s *Store) StartClaim(ctx context.Context, reqs []flowmetrics.ClaimRequest) (wait func() ([]flowmetrics.Occurrence, error)) {
	pc, err := s.startClaim(ctx, reqs)
	if err != nil {
		return func() ([]flowmetrics.Occurrence, error) { return nil, err }
	}
	return pc.wait
}

// pendingClaim is a claim applied but maybe not yet durable.
type pendingClaim struct {
	s       *Store
	b       *pebble.Batch // nil: nothing to wait for
	mark    uint64        // the log marks its batch follows
	seq     uint64
	out     []flowmetrics.Occurrence
	refused error
}

func (pc *pendingClaim) wait() (_ []flowmetrics.Occurrence, err error) {
	if pc.b == nil {
		return pc.out, pc.refused
	}
	s := pc.s
	defer s.fatal.recover(&err)
	defer pc.b.Close()
	if err := pc.b.SyncWait(); err != nil {
		// The write-ahead log failed (a full disk). A commit that waits
		// for its sync gets this error inside Pebble, which then calls
		// Fatalf; here it comes back to us: the store is as broken.
		s.seq.End(pc.seq, 0, false)
		s.fatal.fail(fmt.Errorf("pebblestore: write-ahead log: %w", err))
		return nil, s.fatal.Err()
	}
	s.seq.End(pc.seq, int64(len(pc.out)), true)
	s.marks.synced(pc.mark)
	return pc.out, pc.refused
}

func (s *Store) startClaim(ctx context.Context, reqs []flowmetrics.ClaimRequest) (_ *pendingClaim, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := s.usable(); err != nil {
		return nil, err
	}
	defer s.fatal.recover(&err)
	var refused store.Refusals
	convs := make([]string, 0, len(reqs))
	for i, r := range reqs {
		if err := store.CheckID(r.ConversationID); err != nil {
			refused.Add(i, flowmetrics.RefusedIDTooLong, err)
			continue
		}
		if slices.ContainsFunc(r.Occurrences, func(o flowmetrics.Occurrence) bool { return o.Key == "" }) {
			// Its record would be the conversation's header.
			refused.Add(i, flowmetrics.RefusedByStore, fmt.Errorf("conversation %q: an occurrence without a key", r.ConversationID))
			continue
		}
		convs = append(convs, r.ConversationID)
	}
	unlock := s.stripes.Lock(convs)
	defer unlock()

	now := s.opts.Now()
	b := s.db.NewBatch()
	defer func() {
		if b != nil {
			b.Close()
		}
	}()
	var out []flowmetrics.Occurrence
	keys := newKeysFor(reqs)
	paths := s.opts.Paths != nil
	syncPaths := false
	staged, err := s.stageAll(reqs, &refused, now)
	if err != nil {
		return nil, err
	}
	for i, r := range reqs {
		if refused.Has(i) {
			continue
		}
		track := paths && (len(r.Occurrences) > 0 || r.Ended)
		if len(r.Occurrences) == 0 && !track {
			continue
		}
		c := staged[r.ConversationID]
		fresh := store.FilterNew(r.Occurrences, c.holds)
		if len(fresh) > 0 {
			if err := (store.Size{Keys: c.h.keys, Bytes: c.h.bytes}).Plus(fresh).Check(r.ConversationID); err != nil {
				refused.Add(i, flowmetrics.RefusedConversation, err)
				continue
			}
		}
		if track && s.trackPath(c, fresh, r.Ended, now) {
			syncPaths = true
		}
		if len(fresh) == 0 {
			continue
		}
		for _, o := range fresh {
			c.add(o.Key)
		}
		c.h.changed = now.UnixNano()
		c.dirty = true
		out = append(out, fresh...)
	}
	var filed []int64
	var dirty []string
	for id, c := range staged {
		if c.dirty {
			dirty = append(dirty, id)
		}
	}
	// The batch is written in key order (index entries, each header
	// followed by its new keys, then the outbox entry): Pebble inserts a
	// batch into its memtable one key after the other, and a key that
	// follows the one before starts its search from there instead of from
	// the top of the skiplist.
	slices.Sort(dirty)
	// Whatever the batch does (applied, or failed on the way), the
	// headers held of its conversations are those it wrote, or none.
	applied := false
	defer func() {
		if applied {
			s.recent.wrote(staged, dirty)
		} else {
			s.recent.forget(dirty)
		}
	}()
	for _, id := range dirty {
		c := staged[id]
		// Before the batch is applied and the stripes released: a later
		// claim of the conversation reads its header.
		s.fresh.add(c.prefix)
		if paths {
			at, err := fileIndex(b, c)
			if err != nil {
				return nil, fmt.Errorf("pebblestore: claim: %w", err)
			}
			if at != 0 {
				filed = append(filed, at)
			}
		}
		c.stage(&keys)
	}
	if err := keys.write(b); err != nil {
		return nil, fmt.Errorf("pebblestore: %w", err)
	}
	// After the commit (or its failure: a lower floor only costs a longer
	// scan), the closer must look from the new entries on.
	defer func() {
		for _, at := range filed {
			s.lowerFloor(at)
		}
	}()
	if len(out) == 0 {
		if b.Empty() {
			return &pendingClaim{refused: refused.Err()}, nil
		}
		// Only path state changed: an end event (synced), or events that
		// kept a path open (not synced: a crash loses at most a Step of
		// its deadline).
		opt := pebble.NoSync
		if syncPaths {
			opt = pebble.Sync
		}
		if err := b.Commit(opt); err != nil {
			return nil, fmt.Errorf("pebblestore: claim: %w", err)
		}
		applied = true
		s.wroteHeaders(staged, dirty)
		return &pendingClaim{refused: refused.Err()}, nil
	}
	seq := s.seq.Begin()
	if err := b.Set(outboxKey(seq), encodeEntry(out, nil), nil); err != nil {
		s.seq.End(seq, 0, false)
		return nil, fmt.Errorf("pebblestore: %w", err)
	}
	mark := s.marks.before()
	if err := s.db.ApplyNoSyncWait(b, pebble.Sync); err != nil {
		s.seq.End(seq, 0, false)
		return nil, fmt.Errorf("pebblestore: %w", err)
	}
	applied = true
	s.wroteHeaders(staged, dirty)
	// The batch is applied: wait syncs and closes it.
	pc := &pendingClaim{s: s, b: b, mark: mark, seq: seq, out: out, refused: refused.Err()}
	b = nil
	return pc, nil
}

// staged is a conversation within one Claim: its header as it will be
// written, the keys of the batch's requests the store holds, and the keys
// the batch adds.
type staged struct {
	id     string
	h      header
	held   map[string]struct{} // keys of the batch's requests found stored
	added  map[string]struct{}
	fresh  []string // the keys the batch adds, in the order added
	stored []string // inline: the keys the stored header carries, in byte order
	dirty  bool
	prefix []byte   // m/<len><id>
	filed  int64    // the deadline the stored header's path is filed under (0: none)
	asked  []string // while staging: the keys the batch's requests ask about
}

// stage adds to keys what c writes: its header and, for a conversation
// whose keys are records of their own, a record for each key the batch
// adds. An inline conversation's keys are written in its header, merged
// with those it held; when they outgrow maxInlineBytes, it spills: every
// key becomes a record, in the same batch as the header that stops
// carrying them.
func (c *staged) stage(keys *newKeys) {
	if !c.h.inline {
		for _, k := range c.fresh {
			keys.add(c, k)
		}
		keys.put(c.prefix, c.h.encode())
		return
	}
	if len(c.fresh) > 0 {
		all := append(c.stored[:len(c.stored):len(c.stored)], c.fresh...)
		slices.Sort(all)
		if enc := encodeKeys(nil, all); len(enc) <= maxInlineBytes {
			// c.stored is now the keys the header written carries.
			c.h.inlineKeys, c.stored = enc, all
		} else {
			c.h.inline, c.h.inlineKeys = false, nil
			for _, k := range all {
				keys.add(c, k)
			}
		}
	}
	keys.put(c.prefix, c.h.encode())
}

// stageAll reads what the batch's requests need of the store: the header
// of each conversation with occurrences, or with an end event when paths
// are on (an expired one starts a new epoch, in which it holds nothing),
// then which of the requested keys it holds. A header that carries its
// keys (inline) answers for them: the claim reads one value. A
// conversation whose keys spilled has them just after its header (both
// under its prefix), mostly in the data block the header was read from.
// The conversations are read in key order through one iterator, each
// header followed by its conversation's keys: every seek moves forward,
// reusing the tables, blocks and positions of the one before, where a Get
// each started over, and Bloom filters still answer the keys the store
// does not hold. A large batch is cut into runs of that order read at
// once, each through its own iterator (readParts). A conversation that
// appears twice in the batch is staged once, so the second request sees
// the keys the first adds.
func (s *Store) stageAll(reqs []flowmetrics.ClaimRequest, refused *store.Refusals, now time.Time) (map[string]*staged, error) {
	convs := map[string]*staged{}
	var order []*staged
	for i, r := range reqs {
		if refused.Has(i) || len(r.Occurrences) == 0 && (s.opts.Paths == nil || !r.Ended) {
			continue
		}
		c := convs[r.ConversationID]
		if c == nil {
			c = &staged{id: r.ConversationID, prefix: keyPrefixOf(r.ConversationID), h: header{inline: true}}
			convs[c.id] = c
			order = append(order, c)
		}
		for _, o := range r.Occurrences {
			c.asked = append(c.asked, o.Key)
		}
	}
	if len(order) == 0 {
		return convs, nil
	}
	slices.SortFunc(order, func(a, b *staged) int { return bytes.Compare(a.prefix, b.prefix) })
	parts := readParts(len(order))
	if parts <= 1 {
		return convs, s.readPart(order, now)
	}
	// The parts are read at once, each through an iterator of its own;
	// each conversation is staged by one part alone.
	errs := make([]error, parts)
	var wg sync.WaitGroup
	for i := range parts {
		part := order[i*len(order)/parts : (i+1)*len(order)/parts]
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.readPart(part, now)
		}()
	}
	wg.Wait()
	return convs, errors.Join(errs...)
}

// A claim's reads are split in parts read at once (each through an
// iterator of its own) when its batch has at least minReadPart
// conversations per part: most of a claim's time is these reads, and the
// claims of a replay follow one another, so on a machine with a core to
// spare a large batch's reads take a fraction of their time. Each part is
// a run of the conversations in key order, so each iterator's seeks still
// move forward.
const (
	minReadPart  = 128
	maxReadParts = 4
)

// readParts returns how many parts a claim of n conversations is read in.
func readParts(n int) int { return max(1, min(runtime.GOMAXPROCS(0), maxReadParts, n/minReadPart)) }

// readPart stages the conversations of order, which are in key order,
// reading them through one iterator. A panic of Pebble's is the store's
// failure, returned (it may run in a goroutine of its own).
func (s *Store) readPart(order []*staged, now time.Time) (err error) {
	defer s.fatal.recover(&err)
	// The iterator is opened at the first conversation that needs one:
	// a claim of conversations all new or held in recentHeaders reads
	// nothing from Pebble.
	var it *pebble.Iterator
	defer func() {
		if it != nil {
			it.Close()
		}
	}()
	var key []byte
	skipped := 0
	defer func() { s.freshSkips.Add(int64(skipped)) }()
	for _, c := range order {
		asked := c.asked
		c.asked = nil
		if s.fresh.absent(c.prefix) {
			skipped++
			continue // never claimed: no header, no keys
		}
		if r, ok := s.recent.get(c.id); ok {
			// Held as last written (inline: the keys are in it).
			if s.stageHeader(c, r.h, now) {
				c.stored = r.keys
				c.holdAsked(asked)
			}
			continue
		}
		if it == nil {
			if it, err = s.db.NewIter(claimIterOptions); err != nil {
				it = nil
				return fmt.Errorf("pebblestore: claim: %w", err)
			}
		}
		if !seek(it, c.prefix) {
			if err := it.Error(); err != nil {
				return fmt.Errorf("pebblestore: read conversation %q: %w", c.id, err)
			}
			continue
		}
		h, err := decodeHeader(it.Value())
		if err != nil {
			return fmt.Errorf("pebblestore: conversation %q: %w", c.id, err)
		}
		if !s.stageHeader(c, h, now) || h.keys == 0 {
			continue
		}
		if h.inline {
			// The header carries every key of its epoch: it answers,
			// and no key is read.
			if c.stored, err = h.inlineList(); err != nil {
				return fmt.Errorf("pebblestore: conversation %q: %w", c.id, err)
			}
			c.holdAsked(asked)
			continue
		}
		// The keys asked about, each once, in key order (the prefix is
		// common to them all).
		slices.Sort(asked)
		for _, k := range slices.Compact(asked) {
			key = append(append(key[:0], c.prefix...), k...)
			if !seek(it, key) {
				if err := it.Error(); err != nil {
					return fmt.Errorf("pebblestore: read conversation %q: %w", c.id, err)
				}
				continue
			}
			epoch, n := binary.Uvarint(it.Value())
			if n <= 0 {
				return fmt.Errorf("pebblestore: conversation %q: key %q: %w", c.id, k, errCorrupt)
			}
			if epoch == c.h.epoch {
				if c.held == nil {
					c.held = map[string]struct{}{}
				}
				c.held[k] = struct{}{}
			}
		}
	}
	return nil
}

// stageHeader stages c from h, its header as stored, and reports whether
// h's epoch is c's (false: h outlived the retention at now, and c starts a
// new epoch, which holds nothing).
func (s *Store) stageHeader(c *staged, h header, now time.Time) bool {
	if !h.path.Closed {
		c.filed = h.path.Filed
	}
	if s.opts.Expired(time.Unix(0, h.changed), now) {
		// A new epoch holds nothing: its keys go in its header.
		c.h.epoch = h.epoch + 1
		return false
	}
	c.h = h
	return true
}

// holdAsked marks as held the keys of asked that c's header carries
// (c.stored, inline).
func (c *staged) holdAsked(asked []string) {
	for _, k := range asked {
		if _, ok := slices.BinarySearch(c.stored, k); ok {
			if c.held == nil {
				c.held = map[string]struct{}{}
			}
			c.held[k] = struct{}{}
		}
	}
}

// claimIterOptions: a claim's reads are mostly for what the store does
// not hold. Pebble reads the Bloom filters of L6, the bottom level, only
// when asked: without this a seek for a new conversation read an index
// and a data block of the L6 table that covers it, and a small store
// keeps every table there (its base level is L6 until it outgrows
// LBaseMaxBytes).
var claimIterOptions = &pebble.IterOptions{UseL6Filters: true}

// seek positions it at key and reports whether the store holds key. The
// whole key is Pebble's prefix (the default comparer's Split), so a prefix
// seek is a point lookup that consults the Bloom filters.
func seek(it *pebble.Iterator, key []byte) bool {
	return it.SeekPrefixGE(key) && bytes.Equal(it.Key(), key)
}

// holds reports whether c holds key k: stored before the batch (as
// stageAll found) or added by it.
func (c *staged) holds(k string) bool {
	if _, ok := c.added[k]; ok {
		return true
	}
	_, ok := c.held[k]
	return ok
}

func (c *staged) add(k string) {
	if c.added == nil {
		c.added = map[string]struct{}{}
	}
	c.added[k] = struct{}{}
	c.fresh = append(c.fresh, k)
	c.h.keys++
	c.h.bytes += len(k)
}

// newKeys are the keys a Claim adds and the headers it rewrites, gathered
// so they are written to the batch in key order: each store key
// (m/<len><id><key>, or the header's m/<len><id>) and its value (the
// conversation's epoch, or the header) side by side in one buffer.
type newKeys struct {
	buf  []byte
	keys []newKey
}

type newKey struct{ start, split, end int } // key buf[start:split], value buf[split:end]

// newKeysFor makes room for every key reqs ask for (most are new).
func newKeysFor(reqs []flowmetrics.ClaimRequest) newKeys {
	n, size := 0, 0
	for _, r := range reqs {
		n += len(r.Occurrences)
		size += len(r.Occurrences) * (len(r.ConversationID) + 8)
		for _, o := range r.Occurrences {
			size += len(o.Key)
		}
	}
	return newKeys{buf: make([]byte, 0, size), keys: make([]newKey, 0, n)}
}

func (n *newKeys) add(c *staged, k string) {
	start := len(n.buf)
	n.buf = append(append(n.buf, c.prefix...), k...)
	split := len(n.buf)
	n.buf = binary.AppendUvarint(n.buf, c.h.epoch)
	n.keys = append(n.keys, newKey{start, split, len(n.buf)})
}

func (n *newKeys) put(key, value []byte) {
	start := len(n.buf)
	n.buf = append(n.buf, key...)
	split := len(n.buf)
	n.buf = append(n.buf, value...)
	n.keys = append(n.keys, newKey{start, split, len(n.buf)})
}

// write sets the keys in b in key order.
func (n *newKeys) write(b *pebble.Batch) error {
	slices.SortFunc(n.keys, func(x, y newKey) int {
		return bytes.Compare(n.buf[x.start:x.split], n.buf[y.start:y.split])
	})
	for _, k := range n.keys {
		if err := b.Set(n.buf[k.start:k.split], n.buf[k.split:k.end], nil); err != nil {
			return err
		}
	}
	return nil
}

// header reads a conversation's header; ok is false when it has none.
func (s *Store) header(id string) (h header, ok bool, err error) {
	v, closer, err := s.db.Get(headerKey(id))
	if errors.Is(err, pebble.ErrNotFound) {
		return h, false, nil
	}
	if err != nil {
		return h, false, fmt.Errorf("pebblestore: read conversation %q: %w", id, err)
	}
	defer closer.Close()
	if h, err = decodeHeader(v); err != nil {
		return h, false, fmt.Errorf("pebblestore: conversation %q: %w", id, err)
	}
	return h, true, nil
}

// get reads a conversation with the keys of its epoch (nil when it has no
// state): from its header, or, when its keys are records, by scanning
// them: for reading a whole conversation (Keys), not for claiming.
func (s *Store) get(id string) (*conversation, error) {
	h, ok, err := s.header(id)
	if err != nil || !ok {
		return nil, err
	}
	c := &conversation{changed: h.changed}
	if h.inline {
		if c.keys, err = h.inlineList(); err != nil {
			return nil, fmt.Errorf("pebblestore: conversation %q: %w", id, err)
		}
		return c, nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: keyPrefix, UpperBound: prefixEnd(keyPrefix)})
	if err != nil {
		return nil, fmt.Errorf("pebblestore: read conversation %q: %w", id, err)
	}
	defer it.Close()
	if c.keys, err = keysOf(it, id, h.epoch, h.keys); err != nil {
		return nil, fmt.Errorf("pebblestore: read conversation %q: %w", id, err)
	}
	return c, nil
}

// Keys returns the metric attribute names a conversation holds (those it
// claimed since its state last expired), in byte order; none when it has no
// state or its state expired.
func (s *Store) Keys(ctx context.Context, conversationID string) (_ []string, err error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	defer s.fatal.recover(&err)
	c, err := s.get(conversationID)
	if err != nil || c == nil || s.opts.Expired(time.Unix(0, c.changed), s.opts.Now()) {
		return nil, err
	}
	return c.keys, nil
}

// Sweep deletes the conversations whose retention has passed, with all their
// keys, and returns how many. Claim already treats them as absent; sweeping
// keeps the database from growing without bound. It holds each
// conversation's stripe while deciding, so it never deletes a conversation a
// concurrent Claim is refreshing. It finds the headers among the keys (a
// few each), which a claim's reads are worth.
func (s *Store) Sweep(ctx context.Context) (removed int, err error) {
	if err := s.usable(); err != nil {
		return 0, err
	}
	defer s.fatal.recover(&err)
	now := s.opts.Now()
	var expired []string
	err = s.scan(keyPrefix, func(k, v []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		id, ok := headerOf(k)
		if !ok {
			return nil
		}
		changed, n := binary.Varint(v)
		if n > 0 && s.opts.Expired(time.Unix(0, changed), now) {
			expired = append(expired, string(id))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for start := 0; start < len(expired); start += sweepChunk {
		chunk := expired[start:min(start+sweepChunk, len(expired))]
		n, err := s.sweepChunk(chunk, now)
		removed += n
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}

const sweepChunk = 1000

// sweepChunk deletes the conversations of ids that are still expired, in
// one batch: a header and its keys go together.
func (s *Store) sweepChunk(ids []string, now time.Time) (removed int, err error) {
	unlock := s.stripes.Lock(ids)
	defer unlock()
	// Held headers of ids are dropped whatever the batch does: holding
	// none costs only a read.
	defer s.recent.forget(ids)
	b := s.db.NewBatch()
	defer b.Close()
	for _, id := range ids {
		h, ok, err := s.header(id)
		if err != nil || !ok || !s.opts.Expired(time.Unix(0, h.changed), now) {
			continue
		}
		b.Delete(headerKey(id), nil)
		if h.path.Filed != 0 && !h.path.Closed {
			b.Delete(dueKey(h.path.Filed, id), nil)
		}
		err = s.scan(keyPrefixOf(id), func(k, _ []byte) error { return b.Delete(k, nil) })
		if err != nil {
			return removed, err
		}
		removed++
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return removed, fmt.Errorf("pebblestore: sweep: %w", err)
	}
	s.ended.forget(ids)
	return removed, nil
}

// convertLegacy rewrites conversations stored before the per-key layout
// (one c/ value each) into a header and one key each, a chunk per batch:
// a conversation is converted in the batch that deletes its old value, so
// a crash leaves each one in one layout or the other, and the next Open
// goes on.
func (s *Store) convertLegacy() (err error) {
	defer s.fatal.recover(&err)
	return s.convertChunks(legacyPrefix, "convert conversations", func(b *pebble.Batch, k, v []byte) error {
		c, err := decodeLegacy(v)
		if err != nil {
			return fmt.Errorf("pebblestore: conversation %q: %w", k[len(legacyPrefix):], err)
		}
		id := string(k[len(legacyPrefix):])
		st := &staged{id: id, prefix: keyPrefixOf(id), h: header{inline: true}}
		for _, key := range c.keys {
			if _, dup := st.added[key]; dup {
				continue
			}
			st.add(key)
		}
		st.h.changed = c.changed
		var keys newKeys
		st.stage(&keys)
		return keys.write(b)
	})
}

// convertHeaders moves the headers of stores written before they sat
// beside their keys (h/<id>) to the conversation's prefix, a chunk per
// batch, like convertLegacy.
func (s *Store) convertHeaders() (err error) {
	defer s.fatal.recover(&err)
	return s.convertChunks(oldHeaders, "convert headers", func(b *pebble.Batch, k, v []byte) error {
		return b.Set(headerKey(string(k[len(oldHeaders):])), v, nil)
	})
}

// convertChunks rewrites every record under prefix with convert, which
// stages its new form in the batch; the old record is deleted in the same
// batch, sweepChunk records per synced batch, so a crash leaves each record
// in one form or the other and the next Open goes on. what names the
// conversion in a failed commit's error.
func (s *Store) convertChunks(prefix []byte, what string, convert func(b *pebble.Batch, k, v []byte) error) error {
	for {
		b := s.db.NewBatch()
		n := 0
		err := s.scan(prefix, func(k, v []byte) error {
			if err := convert(b, k, v); err != nil {
				return err
			}
			b.Delete(k, nil)
			if n++; n == sweepChunk {
				return errChunk
			}
			return nil
		})
		if err != nil && !errors.Is(err, errChunk) {
			b.Close()
			return err
		}
		if n == 0 {
			b.Close()
			return nil
		}
		err = b.Commit(pebble.Sync)
		b.Close()
		if err != nil {
			return fmt.Errorf("pebblestore: %s: %w", what, err)
		}
	}
}

var errChunk = errors.New("chunk full")

// ReadOutbox implements flowmetrics.Store.
func (s *Store) ReadOutbox(ctx context.Context, after uint64, limit int) (_ []flowmetrics.Entry, err error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	defer s.fatal.recover(&err)
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
		occs, paths, err := decodeEntry(it.Value())
		if err != nil {
			return out, fmt.Errorf("pebblestore: outbox entry %d: %w", seq, err)
		}
		out = append(out, flowmetrics.Entry{Seq: seq, Occurrences: occs, Paths: paths})
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
func (s *Store) Register(ctx context.Context, sinks []string) (err error) {
	if err := s.usable(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	defer s.fatal.recover(&err)
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

// AckState implements flowmetrics.Store: the cursor and the state update are
// one synced batch.
func (s *Store) AckState(ctx context.Context, sink string, seq uint64, update flowmetrics.StateUpdate) (err error) {
	if err := flowmetrics.CheckState(update); err != nil {
		return fmt.Errorf("pebblestore: ack %s: %w", sink, err)
	}
	if err := s.usable(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return errClosed
	}
	defer s.fatal.recover(&err)
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
	if err := s.usable(); err != nil {
		return nil, err
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

// Pairs implements flowmetrics.Store.
func (s *Store) Pairs(ctx context.Context) ([]flowmetrics.Pair, error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	s.pairMu.Lock()
	defer s.pairMu.Unlock()
	return s.pairs.List(), nil
}

// AdmitPairs implements flowmetrics.Store: the new pairs are one synced
// batch, each in the next free slot. The store has one writer, so the set
// in memory is the set on disk.
func (s *Store) AdmitPairs(ctx context.Context, pairs []flowmetrics.Pair, limit int) (_ []flowmetrics.Pair, err error) {
	if err := s.usable(); err != nil {
		return nil, err
	}
	s.pairMu.Lock()
	defer s.pairMu.Unlock()
	add := s.pairs.Missing(pairs, limit)
	if len(add) == 0 {
		return s.pairs.List(), nil
	}
	defer s.fatal.recover(&err)
	b := s.db.NewBatch()
	defer b.Close()
	for i, p := range add {
		v, err := store.EncodePair(p)
		if err != nil {
			return nil, fmt.Errorf("pebblestore: admit: %w", err)
		}
		k := binary.BigEndian.AppendUint32(bytes.Clone(pairPrefix), uint32(s.pairs.Slots()+i))
		b.Set(k, v, nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return nil, fmt.Errorf("pebblestore: admit: %w", err)
	}
	for _, p := range add {
		s.pairs.Add(p)
	}
	return s.pairs.List(), nil
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

// Close closes the database; it is safe to call twice. It does not flush
// the memtable: everything acknowledged is already synced in the
// write-ahead log, which the next Open replays, and a flush needs disk space
// that a full disk does not have. A failed store is not closed (Pebble's
// locks may be held by the write that failed); its Err is returned.
func (s *Store) Close() (err error) {
	if err := s.fatal.Err(); err != nil {
		s.closed.Store(true)
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	defer s.fatal.recover(&err)
	if s.pace != nil {
		// Close waits for the compaction under way: at full speed.
		s.pace.closing.Store(true)
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("pebblestore: close: %w", err)
	}
	return nil
}

// usable returns the reason the store cannot be used, if any.
func (s *Store) usable() error {
	if err := s.fatal.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return errClosed
	}
	return nil
}

// headerKey is the conversation's prefix itself: its header sorts just
// before its keys, so one data block mostly holds both.
func headerKey(id string) []byte { return keyPrefixOf(id) }

// keyPrefixOf is m/<len(id)><id>: with the length first, no conversation's
// prefix covers another's, whatever bytes the ids hold.
func keyPrefixOf(id string) []byte {
	b := binary.AppendUvarint(bytes.Clone(keyPrefix), uint64(len(id)))
	return append(b, id...)
}

// headerOf returns the conversation id of k when k, a key under m/, is
// a conversation's header (its prefix alone) rather than one of its keys.
func headerOf(k []byte) (id []byte, ok bool) {
	rest := k[len(keyPrefix):]
	n, w := binary.Uvarint(rest)
	if w <= 0 || uint64(len(rest)-w) != n {
		return nil, false
	}
	return rest[w:], true
}

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

type pebbleLogger struct {
	log    *slog.Logger
	fatal  *fatal
	errors *limiter
}

func (l pebbleLogger) Infof(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }

// Errorf logs Pebble's background errors, at most errorsPerWindow of them
// every errorWindow: a compaction that cannot find space retries at once,
// and would otherwise log thousands of lines a second.
func (l pebbleLogger) Errorf(format string, args ...any) {
	ok, suppressed := l.errors.allow(time.Now())
	if !ok {
		return
	}
	if suppressed > 0 {
		l.log.Error(fmt.Sprintf(format, args...), "suppressed_before", suppressed)
		return
	}
	l.log.Error(fmt.Sprintf(format, args...))
}

const (
	errorWindow     = 10 * time.Second
	errorsPerWindow = 20
)

// limiter lets errorsPerWindow events through per errorWindow and counts
// the others.
type limiter struct {
	mu         sync.Mutex
	start      time.Time
	n          int
	suppressed int
}

// allow reports whether to log now and how many were suppressed since the
// last one logged.
func (l *limiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) >= errorWindow {
		l.start, l.n = now, 0
	}
	if l.n >= errorsPerWindow {
		l.suppressed++
		return false, 0
	}
	l.n++
	s := l.suppressed
	l.suppressed = 0
	return true, s
}

// Fatalf is how Pebble reports an error it cannot survive ("fatal commit
// error" when a write-ahead-log write fails) or a broken invariant; it must
// not return. It records the failure, which closes Done so that main exits,
// and then parks the calling goroutine (a committing request, or one of
// Pebble's own): returning would let Pebble go on in a broken state, and a
// panic would unwind a request handler with Pebble's commit pipeline still
// locked.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.log.Error("pebble failed; the store cannot continue", "err", msg)
	l.fatal.fail(fmt.Errorf("pebblestore: %s", strings.TrimPrefix(msg, "pebble: ")))
	select {}
}

// fatal records the first unsurvivable failure of the store.
type fatal struct {
	once sync.Once
	done chan struct{}
	err  atomic.Pointer[error]
}

func newFatal() *fatal { return &fatal{done: make(chan struct{})} }

func (f *fatal) fail(err error) {
	f.once.Do(func() {
		f.err.Store(&err)
		close(f.done)
	})
}

// Err returns the recorded failure, or nil.
func (f *fatal) Err() error {
	if p := f.err.Load(); p != nil {
		return *p
	}
	return nil
}

// recover turns a panic in the deferring method (Pebble panics on a failed
// write-ahead-log write, and after a failure its state is broken) into the
// store's failure, returned in *err.
func (f *fatal) recover(err *error) {
	r := recover()
	if r == nil {
		return
	}
	e, ok := r.(error)
	if !ok {
		e = fmt.Errorf("%v", r)
	}
	if errors.Is(e, pebble.ErrClosed) {
		// A call racing Close: the store is closed, not broken.
		*err = errClosed
		return
	}
	f.fail(fmt.Errorf("pebblestore: unrecoverable pebble error: %w", e))
	*err = f.Err()
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

var (
	_ flowmetrics.Failer     = (*Store)(nil)
	_ flowmetrics.Sweeper    = (*Store)(nil)
	_ flowmetrics.SinkLister = (*Store)(nil)
)

// noPrealloc is a filesystem whose files are never preallocated: Pebble
// would reserve 110 % of the memtable size for each write-ahead log at its
// first write (see Sizes). With pace set, it also paces the writes of
// tables (see pacer).
type noPrealloc struct {
	vfs.FS
	pace *pacer
}

func (n noPrealloc) Create(name string, c vfs.DiskWriteCategory) (vfs.File, error) {
	f, err := wrapFile(n.FS.Create(name, c))
	if err != nil {
		return nil, err
	}
	return n.pace.file(name, f), nil
}

func (n noPrealloc) OpenReadWrite(name string, c vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	return wrapFile(n.FS.OpenReadWrite(name, c, opts...))
}

func (n noPrealloc) ReuseForWrite(oldname, newname string, c vfs.DiskWriteCategory) (vfs.File, error) {
	return wrapFile(n.FS.ReuseForWrite(oldname, newname, c))
}

func (n noPrealloc) Unwrap() vfs.FS { return n.FS }

func wrapFile(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return noPreallocFile{f}, nil
}

type noPreallocFile struct{ vfs.File }

func (noPreallocFile) Preallocate(offset, length int64) error { return nil }

// GoHeapBytes returns the most memory the store's caches can take on the
// Go heap: the filter of claimed conversations (fresh.go), and Pebble's
// block cache and memtables in a build without cgo (with cgo they are
// allocated outside it). A soft memory limit of the process must leave
// room for it.
func (s *Store) GoHeapBytes() int64 {
	var n int64
	if s.fresh != nil {
		n = int64(len(s.fresh.bits)) * 8
	}
	if !cacheOnGoHeap {
		return n
	}
	return n + blockCacheSize + liveMemTables*maxMemTableSize
}
