package main

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
)

// replayCloser closes, while a replay reads its input, the paths of the
// conversations whose customer.end it read, once the replay's clock has
// passed the end by the grace (docs/PATHS.md, "When a path closes"). The
// replay's clock is event time: after each batch of records, the median
// event time of the batch, if later than the clock (a median, so that a
// few records far off in time neither hold it back nor push it ahead). A
// conversation's end is dated by the clock after the batch that brought it
// (its arrival, as serve dates it by its own clock), and its path is due
// once the clock is past that date plus the grace.
//
// The replay's claims overlap (a batch is applied while the one before
// syncs), and so do its closes, by this rule: the closes due after batch N
// start once batch N is durable, so they read only durable claims, and a
// close's outbox entry can never outlive, after a crash, a claim it was
// derived from. They run beside the claims of batches N+1 and N+2 (N+1 may
// still be syncing as N+2 is applied), which must not race them: a
// conversation with records in either waits for a later start, and every
// close is applied before batch N+3 is claimed (its sync need not be
// done: the log keeps its order, so no later claim survives a crash
// without it, and its points are delivered once it is durable). So which
// records a path holds depends on the input alone, and a replay that is
// killed and run again on the same input closes the same paths with the
// same keys (each once: the close and its outbox entry are one atomic
// write, and the store closes no path twice).
//
// In time-ordered input (an archive of deliveries), the records of a
// conversation that come after its end by more than the grace count as
// late, as they would in serve. In input out of time order the clock runs
// ahead of few ends, and most paths close at the end of the input, as if
// it were complete.
type replayCloser struct {
	p *pipeline.Pipeline
	// syncLog, when not nil, makes the closes applied so far durable:
	// the embedded store applies a replay's closes without a sync of
	// their own, durable with the next claim's.
	syncLog func() error
	grace   time.Duration
	clock   int64 // unix ns; 0 until a batch had event times
	// ended holds the conversations whose end was read, oldest first (so
	// in the order they are due), at most maxReplayEnded; ends beyond
	// that close at the end of the input.
	ended []replayEnd
	head  int
	// later are due conversations that had records in a batch claimed
	// beside their close: they are closed after it.
	later []string
	// job is the running closes' outcome once they are applied (nil:
	// none runs); synced the outcomes, once durable, of the closes
	// started and not yet seen durable, oldest first.
	job    chan replayCloseResult
	synced []chan error
}

type replayEnd struct {
	due int64
	id  string
}

type replayCloseResult struct {
	closed int
	err    error
}

// maxReplayEnded bounds the ends a replay holds in memory for closing
// during the input (some 80 bytes each).
const maxReplayEnded = 100_000

// newReplayCloser returns nil when paths are off.
func newReplayCloser(p *pipeline.Pipeline, st flowmetrics.Store, on bool, grace time.Duration) *replayCloser {
	if !on {
		return nil
	}
	c := &replayCloser{p: p, grace: grace}
	if ls, ok := st.(interface{ SyncLog() error }); ok {
		c.syncLog = ls.SyncLog
	}
	return c
}

// decodedBatch is a batch of records as the replay hands it from its
// decoding goroutine to its claiming one.
type decodedBatch struct {
	paths    *batchPaths // nil: paths off
	prepared *pipeline.Prepared
}

// batchPaths is what the replay's path clock needs of a batch of records.
type batchPaths struct {
	median int64    // median event time, unix ns (0: none)
	ends   []string // conversations whose end the batch holds
	// convs are the conversations with records in the batch, each once
	// per run of records (a slice: a set of them costs more to build than
	// the few lookups start makes in it).
	convs []string
}

// summarize takes from recs what the clock needs, in the goroutine that
// decodes them (a prepared batch holds no records).
func (c *replayCloser) summarize(recs []genesys.Record) *batchPaths {
	if c == nil {
		return nil
	}
	b := &batchPaths{convs: make([]string, 0, len(recs))}
	times := make([]int64, 0, len(recs))
	for _, r := range recs {
		if r.Outcome != genesys.Accepted || r.Event == nil {
			continue
		}
		if id := r.Event.ConversationID; len(b.convs) == 0 || b.convs[len(b.convs)-1] != id {
			b.convs = append(b.convs, id)
		}
		if r.Event.Ended {
			// Held until its path is due: a copy of its own.
			b.ends = append(b.ends, strings.Clone(r.Event.ConversationID))
		}
		if !r.Event.EventTime.IsZero() {
			times = append(times, r.Event.EventTime.UnixNano())
		}
	}
	if len(times) > 0 {
		slices.Sort(times)
		b.median = times[len(times)/2]
	}
	return b
}

// claimed takes a batch the pipeline claimed: it moves the clock and dates
// the batch's ends.
func (c *replayCloser) claimed(b *batchPaths) {
	if c == nil {
		return
	}
	c.clock = max(c.clock, b.median)
	if c.clock == 0 {
		return
	}
	if c.head > len(c.ended)/2 {
		c.ended = append(c.ended[:0], c.ended[c.head:]...)
		c.head = 0
	}
	due := c.clock + int64(c.grace)
	for _, id := range b.ends {
		if len(c.ended)-c.head < maxReplayEnded {
			c.ended = append(c.ended, replayEnd{due, id})
		}
	}
}

// start waits until the closes started before, if any, are applied, and
// returns how many they closed; then it starts closing the paths due,
// beside the claims of the batches in beside (nil ones are left out),
// except those of conversations with records in them: those are left for a
// later start. The caller claims no batch after those in beside before it
// called start again (or wait).
func (c *replayCloser) start(ctx context.Context, beside ...*batchPaths) (int, error) {
	if c == nil {
		return 0, nil
	}
	closed, err := c.applied()
	if err != nil {
		return 0, err
	}
	ids := c.later
	c.later = nil
	for c.head < len(c.ended) && c.ended[c.head].due <= c.clock {
		ids = append(ids, c.ended[c.head].id)
		c.ended[c.head] = replayEnd{}
		c.head++
	}
	if len(ids) == 0 {
		return closed, nil
	}
	inBeside := make(map[string]bool, len(ids))
	for _, id := range ids {
		inBeside[id] = false
	}
	for _, b := range beside {
		if b == nil {
			continue
		}
		for _, id := range b.convs {
			if _, due := inBeside[id]; due {
				inBeside[id] = true
			}
		}
	}
	now := ids[:0]
	for _, id := range ids {
		if inBeside[id] {
			c.later = append(c.later, id)
		} else {
			now = append(now, id)
		}
	}
	if len(now) == 0 {
		return closed, nil
	}
	if err := c.syncedSoFar(); err != nil {
		return closed, err
	}
	c.job = make(chan replayCloseResult, 1)
	synced := make(chan error, 1)
	c.synced = append(c.synced, synced)
	go func(job chan<- replayCloseResult, synced chan<- error) {
		// The closes are applied without a sync of their own: the claims
		// after them see them, and the sync of the next of those makes
		// them durable (the log keeps its order: after a crash, neither
		// outlives the other out of order); their points are delivered
		// only then.
		// Due in the store's own clock too: the end was claimed before
		// now, and is due the grace after its claim.
		n, wait, err := c.p.StartClosePathsOf(ctx, now, time.Now().Add(c.grace))
		job <- replayCloseResult{n, err}
		if err == nil {
			err = wait()
		}
		synced <- err
	}(c.job, synced)
	return closed, nil
}

// syncedSoFar drops the closes seen durable, oldest first, and returns the
// first failure among them.
func (c *replayCloser) syncedSoFar() error {
	for len(c.synced) > 0 {
		select {
		case err := <-c.synced[0]:
			c.synced = c.synced[1:]
			if err != nil {
				return err
			}
		default:
			return nil
		}
	}
	return nil
}

// applied waits until the closes running, if any, are applied (every
// later claim sees them), and returns how many they closed.
func (c *replayCloser) applied() (int, error) {
	if c == nil || c.job == nil {
		return 0, nil
	}
	r := <-c.job
	c.job = nil
	return r.closed, r.err
}

// wait waits until the closes started are applied and durable, and
// returns how many the last of them closed.
func (c *replayCloser) wait() (int, error) {
	n, err := c.applied()
	if c == nil {
		return n, err
	}
	if len(c.synced) > 0 && c.syncLog != nil && err == nil {
		// No claim follows them to make them durable.
		err = c.syncLog()
	}
	for _, synced := range c.synced {
		if serr := <-synced; err == nil {
			err = serr
		}
	}
	c.synced = nil
	return n, err
}
