package pipeline

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// Config tunes the pipeline. The zero value of each field takes its default.
type Config struct {
	// Bucket is the width of the epoch-aligned time buckets occurrences are
	// counted in (default 10 s).
	Bucket time.Duration `yaml:"bucket"`
	// FlushInterval is how long new occurrences may wait so that they are
	// sent together (default 1 s).
	FlushInterval time.Duration `yaml:"flush_interval"`
	// BatchEntries is how many outbox entries one send takes at most
	// (default 256).
	BatchEntries int `yaml:"batch_entries"`
	// MaxPending bounds each sink's undelivered occurrences (default 10
	// million). Beyond it the oldest are dropped and counted, so a sink that
	// never returns cannot fill the disk.
	MaxPending int64 `yaml:"max_pending"`
	// CacheConversations bounds the in-process cache of known keys (default
	// 1,000,000 conversations; negative disables it). Its bytes are
	// usually the tighter bound: 64 bytes a conversation whose id is a
	// UUID and whose keys are few (about six).
	CacheConversations int `yaml:"cache_conversations"`
	// CacheBytes bounds the same cache's memory: conversation ids, keys
	// and the bookkeeping of each (default 64 MiB).
	CacheBytes int64 `yaml:"cache_bytes"`
	// CacheTTL is how long a cached conversation is trusted (default 1 h;
	// keep it below the store's retention).
	CacheTTL time.Duration `yaml:"cache_ttl"`
	// RetryMin and RetryMax bound the jittered exponential backoff of a
	// failing sink (defaults 500 ms and 60 s).
	RetryMin time.Duration `yaml:"retry_min"`
	RetryMax time.Duration `yaml:"retry_max"`
	// FlushAttempts, when positive, makes Flush give up on a sink after
	// that many failed sends in a row instead of retrying until its
	// context ends. Lambda sets it: its input is redelivered later anyway,
	// and a sink that is not there should fail the invocation in a second,
	// not at its timeout.
	FlushAttempts int `yaml:"-"`

	// Guard, when set, maps flow/metric pairs beyond the cardinality limit
	// to the overflow series. It is applied as occurrences are ingested.
	Guard Guard `yaml:"-"`
	// OnMalformed, when set, is told each malformed metric attribute name
	// as it is ingested (the dashboard lists them); it must be quick.
	OnMalformed func(flow, name, reason string) `yaml:"-"`
	// OnSend, when set, is told the outcome of each Send, with the sink's
	// cursor name (the dashboard shows each sink's last success and
	// error); it must be quick. Sinks stay as they are, so every optional
	// interface of theirs reaches the pipeline.
	OnSend func(sink string, err error) `yaml:"-"`
	// CursorPrefix is put before each sink's Name to make the name its
	// cursor, state and telemetry are kept under (replay's "replay-", so
	// that a replay into a serve data directory neither takes nor moves
	// serve's pending points).
	CursorPrefix string `yaml:"-"`
	// Derive, when set, turns conversation paths on: customer.end events
	// are claimed (ClaimRequest.Ended) and ClosePaths derives each closed
	// path's points with it. The store must have been opened with
	// PathOptions.
	Derive flowmetrics.Deriver `yaml:"-"`
	// PathTouch, with Derive, is how often the store hears of a
	// conversation whose events the known-key cache answers (the store's
	// PathOptions.Step), so that its path stays open while events come:
	// the idle timeout counts from the last event, not the last new key.
	PathTouch time.Duration `yaml:"-"`
	// Now is the clock (time.Now if nil).
	Now func() time.Time `yaml:"-"`
}

// DefaultCacheTTL is CacheTTL when it is not set.
const DefaultCacheTTL = time.Hour

// DefaultCacheBytes is CacheBytes when it is not set.
const DefaultCacheBytes = 64 << 20

// Guard folds flow/metric pairs beyond a cardinality limit into one series
// (internal/cardinality).
type Guard interface {
	// Admit durably admits those of pairs that still fit under the limit.
	// The pipeline calls it with the pairs of a batch's new occurrences
	// before claiming them, so that no pair reaches the outbox, and so a
	// backend, without being in the store's admitted set. An error is a
	// store failure: the batch is not claimed.
	Admit(ctx context.Context, pairs []flowmetrics.Pair) error
	// Map returns the pair to count flow/metric under: itself when
	// admitted, the overflow pair otherwise.
	Map(flow, metric string) (string, string)
}

// Validate checks the section.
func (c Config) Validate() error {
	switch {
	case c.Bucket < 0 || (c.Bucket > 0 && c.Bucket < time.Second) || c.Bucket%time.Second != 0:
		return fmt.Errorf("bucket: %v is not a whole number of seconds ≥ 1s", c.Bucket)
	case c.FlushInterval < 0:
		return fmt.Errorf("flush_interval: negative")
	case c.BatchEntries < 0:
		return fmt.Errorf("batch_entries: negative")
	case c.MaxPending < 0:
		return fmt.Errorf("max_pending: negative")
	case c.CacheBytes < 0:
		return fmt.Errorf("cache_bytes: negative")
	case c.RetryMin < 0 || c.RetryMax < 0 || (c.RetryMax > 0 && c.RetryMin > c.RetryMax):
		return fmt.Errorf("retry_min/retry_max: need 0 ≤ retry_min ≤ retry_max")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Bucket == 0 {
		c.Bucket = 10 * time.Second
	}
	if c.FlushInterval == 0 {
		c.FlushInterval = time.Second
	}
	if c.BatchEntries == 0 {
		c.BatchEntries = 256
	}
	if c.MaxPending == 0 {
		c.MaxPending = 10_000_000
	}
	if c.CacheConversations == 0 {
		c.CacheConversations = 1_000_000
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = DefaultCacheBytes
	}
	if c.CacheTTL == 0 {
		c.CacheTTL = DefaultCacheTTL
	}
	if c.RetryMin == 0 {
		c.RetryMin = 500 * time.Millisecond
	}
	if c.RetryMax == 0 {
		c.RetryMax = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Pipeline connects a store and its sinks.
type Pipeline struct {
	cfg   Config
	store flowmetrics.Store
	m     *telemetry.Metrics
	log   *slog.Logger
	cache *knownCache
	// holder, when the cache is off and the store can say which keys it
	// holds (the memory store), is asked instead, a heldGroup of events at
	// a time.
	holder   flowmetrics.KeyHolder
	claims   *claimGroup
	drainers []*drainer
	// memos are Prepare's name memos, one per batch being prepared; each
	// keeps the flow metric names it parsed from batch to batch.
	memos sync.Pool
	// heldRest is how many more large batches Prepare does not ask the
	// holder about (askHeld).
	heldRest atomic.Int32
	// learned counts the claims whose keys the cache learned: a batch
	// prepared before the last of them is checked against the cache
	// again when it is committed.
	learned atomic.Uint64

	startOnce sync.Once
	stop      context.CancelFunc
	// cancelSends ends the sends in flight; Close calls it only when its
	// own deadline passes, so a stop never abandons a request the backend
	// may already have taken (and would take again when it is resent).
	cancelSends context.CancelFunc
	wg          sync.WaitGroup
	closeOnce   sync.Once
	closeErr    error
}

// New builds a pipeline. Call Start to deliver in the background, or Flush to
// deliver on demand (replay, Lambda).
func New(store flowmetrics.Store, sinks []flowmetrics.Sink, cfg Config, m *telemetry.Metrics, log *slog.Logger) *Pipeline {
	cfg = cfg.withDefaults()
	if log == nil {
		log = slog.Default()
	}
	p := &Pipeline{cfg: cfg, store: store, m: m, log: log, claims: newClaimGroup(store)}
	p.memos.New = func() any { return new(genesys.NameMemo) }
	// Series that exist from the start, at zero, so alerts on them work
	// before the first bad record.
	for _, r := range rejectReasons {
		m.RecordsRejected.WithLabelValues(r)
	}
	m.RecordsSkipped.WithLabelValues("other_topic")
	if cfg.CacheConversations > 0 {
		p.cache = newKnownCache(cfg.CacheConversations, cfg.CacheBytes, cfg.CacheTTL)
	} else if h, ok := store.(flowmetrics.KeyHolder); ok {
		p.holder = h
	}
	for _, s := range sinks {
		p.drainers = append(p.drainers, &drainer{p: p, sink: s, name: cfg.CursorPrefix + s.Name(), wake: make(chan struct{}, 1)})
	}
	return p
}

// Cursors returns the names the store keeps the sinks' cursors and state
// under (CursorPrefix and each sink's Name), in the order of the sinks.
func (p *Pipeline) Cursors() []string {
	names := make([]string, len(p.drainers))
	for i, d := range p.drainers {
		names[i] = d.name
	}
	return names
}

// Register declares the sinks to the store; call it once before Ingest.
func (p *Pipeline) Register(ctx context.Context) error {
	if err := p.store.Register(ctx, p.Cursors()); err != nil {
		return fmt.Errorf("register sinks: %w", err)
	}
	return p.Restore(ctx)
}

// Restore hands each StatefulSink its committed state. Register calls it; a
// caller that registers the sinks with the store itself (replay, which adds
// its sinks to those of a serve data directory) calls it after that, before
// the first Ingest.
func (p *Pipeline) Restore(ctx context.Context) error {
	for _, d := range p.drainers {
		if err := d.restore(ctx); err != nil {
			return err
		}
	}
	return nil
}

// restore hands the drainer's sink, if it is a StatefulSink, its committed
// state.
func (d *drainer) restore(ctx context.Context) error {
	p := d.p
	ss, ok := d.sink.(flowmetrics.StatefulSink)
	if !ok {
		return nil
	}
	st, err := p.store.SinkState(ctx, d.name)
	if err != nil {
		return fmt.Errorf("load %s state: %w", d.name, err)
	}
	if err := ss.Restore(ctx, st); err != nil {
		return fmt.Errorf("restore %s state: %w", d.name, err)
	}
	// What Restore itself changed (a file cut back to its committed
	// length, a first start's baseline, keys it could not read) is
	// committed before any Send: a crash before the first batch's
	// commit must find it.
	if u := ss.TakeState(); u != nil {
		cursor, err := p.store.Cursor(ctx, d.name)
		if err != nil {
			return fmt.Errorf("load %s cursor: %w", d.name, err)
		}
		if err := p.store.AckState(ctx, d.name, cursor, u); err != nil {
			return fmt.Errorf("commit %s state: %w", d.name, err)
		}
	}
	return nil
}

// RecordError names one rejected record.
type RecordError struct {
	Index int    `json:"index"`
	Line  int    `json:"line,omitempty"`
	Error string `json:"error"`
}

// Result tells what Ingest did with a batch of records.
type Result struct {
	Read        int
	Accepted    int
	Skipped     int
	Rejected    int
	Occurrences int // new occurrences claimed
	Malformed   int
	Errors      []RecordError
}

// Add accumulates another result (errors included).
func (r *Result) Add(o Result) {
	r.Read += o.Read
	r.Accepted += o.Accepted
	r.Skipped += o.Skipped
	r.Rejected += o.Rejected
	r.Occurrences += o.Occurrences
	r.Malformed += o.Malformed
	r.Errors = append(r.Errors, o.Errors...)
}

// Ingest extracts the occurrences of the accepted records and claims them.
// When it returns a nil error, every new occurrence is durably in the outbox
// (as durable as the store), so the records may be acknowledged. A
// *PendingError names records that must wait for another writer; the rest
// is as with nil. Any other error is a store failure: nothing may be
// acknowledged and the records should be retried; retrying is safe.
//
// It is Prepare, then Commit.
func (p *Pipeline) Ingest(ctx context.Context, recs []genesys.Record) (Result, error) {
	return p.Commit(ctx, p.Prepare(ctx, recs))
}

// memoBatch is the size of batch from which Prepare remembers the whole
// names it parsed (genesys.NameMemo.Batch): replay's batches of thousands, whose
// events repeat one another's names. The few events of a serve request
// seldom do.
const memoBatch = 256

// Prepared is a batch of records that Prepare sorted out and extracted:
// what Commit claims.
type Prepared struct {
	res Result
	c   claimBatch
	err error // the cardinality guard's store failure
}

// Prepare does the part of Ingest that claims nothing: it sorts each
// record out (accepted, skipped, rejected), extracts its occurrences,
// leaves out those the known-key cache says the store holds (with the
// cache off, those a KeyHolder store says it holds), and has the
// cardinality guard admit the pairs of the rest (fold). It may run in any
// goroutine, while earlier batches are being committed (replay prepares
// the next batch while the store claims this one): the cache only ever
// learns what the store durably holds, and a KeyHolder's answers hold for
// heldMargin, so what it leaves out is held whatever Commit does
// meanwhile, and what it lets through, Commit asks the store, the only
// arbiter of what is new. Batches prepared one after another have their
// pairs admitted in that order.
func (p *Pipeline) Prepare(ctx context.Context, recs []genesys.Record) *Prepared {
	b := &Prepared{c: claimBatch{now: p.cfg.Now(), learned: p.learned.Load()}}
	res, c := &b.res, &b.c
	var buf []string // room for an event's names the cache does not know
	memo := p.memos.Get().(*genesys.NameMemo)
	defer func() {
		memo.Reset()
		p.memos.Put(memo)
	}()
	if len(recs) >= memoBatch {
		memo.Batch()
		p.warmCache(len(recs), func(i int) (string, bool) {
			if r := recs[i]; r.Outcome == genesys.Accepted && r.Event != nil {
				return r.Event.ConversationID, true
			}
			return "", false
		})
	}
	held := heldGroup{asking: p.askHeld(len(recs))}
	for i, r := range recs {
		c.left = len(recs) - i
		if held.asking && i%heldEvents == 0 {
			held.ask(p.holder, i, recs[i:min(i+heldEvents, len(recs))])
			if len(recs) >= memoBatch && held.few() {
				held.asking = false
				p.heldRest.Store(heldRest)
			}
		}
		if !p.sortOut(r, res) {
			continue
		}
		if r.Event.Ended {
			p.m.PathEnds.Inc()
			if p.cfg.Derive != nil && len(p.cache.unknown(r.Event.ConversationID, endOcc, c.now)) > 0 {
				c.add(flowmetrics.ClaimRequest{ConversationID: r.Event.ConversationID, Ended: true}, r, false)
			}
			continue
		}
		conv := r.Event.ConversationID
		// Names the cache knows are left out before they are parsed and
		// copied: most events repeat every key their conversation has.
		names, known := p.cache.unknownNames(conv, r.Event.MetricNames, c.now, buf)
		q := held.of(i)
		if q != nil && q.Held != 0 {
			// The store's own answer, as the cache's: what it holds needs
			// no parsing nor claiming.
			names, known = unheld(r.Event.MetricNames, q.Held, buf)
		}
		if known > 0 {
			buf = names[:0]
		}
		occs := p.extract(names, memo, res)
		if len(occs) > 0 {
			c.add(flowmetrics.ClaimRequest{ConversationID: conv, Occurrences: occs}, r, false)
			continue
		}
		if known == 0 {
			continue
		}
		if p.cfg.Derive != nil && (q != nil && !q.Quiet || q == nil && p.cache.tell(conv, c.now, p.cfg.PathTouch)) {
			// One known key is enough for the store to count the event:
			// the first, as before the cache left them out.
			if first := p.extract(firstKnown(r.Event.MetricNames, names), nil, res); len(first) > 0 {
				c.add(flowmetrics.ClaimRequest{ConversationID: conv, Occurrences: first}, r, true)
				continue
			}
		}
		p.m.CacheHits.Inc()
	}
	if len(c.reqs) > 0 {
		b.err = p.fold(ctx, c)
	}
	return b
}

// Commit claims a prepared batch: it is the second half of Ingest, and
// returns what Ingest returns. Commits of batches prepared one after
// another may run one after another while later batches are prepared.
func (p *Pipeline) Commit(ctx context.Context, b *Prepared) (Result, error) {
	return p.StartCommit(ctx, b)()
}

// StartCommit is Commit in two halves: it returns once the batch's claim
// is in the store, where every later claim sees it (with a store that
// can tell: the embedded one), and finish waits until the claim is
// durable and returns what Commit returns. finish must be called, and
// soon (concurrent Ingest calls may share the claim). A caller may start
// the commit of the next batch before it finishes this one, so that the
// store's sync of one batch overlaps the claim of the next.
func (p *Pipeline) StartCommit(ctx context.Context, b *Prepared) (finish func() (Result, error)) {
	res, c := b.res, &b.c
	done := func(err error) func() (Result, error) {
		p.m.RecordsAccepted.Add(float64(res.Accepted))
		return func() (Result, error) { return res, err }
	}
	if b.err != nil {
		p.m.StoreErrors.WithLabelValues("admit").Inc()
		return done(b.err)
	}
	if p.cache != nil && c.learned != p.learned.Load() {
		// The cache learned from other commits since the batch was
		// prepared (the batch before it, most often, which claimed many
		// of the same conversations): what it now knows need not reach
		// the store.
		p.refilter(c)
	}
	if len(c.reqs) == 0 {
		return done(nil)
	}
	start := time.Now()
	wait := p.claims.Start(ctx, c.reqs)
	return func() (Result, error) {
		fresh, err := wait()
		p.m.StoreLatency.WithLabelValues("claim").Observe(time.Since(start).Seconds())
		return p.claimed(c, res, fresh, err)
	}
}

// refilter leaves out of c's requests the keys the cache learned since c
// was prepared; a request left with none is dropped. End requests and
// touches (which carry a key the cache already knew) stay as they are.
func (p *Pipeline) refilter(c *claimBatch) {
	now := p.cfg.Now()
	p.warmCache(len(c.reqs), func(i int) (string, bool) { return c.reqs[i].ConversationID, true })
	j := 0
	for i, rq := range c.reqs {
		if !rq.Ended && !c.touch[i] {
			rq.Occurrences = p.cache.unknown(rq.ConversationID, rq.Occurrences, now)
			if len(rq.Occurrences) == 0 {
				p.m.CacheHits.Inc()
				continue
			}
		}
		c.reqs[j], c.recs[j], c.touch[j] = rq, c.recs[i], c.touch[i]
		j++
	}
	clear(c.reqs[j:])
	c.reqs, c.recs, c.touch = c.reqs[:j], c.recs[:j], c.touch[:j]
}

// fold has the cardinality guard admit the pairs of the batch's
// occurrences, then folds those it did not admit into the overflow series.
// Folding happens once, before the claim, so the outbox, every sink and the
// pipeline's own occurrence counter agree.
func (p *Pipeline) fold(ctx context.Context, c *claimBatch) error {
	g := p.cfg.Guard
	if g == nil {
		return nil
	}
	// The batch's distinct pairs, in the order they first come. A batch
	// has many occurrences but few pairs, so the guard, which looks each
	// pair up under its lock, is asked once a pair. The pairs of a request
	// refused whatever the store holds must not take the places of others.
	var pt pairTable
	refused := false
	for _, rq := range c.reqs {
		if (store.Size{}).Plus(rq.Occurrences).Check(rq.ConversationID) != nil {
			refused = true
			continue
		}
		for _, o := range rq.Occurrences {
			pt.index(o.Flow, o.Metric)
		}
	}
	if err := g.Admit(ctx, pt.pairs); err != nil {
		return err
	}
	mapped := make([]flowmetrics.Pair, len(pt.pairs))
	folds := refused
	for i, pr := range pt.pairs {
		mapped[i].Flow, mapped[i].Metric = g.Map(pr.Flow, pr.Metric)
		folds = folds || mapped[i] != pr
	}
	if !folds {
		return nil // every pair admitted: nothing changes
	}
	for _, rq := range c.reqs {
		refused := (store.Size{}).Plus(rq.Occurrences).Check(rq.ConversationID) != nil
		for i, o := range rq.Occurrences {
			var f, m string
			if refused {
				f, m = g.Map(o.Flow, o.Metric)
			} else {
				pr := mapped[pt.index(o.Flow, o.Metric)]
				f, m = pr.Flow, pr.Metric
			}
			if f != o.Flow || m != o.Metric {
				rq.Occurrences[i].Flow, rq.Occurrences[i].Metric = f, m
				if c.folded == nil {
					c.folded = map[string]bool{}
				}
				c.folded[o.Key] = true
			}
		}
	}
	return nil
}

// pairTable numbers the distinct flow/metric pairs of a batch's
// occurrences in the order they first come. Most occurrences are found
// in a small table of the pairs seen last, placed by their lengths and
// a few bytes, with two string comparisons (the name memo gives the
// occurrences of one pair the same strings, which compare at once); the
// others in a map.
type pairTable struct {
	pairs  []flowmetrics.Pair
	all    map[flowmetrics.Pair]int32
	recent [64]struct {
		pr  flowmetrics.Pair
		i   int32
		set bool
	}
}

// index returns the number of flow/metric, numbering it if it is new.
func (t *pairTable) index(flow, metric string) int32 {
	h := uint64(len(flow)) | uint64(len(metric))<<8
	if len(flow) > 0 && len(metric) > 0 {
		h |= uint64(flow[len(flow)-1])<<16 | uint64(metric[0])<<24 | uint64(metric[len(metric)/2])<<32 | uint64(metric[len(metric)-1])<<40
	}
	r := &t.recent[h*0x9e3779b97f4a7c15>>58] // 64 places
	if r.set && r.pr.Flow == flow && r.pr.Metric == metric {
		return r.i
	}
	pr := flowmetrics.Pair{Flow: flow, Metric: metric}
	i, ok := t.all[pr]
	if !ok {
		if t.all == nil {
			t.all = map[flowmetrics.Pair]int32{}
		}
		i = int32(len(t.pairs))
		t.all[pr] = i
		t.pairs = append(t.pairs, pr)
	}
	r.pr, r.i, r.set = pr, i, true
	return i
}

// claimBatch is what one Ingest call asks the store.
type claimBatch struct {
	now  time.Time
	reqs []flowmetrics.ClaimRequest
	recs []recordRef // each request's record
	// touch: the request only tells the store of an event whose keys the
	// cache knows (paths on).
	touch  []bool
	folded map[string]bool // keys the guard folded into the overflow series
	left   int             // records not yet sorted out, this one included
	// learned is the cache's generation when the batch was prepared.
	learned uint64
}

// recordRef names a record in its batch (not its event, which the claim
// does not need to keep).
type recordRef struct{ Index, Line int }

func (c *claimBatch) add(r flowmetrics.ClaimRequest, rec genesys.Record, touch bool) {
	if c.reqs == nil {
		// Room for every record left, at once: one allocation rather
		// than one per doubling.
		c.reqs = make([]flowmetrics.ClaimRequest, 0, c.left)
		c.recs = make([]recordRef, 0, c.left)
		c.touch = make([]bool, 0, c.left)
	}
	c.reqs = append(c.reqs, r)
	c.recs = append(c.recs, recordRef{rec.Index, rec.Line})
	c.touch = append(c.touch, touch)
}

// sortOut counts a record as read and as accepted, skipped or rejected
// (naming a rejected one in res.Errors); it reports whether it was
// accepted. The accepted counter is added once the claim has said which
// records the store refuses.
func (p *Pipeline) sortOut(r genesys.Record, res *Result) bool {
	res.Read++
	p.m.RecordsRead.Inc()
	switch r.Outcome {
	case genesys.Skipped:
		res.Skipped++
		p.m.RecordsSkipped.WithLabelValues("other_topic").Inc()
		return false
	case genesys.Rejected:
		res.reject(p.m, recordRef{r.Index, r.Line}, RejectReason(r.Err), r.Err)
		return false
	}
	if err := store.CheckID(r.Event.ConversationID); err != nil {
		res.reject(p.m, recordRef{r.Index, r.Line}, flowmetrics.RefusedIDTooLong, err)
		return false
	}
	res.Accepted++
	return true
}

// extract returns the occurrences of an event's metric names (or some of
// them), parsing only those memo (if any) has not seen, and counts and reports its
// malformed metric attributes.
func (p *Pipeline) extract(names []string, memo *genesys.NameMemo, res *Result) []flowmetrics.Occurrence {
	var occs []flowmetrics.Occurrence
	var bad []genesys.Malformed
	if memo != nil {
		occs, bad = memo.Extract(names)
	} else {
		occs, bad = genesys.ExtractNames(names)
	}
	for _, b := range bad {
		p.m.CountMalformed(b.Flow)
		if errors.Is(b.Err, genesys.ErrNameTooLong) {
			p.m.Limits.WithLabelValues("name_too_long").Inc()
		}
		if p.cfg.OnMalformed != nil {
			p.cfg.OnMalformed(b.Flow, b.Name, b.Reason)
		}
	}
	res.Malformed += len(bad)
	return occs
}

// warmCache has the known-key cache read ahead the memory of the
// conversations of a large batch (knownCache.warm) before its lookups, one
// per item of the batch: id(i) returns the item's conversation and whether
// the cache will be asked about it. A small batch (a serve request) is
// looked up as it is: its few lookups gain nothing.
func (p *Pipeline) warmCache(n int, id func(i int) (string, bool)) {
	if p.cache == nil || n < memoBatch {
		return
	}
	p.cache.warm(n, id)
}

// heldEvents is how many events Prepare asks a KeyHolder about at once:
// one lock of the store for a few dozen lookups, which the store reads
// ahead together, and never for long, as the store's claims (of the batch
// before, in replay) wait for it.
const heldEvents = 64

// heldMargin is how long the store's answers must stay true after it
// gives them (flowmetrics.KeyQuery): far longer than a prepared batch
// waits for its claim.
const heldMargin = time.Minute

// A large batch whose events seldom have held names (a time-ordered
// archive's: an event's conversation had its event before in the same
// batch, or the one before, whose claim is not in yet) would pay a lookup
// per event for nothing: once heldTrial of its events were asked about
// and fewer than one in heldFew had a held name, Prepare stops asking
// for the rest of the batch, and the next heldRest large batches do not
// ask at all. A lookup costs about what leaving out the held names of an
// event saves (both are a few cache misses), so most must have some. (A
// shuffled archive's events have held names four times in five; a
// time-ordered one's, one in ten.)
const (
	heldTrial = 512
	heldFew   = 2
	heldRest  = 8
)

// askHeld reports whether Prepare asks the holder about a batch of n
// records: a small one (serve's) always, a large one unless it is one of
// the heldRest after a batch that found too few.
func (p *Pipeline) askHeld(n int) bool {
	if p.holder == nil {
		return false
	}
	for n >= memoBatch {
		r := p.heldRest.Load()
		if r <= 0 {
			break
		}
		if p.heldRest.CompareAndSwap(r, r-1) {
			return false
		}
	}
	return true
}

// heldGroup is what a KeyHolder said of a group of events: the queries
// of those it was asked about, and each event's query.
type heldGroup struct {
	asking bool
	first  int // the index in the batch of the group's first event
	qs     []flowmetrics.KeyQuery
	at     [heldEvents]int8 // each event's place in qs, -1: not asked
	// Events asked about in the batch so far, and those with held names.
	asked, found int
}

// ask asks h about the events of recs with metric names, recs being the
// events of the batch from first on (first%heldEvents == 0).
func (g *heldGroup) ask(h flowmetrics.KeyHolder, first int, recs []genesys.Record) {
	if g.qs == nil {
		g.qs = make([]flowmetrics.KeyQuery, 0, heldEvents)
	}
	g.first, g.qs = first, g.qs[:0]
	for j, r := range recs {
		g.at[j] = -1
		if r.Outcome != genesys.Accepted || r.Event == nil || r.Event.Ended || len(r.Event.MetricNames) == 0 {
			continue
		}
		g.at[j] = int8(len(g.qs))
		g.qs = append(g.qs, flowmetrics.KeyQuery{ConversationID: r.Event.ConversationID, Keys: r.Event.MetricNames})
	}
	if len(g.qs) == 0 {
		return
	}
	h.HeldKeys(g.qs, heldMargin)
	g.asked += len(g.qs)
	for _, q := range g.qs {
		if q.Held != 0 {
			g.found++
		}
	}
}

// few reports whether the batch's trial found too few events with held
// names.
func (g *heldGroup) few() bool { return g.asked >= heldTrial && g.found*heldFew < g.asked }

// of returns the query of event i of the batch, nil when none was asked.
func (g *heldGroup) of(i int) *flowmetrics.KeyQuery {
	if g.qs == nil || i-g.first >= heldEvents || i < g.first {
		return nil
	}
	if k := g.at[i-g.first]; k >= 0 {
		return &g.qs[k]
	}
	return nil
}

// unheld appends to buf those of names whose bit is not set in held (not
// zero), and returns them and how many were held.
func unheld(names []string, held uint64, buf []string) (out []string, known int) {
	out = buf[:0]
	for k, n := range names {
		if k < 64 && held&(1<<k) != 0 {
			known++
			continue
		}
		out = append(out, n)
	}
	return out, known
}

// firstKnown returns, as a slice of one, the least of names that is not
// in unknown (the names the cache did not know; it knew at least one).
func firstKnown(names, unknown []string) []string {
	first := ""
	for _, n := range names {
		if (first == "" || n < first) && !slices.Contains(unknown, n) {
			first = n
		}
	}
	return []string{first}
}

// claimed takes the store's answer to the batch's requests: it rejects
// the records the store refuses, teaches the cache what the store now
// holds, counts the new occurrences and wakes the sinks.
func (p *Pipeline) claimed(c *claimBatch, res Result, fresh []flowmetrics.Occurrence, err error) (Result, error) {
	var pe *flowmetrics.PendingError
	var re *flowmetrics.RefusedError
	if err != nil && !errors.As(err, &pe) && !errors.As(err, &re) {
		p.m.StoreErrors.WithLabelValues("claim").Inc()
		p.m.RecordsAccepted.Add(float64(res.Accepted))
		return res, fmt.Errorf("claim: %w", err)
	}
	var pendingErr *PendingError
	deferred := map[int]bool{}
	if pe != nil {
		pendingErr = &PendingError{}
		for _, i := range pe.Requests {
			deferred[i] = true
			pendingErr.Records = append(pendingErr.Records, c.recs[i].Index)
		}
		p.m.RecordsDeferred.Add(float64(len(pe.Requests)))
	}
	if re != nil {
		// A refused record can never be claimed: it is rejected, named and
		// counted like a record that does not decode, and the rest of the
		// batch goes on.
		for _, f := range re.Refusals {
			deferred[f.Request] = true
			res.Accepted--
			res.reject(p.m, c.recs[f.Request], f.Reason, f.Err)
		}
	}
	p.m.RecordsAccepted.Add(float64(res.Accepted))
	p.warmCache(len(c.reqs), func(i int) (string, bool) { return c.reqs[i].ConversationID, !deferred[i] })
	for i, rq := range c.reqs {
		// A deferred request's keys are not known yet: the holder may die
		// before delivering, and the retry must reach the store. A refused
		// one's are not in the store at all.
		if !deferred[i] && p.cache != nil {
			keys := occKeys(rq.Occurrences)
			if rq.Ended {
				keys = append(keys, endOcc[0].Key)
			}
			if n := p.cache.learn(rq.ConversationID, keys, c.now); n > 0 {
				p.m.Limits.WithLabelValues("cache_bytes").Add(float64(n))
			}
		}
	}
	p.learned.Add(1)
	p.countOccurrences(fresh)
	for _, o := range fresh {
		if c.folded[o.Key] {
			p.m.Overflow.Inc()
		}
		if o.AfterClose {
			p.m.PathLate.Inc()
		}
	}
	res.Occurrences = len(fresh)
	if len(fresh) > 0 {
		for _, d := range p.drainers {
			d.notify()
		}
	}
	if pendingErr != nil {
		return res, pendingErr
	}
	return res, nil
}

// countOccurrences adds the new occurrences to their flow/metric pair's
// counter, once per pair: finding a labelled counter hashes its labels
// under the vector's lock, and a claim's thousand occurrences have a few
// dozen pairs.
func (p *Pipeline) countOccurrences(fresh []flowmetrics.Occurrence) {
	if len(fresh) == 0 {
		return
	}
	var pt pairTable
	counts := make([]int, 0, 64)
	for _, o := range fresh {
		i := pt.index(o.Flow, o.Metric)
		if int(i) == len(counts) {
			counts = append(counts, 0)
		}
		counts[i]++
	}
	for i, pr := range pt.pairs {
		p.m.Occurrences.WithLabelValues(pr.Flow, pr.Metric).Add(float64(counts[i]))
	}
}

// reject counts r as rejected for reason (a label of
// flowmetrics_records_rejected_total) and names it with err.
func (res *Result) reject(m *telemetry.Metrics, r recordRef, reason string, err error) {
	res.Rejected++
	m.RecordsRejected.WithLabelValues(reason).Inc()
	msg := "rejected"
	if err != nil {
		msg = err.Error()
	}
	res.Errors = append(res.Errors, RecordError{Index: r.Index, Line: r.Line, Error: msg})
}

// PendingError is Ingest's report that some accepted records hold metric
// keys another writer of a shared store claimed and has not yet delivered.
// Everything else of the batch is claimed as with a nil error; the named
// records must not be acknowledged but retried later (a caller that cannot
// tell records apart retries them all, which is safe).
type PendingError struct {
	// Records are the Index fields of the records concerned.
	Records []int
}

func (e *PendingError) Error() string {
	return fmt.Sprintf("claim: %d records hold keys pending under another writer; retry them later", len(e.Records))
}

// endOcc stands in the known-key cache for "the store has this
// conversation's customer.end": no metric key is empty.
var endOcc = []flowmetrics.Occurrence{{Key: ""}}

// ClosePaths closes every conversation path due at asOf (see
// flowmetrics.Store.ClosePaths), in calls of at most limit conversations
// (a default when not positive), and returns how many it closed. serve
// calls it every second with the current time; replay, at the end of its
// input, with a time past every deadline its input can have set.
func (p *Pipeline) ClosePaths(ctx context.Context, asOf time.Time, limit int) (int, error) {
	if p.cfg.Derive == nil {
		return 0, nil
	}
	if limit <= 0 {
		limit = 256
	}
	total := 0
	for {
		n, err := p.ClosePathsOnce(ctx, asOf, limit)
		total += n
		if err != nil || n < limit {
			return total, err
		}
	}
}

// ClosePathsOnce is one call of ClosePaths' loop: it closes at most limit
// conversation paths due at asOf. A caller that delivers between calls
// (Lambda's sweep) uses it to keep the outbox small.
func (p *Pipeline) ClosePathsOnce(ctx context.Context, asOf time.Time, limit int) (int, error) {
	if p.cfg.Derive == nil {
		return 0, nil
	}
	n, err := p.closeCounted(func(derive flowmetrics.Deriver) (int, error) {
		return p.store.ClosePaths(ctx, asOf, limit, derive)
	})
	if err != nil {
		return 0, fmt.Errorf("close paths: %w", err)
	}
	return n, nil
}

// ClosePathsOf closes the paths of the named conversations that are due at
// asOf (see flowmetrics.PathCloser), and returns how many it closed. A
// store that cannot close named paths (or paths off) closes nothing.
func (p *Pipeline) ClosePathsOf(ctx context.Context, conversationIDs []string, asOf time.Time) (int, error) {
	pc, ok := p.store.(flowmetrics.PathCloser)
	if p.cfg.Derive == nil || !ok {
		return 0, nil
	}
	n, err := p.closeCounted(func(derive flowmetrics.Deriver) (int, error) {
		return pc.ClosePathsOf(ctx, conversationIDs, asOf, derive)
	})
	if err != nil {
		return 0, fmt.Errorf("close paths: %w", err)
	}
	return n, nil
}

// pathStarter is a store whose named closes can overlap what follows them
// (the embedded store): StartClosePathsOf returns once the closes are
// applied, where every later claim and close sees them, and wait waits
// until they are durable (their points are delivered only then).
type pathStarter interface {
	StartClosePathsOf(ctx context.Context, conversationIDs []string, asOf time.Time, derive flowmetrics.Deriver) (closed int, wait func() error, err error)
}

// StartClosePathsOf is ClosePathsOf in two halves: it returns once the
// closes are in the store (with a store that can tell: the embedded one;
// otherwise once they are durable), and wait waits until they are
// durable. wait must be called. A replay closes paths this way beside its
// claims, so that a close's sync does not hold the next claim up.
func (p *Pipeline) StartClosePathsOf(ctx context.Context, conversationIDs []string, asOf time.Time) (closed int, wait func() error, err error) {
	ps, ok := p.store.(pathStarter)
	if p.cfg.Derive == nil || !ok {
		n, err := p.ClosePathsOf(ctx, conversationIDs, asOf)
		return n, func() error { return nil }, err
	}
	var synced func() error
	n, err := p.closeCounted(func(derive flowmetrics.Deriver) (n int, err error) {
		n, synced, err = ps.StartClosePathsOf(ctx, conversationIDs, asOf, derive)
		return n, err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("close paths: %w", err)
	}
	return n, func() error {
		if err := synced(); err != nil {
			p.m.StoreErrors.WithLabelValues("close_paths").Inc()
			return fmt.Errorf("close paths: %w", err)
		}
		if n > 0 {
			for _, d := range p.drainers {
				d.notify()
			}
		}
		return nil
	}, nil
}

// closeCounted runs one store close call with the configured deriver, and
// counts what it closed and derived once the call succeeded.
func (p *Pipeline) closeCounted(call func(flowmetrics.Deriver) (int, error)) (int, error) {
	var ended, idle int
	var kinds [256]int // by flowmetrics.PathKind
	var mu sync.Mutex  // a store may derive from several goroutines
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		pts := p.cfg.Derive(cp)
		mu.Lock()
		defer mu.Unlock()
		if cp.Ended {
			ended++
		} else {
			idle++
		}
		for _, pt := range pts {
			kinds[pt.Kind]++
		}
		return pts
	}
	start := time.Now()
	n, err := call(derive)
	p.m.StoreLatency.WithLabelValues("close_paths").Observe(time.Since(start).Seconds())
	if err != nil {
		p.m.StoreErrors.WithLabelValues("close_paths").Inc()
		return 0, err
	}
	p.m.PathsClosed.WithLabelValues("end").Add(float64(ended))
	p.m.PathsClosed.WithLabelValues("idle").Add(float64(idle))
	for k, c := range kinds {
		if c > 0 {
			p.m.PathPoints.WithLabelValues(flowmetrics.PathKind(k).String()).Add(float64(c))
		}
	}
	if n > 0 {
		for _, d := range p.drainers {
			d.notify()
		}
	}
	return n, nil
}

// ClosePathsEvery calls ClosePaths with the current time every interval
// until ctx ends.
func (p *Pipeline) ClosePathsEvery(ctx context.Context, every time.Duration) {
	if p.cfg.Derive == nil {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := p.ClosePaths(ctx, p.cfg.Now(), 0); err != nil && ctx.Err() == nil {
				p.log.Error("closing conversation paths; will try again", "err", err)
			}
		}
	}
}

func occKeys(occs []flowmetrics.Occurrence) []string {
	out := make([]string, len(occs))
	for i, o := range occs {
		out[i] = o.Key
	}
	return out
}

var rejectReasons = []string{"invalid_json", "missing_conversation_id", "missing_attributes", "invalid_attributes", "too_large", "too_many_attributes", "not_an_event", "invalid",
	flowmetrics.RefusedIDTooLong, flowmetrics.RefusedConversation, flowmetrics.RefusedByStore}

// RejectReason maps a decode error to the low-cardinality reason label of
// flowmetrics_records_rejected_total.
func RejectReason(err error) string {
	switch {
	case errors.Is(err, genesys.ErrNotJSON):
		return "invalid_json"
	case errors.Is(err, genesys.ErrNoConversationID):
		return "missing_conversation_id"
	case errors.Is(err, genesys.ErrNoAttributes):
		return "missing_attributes"
	case errors.Is(err, genesys.ErrBadAttributes):
		return "invalid_attributes"
	case errors.Is(err, genesys.ErrTooLarge):
		return "too_large"
	case errors.Is(err, genesys.ErrTooManyAttrs):
		return "too_many_attributes"
	case errors.Is(err, genesys.ErrNotEvent):
		return "not_an_event"
	}
	return "invalid"
}

// Start runs one background drainer per sink until Close.
func (p *Pipeline) Start() {
	p.startOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		sendCtx, cancelSends := context.WithCancel(context.Background())
		p.stop, p.cancelSends = cancel, cancelSends
		for _, d := range p.drainers {
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				d.run(ctx, sendCtx)
			}()
		}
	})
}

// Flush delivers everything in the outbox to every sink now, retrying a
// failing sink with backoff until ctx ends; it returns the sinks' last
// errors if ctx ended first.
func (p *Pipeline) Flush(ctx context.Context) error {
	var errs []error
	for _, d := range p.drainers {
		if err := d.flush(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d.name, err))
		}
	}
	return errors.Join(errs...)
}

// Close stops the background drainers, flushes what is pending within ctx's
// deadline and closes the sinks (not the store, which the caller opened). It
// is safe to call twice.
func (p *Pipeline) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		if p.stop != nil {
			// The drainers finish the batch they are sending (and commit
			// its cursor) before they stop, unless ctx ends first.
			p.stop()
			done := make(chan struct{})
			go func() { p.wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-ctx.Done():
				p.cancelSends()
				<-done
			}
			p.cancelSends()
		}
		var errs []error
		if err := p.Flush(ctx); err != nil {
			errs = append(errs, fmt.Errorf("flush: %w", err))
		}
		for _, d := range p.drainers {
			if err := d.sink.Close(ctx); err != nil {
				errs = append(errs, fmt.Errorf("close %s: %w", d.name, err))
			}
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// UpdateDepth refreshes the outbox depth gauges.
func (p *Pipeline) UpdateDepth(ctx context.Context) {
	for _, d := range p.drainers {
		if n, err := p.store.OutboxDepth(ctx, d.name); err == nil {
			p.m.OutboxDepth.WithLabelValues(d.name).Set(float64(n))
		}
	}
}

// drainer delivers the outbox to one sink. mu makes the background loop and
// Flush take turns, so a batch is never sent twice concurrently.
type drainer struct {
	p    *Pipeline
	sink flowmetrics.Sink
	name string
	wake chan struct{}
	mu   sync.Mutex
	// held is a batch whose send failed. It is sent again exactly as it
	// was, so a sink that remembers what of it was accepted can resume
	// instead of repeating.
	held *batch
	// stale: a batch was abandoned after a send of it had begun (its
	// entries' lease ran out); the sink's state must be restored from the
	// store before the next send.
	stale bool
}

type batch struct {
	points []flowmetrics.Point
	// paths are the entries' path points, for a flowmetrics.PathSink.
	paths     []flowmetrics.PathPoint
	after     uint64 // the cursor it was read after
	last      uint64 // sequence number of the batch's last outbox entry
	entries   int    // outbox entries it holds
	n         int    // occurrences and path points
	delivered bool   // the sink accepted (or permanently refused) it
	// pointsSent: Send accepted the points; only SendPaths is left.
	pointsSent bool
	// update is what a StatefulSink's state became by delivering the
	// batch; it is committed with the cursor.
	update flowmetrics.StateUpdate
	// idle: no entries, only a Holder's due points (sent once per turn).
	idle bool
	// tried: a send of it began.
	tried bool
}

func (d *drainer) notify() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// run drains until ctx ends. Sends use sendCtx, which outlives ctx, so the
// batch in flight when ctx ends is finished rather than cut off.
func (d *drainer) run(ctx, sendCtx context.Context) {
	tick := time.NewTicker(d.p.cfg.FlushInterval)
	defer tick.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
			// Linger so occurrences arriving together are sent together.
			if !sleep(ctx, d.p.cfg.FlushInterval) {
				return
			}
		case <-tick.C:
		}
		for {
			if ctx.Err() != nil {
				return
			}
			d.mu.Lock()
			more, err := d.drainOnce(sendCtx)
			d.mu.Unlock()
			d.p.UpdateDepth(sendCtx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				failures++
				d.p.m.SinkBatchRetries.WithLabelValues(d.name).Inc()
				if !sleep(ctx, d.p.backoff(failures)) {
					return
				}
				continue
			}
			failures = 0
			if !more {
				break
			}
		}
	}
}

func (d *drainer) flush(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.p.UpdateDepth(context.WithoutCancel(ctx))
	failures := 0
	for {
		more, err := d.drainOnce(ctx)
		if err != nil {
			failures++
			if n := d.p.cfg.FlushAttempts; n > 0 && failures >= n {
				return err
			}
			d.p.m.SinkBatchRetries.WithLabelValues(d.name).Inc()
			if notBefore(ctx, err) {
				return err // the sink will not try again before ctx ends
			}
			if !sleep(ctx, d.p.backoff(failures)) {
				return err
			}
			continue
		}
		failures = 0
		if !more {
			return nil
		}
	}
}

// drainOnce sends one batch from the outbox and advances the cursor. It
// reports whether there may be more to send.
func (d *drainer) drainOnce(ctx context.Context) (more bool, err error) {
	p := d.p
	b := d.held
	if b == nil {
		if b, err = d.next(ctx); b == nil || err != nil {
			return false, err
		}
	}
	d.held = b // kept until the cursor is safely past it
	// A batch held as delivered was sent, but its cursor could not be
	// recorded: only the acknowledgement is retried, not the send.
	if !b.delivered {
		live, lerr := d.leased(ctx, b)
		if lerr != nil {
			return false, lerr
		}
		if !live {
			return true, nil // read the outbox afresh
		}
		err = d.send(ctx, b)
		if p.cfg.OnSend != nil {
			p.cfg.OnSend(d.name, err)
		}
		switch {
		case err == nil:
			p.m.SinkSends.WithLabelValues(d.name).Inc()
			p.m.SinkPoints.WithLabelValues(d.name).Add(float64(len(b.points)))
		case flowmetrics.IsPermanent(err):
			p.m.SinkBatchFailures.WithLabelValues(d.name, "permanent").Inc()
			p.m.OutboxDropped.WithLabelValues(d.name, "rejected_by_sink").Add(float64(b.n))
			p.log.Error("sink rejected a batch; dropping it", "sink", d.name, "points", len(b.points), "occurrences", b.n, "err", err)
		default:
			p.m.SinkBatchFailures.WithLabelValues(d.name, "error").Inc()
			p.log.Warn("sink send failed; will retry", "sink", d.name, "points", len(b.points), "err", err)
			return false, err
		}
		b.delivered = true
		if ss, ok := d.sink.(flowmetrics.StatefulSink); ok {
			b.update = ss.TakeState()
		}
	}
	if err := p.store.AckState(ctx, d.name, b.last, b.update); err != nil {
		p.m.StoreErrors.WithLabelValues("ack").Inc()
		return false, err
	}
	d.held = nil
	return !b.idle, nil
}

// leased reports whether b may be sent. With a store whose outbox entries
// are leased (flowmetrics.Leaser), a batch whose entries were withdrawn
// meanwhile (a send that failed and was held past the lease) is abandoned:
// live is false, and the next drainOnce reads the outbox afresh. Its
// occurrences and paths are claimed or closed again, by this instance or
// another, from the events the caller did not acknowledge. A stateful
// sink's state, which a partly delivered send may have moved, is restored
// from the store before the next send, as after a restart.
func (d *drainer) leased(ctx context.Context, b *batch) (live bool, err error) {
	l, leased := d.p.store.(flowmetrics.Leaser)
	if !leased || b.idle {
		return true, nil
	}
	live = l.Holds(b.after, b.last, b.entries)
	if !live {
		d.held = nil
		d.stale = d.stale || b.tried
		d.p.log.Warn("a batch held past its outbox entries' lease was abandoned unsent; their events' redelivery claims them again",
			"sink", d.name, "points", len(b.points), "path_points", len(b.paths), "send_began", b.tried)
	}
	if d.stale {
		if err := d.restore(ctx); err != nil {
			return false, err
		}
		d.stale = false
	}
	b.tried = live
	return live, nil
}

// next reads the next batch from the sink's cursor; nil when there is none.
func (d *drainer) next(ctx context.Context) (*batch, error) {
	p := d.p
	cursor, err := p.store.Cursor(ctx, d.name)
	if err != nil {
		p.m.StoreErrors.WithLabelValues("cursor").Inc()
		return nil, err
	}
	if cursor, err = d.shed(ctx, cursor); err != nil {
		return nil, err
	}
	entries, err := p.store.ReadOutbox(ctx, cursor, p.cfg.BatchEntries)
	if err != nil {
		p.m.StoreErrors.WithLabelValues("read_outbox").Inc()
		return nil, err
	}
	if len(entries) == 0 {
		// Nothing new, but a sink holding points until a time passes
		// may have some due: an empty send, committed at the same cursor.
		if h, ok := d.sink.(flowmetrics.Holder); ok && h.Due(p.cfg.Now()) {
			return &batch{last: cursor, idle: true}, nil
		}
		return nil, nil
	}
	points, n := Aggregate(entries, p.cfg.Bucket)
	b := &batch{points: points, after: cursor, last: entries[len(entries)-1].Seq, entries: len(entries), n: n}
	np := 0
	for _, e := range entries {
		np += len(e.Paths)
	}
	for _, e := range entries {
		switch {
		case np > 0 && len(e.Paths) == np:
			// All in one entry (one close call's): no copy.
			b.paths = e.Paths
		case len(e.Paths) > 0:
			if b.paths == nil {
				// Sized once: a batch of closes holds many thousand points.
				b.paths = make([]flowmetrics.PathPoint, 0, np)
			}
			b.paths = append(b.paths, e.Paths...)
		}
	}
	b.n += len(b.paths)
	if _, ok := d.sink.(flowmetrics.PathSink); !ok && len(b.paths) > 0 {
		p.m.PathsUnsupported.WithLabelValues(d.name).Add(float64(len(b.paths)))
		b.paths = nil
	}
	return b, nil
}

// send delivers a batch: its points with Send (unless it has none, or Send
// already took them; an idle batch is sent as it is), then its path points
// with SendPaths.
func (d *drainer) send(ctx context.Context, b *batch) error {
	if !b.pointsSent && (len(b.points) > 0 || b.idle) {
		if err := d.sink.Send(ctx, b.points); err != nil {
			return err
		}
	}
	b.pointsSent = true
	if len(b.paths) > 0 {
		// A sink without SendPaths never gets here: next dropped them.
		return d.sink.(flowmetrics.PathSink).SendPaths(ctx, b.paths)
	}
	return nil
}

// shed drops the oldest pending entries of a sink that is over MaxPending,
// and returns the cursor after them.
func (d *drainer) shed(ctx context.Context, cursor uint64) (uint64, error) {
	p := d.p
	depth, err := p.store.OutboxDepth(ctx, d.name)
	if err != nil || depth <= p.cfg.MaxPending {
		return cursor, err
	}
	var dropped int64
	defer func() {
		if dropped > 0 {
			p.m.OutboxDropped.WithLabelValues(d.name, "outbox_full").Add(float64(dropped))
			p.log.Error("sink outbox over its limit; dropped the oldest occurrences", "sink", d.name, "dropped", dropped, "max_pending", p.cfg.MaxPending)
		}
	}()
	for depth-dropped > p.cfg.MaxPending {
		entries, err := p.store.ReadOutbox(ctx, cursor, p.cfg.BatchEntries)
		if err != nil || len(entries) == 0 {
			return cursor, err
		}
		for _, e := range entries {
			if depth-dropped <= p.cfg.MaxPending {
				break
			}
			dropped += int64(len(e.Occurrences))
			cursor = e.Seq
		}
		if err := p.store.AckState(ctx, d.name, cursor, nil); err != nil {
			return cursor, err
		}
	}
	return cursor, nil
}

// Aggregate counts the occurrences of entries into points per flow, metric
// and bucket, sorted by bucket, flow and metric. It also returns how many
// occurrences went in.
//
// Sorted, then counted run by run: an occurrence's time is nearly its own
// bucket (an archive's points are nine tenths of its occurrences), so a
// map of points would hash a key per occurrence only to be sorted
// afterwards anyway. The sort is of integers: a flush's distinct
// flow/metric pairs are few, so they are numbered in flow and metric
// order (pairTable finds most at once, their strings shared), and each
// occurrence's bucket and pair number are packed into one word. Sorting
// structs of a bucket and two strings with a comparison function cost
// several times as much.
func Aggregate(entries []flowmetrics.Entry, bucket time.Duration) ([]flowmetrics.Point, int) {
	n := 0
	for _, e := range entries {
		n += len(e.Occurrences)
	}
	if n == 0 {
		return []flowmetrics.Point{}, 0
	}
	// Each occurrence's bucket (its start, in Unix seconds) and pair.
	var pt pairTable
	secs := make([]int64, 0, n)
	pairs := make([]int32, 0, n)
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for _, e := range entries {
		for _, o := range e.Occurrences {
			sec := flowmetrics.BucketStart(o.Time, bucket).Unix()
			lo, hi = min(lo, sec), max(hi, sec)
			secs = append(secs, sec)
			pairs = append(pairs, pt.index(o.Flow, o.Metric))
		}
	}
	// The pairs' ranks in flow, metric order.
	order := make([]int32, len(pt.pairs))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int {
		x, y := pt.pairs[a], pt.pairs[b]
		if c := strings.Compare(x.Flow, y.Flow); c != 0 {
			return c
		}
		return strings.Compare(x.Metric, y.Metric)
	})
	rank := make([]uint64, len(order))
	for r, i := range order {
		rank[i] = uint64(r)
	}
	shift := uint(bits.Len(uint(len(order))))
	if span := hi - lo; span < 0 || uint64(span)>>(64-shift) != 0 {
		// Buckets too far apart to pack with the pairs (centuries, at
		// least): sorted as they are.
		return aggregateByStrings(entries, bucket, n)
	}
	keys := make([]uint64, n)
	for i, sec := range secs {
		keys[i] = uint64(sec-lo)<<shift | rank[pairs[i]]
	}
	slices.Sort(keys)
	distinct := 1
	for i := 1; i < len(keys); i++ {
		if keys[i] != keys[i-1] {
			distinct++
		}
	}
	points := make([]flowmetrics.Point, 0, distinct)
	mask := uint64(1)<<shift - 1
	for i := 0; i < len(keys); {
		j := i + 1
		for j < len(keys) && keys[j] == keys[i] {
			j++
		}
		pr := pt.pairs[order[keys[i]&mask]]
		start := time.Unix(lo+int64(keys[i]>>shift), 0).UTC()
		points = append(points, flowmetrics.Point{Flow: pr.Flow, Metric: pr.Metric, Bucket: start, Width: bucket, Count: int64(j - i)})
		i = j
	}
	return points, n
}

// aggregateByStrings is Aggregate of n occurrences whose buckets are too
// far apart for Aggregate to pack: it sorts keys of a bucket and two
// strings.
func aggregateByStrings(entries []flowmetrics.Entry, bucket time.Duration, n int) ([]flowmetrics.Point, int) {
	type key struct {
		bucket       int64
		flow, metric string
	}
	keys := make([]key, 0, n)
	for _, e := range entries {
		for _, o := range e.Occurrences {
			keys = append(keys, key{flowmetrics.BucketStart(o.Time, bucket).Unix(), o.Flow, o.Metric})
		}
	}
	compare := func(a, b key) int {
		if c := cmp.Compare(a.bucket, b.bucket); c != 0 {
			return c
		}
		if c := strings.Compare(a.flow, b.flow); c != 0 {
			return c
		}
		return strings.Compare(a.metric, b.metric)
	}
	slices.SortFunc(keys, compare)
	distinct := 0
	for i := range keys {
		if i == 0 || compare(keys[i-1], keys[i]) != 0 {
			distinct++
		}
	}
	points := make([]flowmetrics.Point, 0, distinct)
	for i := 0; i < len(keys); {
		j := i + 1
		for j < len(keys) && compare(keys[i], keys[j]) == 0 {
			j++
		}
		k := keys[i]
		points = append(points, flowmetrics.Point{Flow: k.flow, Metric: k.metric, Bucket: time.Unix(k.bucket, 0).UTC(), Width: bucket, Count: int64(j - i)})
		i = j
	}
	return points, n
}

// backoff is the jittered exponential delay after the n-th failure in a row:
// uniformly between half and all of min·2ⁿ⁻¹, capped at max.
func (p *Pipeline) backoff(n int) time.Duration {
	d := p.cfg.RetryMin
	for i := 1; i < n && d < p.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, p.cfg.RetryMax)
	return d/2 + rand.N(d/2+1)
}

// notBefore reports whether err says its sink will not try again before
// ctx's deadline (a flowmetrics.RetryAfterError, e.g. a refused API key):
// retrying until then would only hold the caller.
func notBefore(ctx context.Context, err error) bool {
	var ra flowmetrics.RetryAfterError
	dl, ok := ctx.Deadline()
	return ok && errors.As(err, &ra) && ra.RetryAfter().After(dl)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
