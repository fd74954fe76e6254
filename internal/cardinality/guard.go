package cardinality

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// DefaultLimit is the number of distinct flow/metric pairs let through when
// Open is given 0.
const DefaultLimit = 1000

// The overflow series. Every pair beyond the limit is counted under
// flow "overflow", metric "overflow", so in Datadog it shows as
// genesys.flow.metric{flow:overflow,metric:overflow}: one series, whatever
// the number of folded pairs. A real flow named "overflow" with a metric
// named "overflow" would share it; the names were chosen to read plainly in
// a dashboard rather than to be impossible.
const (
	OverflowFlow   = "overflow"
	OverflowMetric = "overflow"
)

// Log rate limit: at most logBurst lines about newly folded pairs per
// logWindow; pairs folded beyond that are summarised as a count in the next
// line that is allowed.
const (
	logBurst  = 10
	logWindow = time.Minute
	// rememberFolded bounds the set of folded pairs remembered for
	// logging, so a flood of distinct names cannot grow memory without
	// bound; beyond it, newly folded pairs are counted but not named.
	rememberFolded = 10000
)

type pair = flowmetrics.Pair

// Store keeps the admitted pairs (flowmetrics.Store does): durable, shared
// by every writer of the store, never more than the limit.
type Store interface {
	Pairs(ctx context.Context) ([]flowmetrics.Pair, error)
	AdmitPairs(ctx context.Context, pairs []flowmetrics.Pair, limit int) ([]flowmetrics.Pair, error)
}

// Guard maps flow/metric pairs to themselves once they are admitted, and
// to the overflow pair when the limit was reached before they came. The
// admitted set lives in the store: Open reads it, and Admit adds to it
// durably before the claim that counts a new pair, so after any restart
// (or crash) the guard knows every pair the backends were ever sent, and
// the number of series never passes the limit. Several writers of one
// store (Lambda instances on one table) share the set. It is safe for
// concurrent use.
type Guard struct {
	limit int
	store Store
	log   *slog.Logger
	now   func() time.Time

	// seen is a copy of admitted as it was when last taken (nil before),
	// read without mu: Map finds most pairs there. admitted only grows,
	// so a pair seen holds is admitted.
	seen atomic.Pointer[map[pair]struct{}]

	mu       sync.Mutex
	admitted map[pair]struct{}
	// missed counts the Map calls since seen was taken that found their
	// pair in admitted only; seen is taken again once they are as many as
	// the pairs it holds, so that its copies cost O(1) a call amortised,
	// however the admissions come (one a call, the limit of them: a copy
	// per admission would cost O(limit²)).
	missed      int
	synced      int // how many of the store's pairs (in its order) admitted holds
	folded      map[pair]struct{}
	windowStart time.Time
	logged      int // lines logged in the current window
	unlogged    int // newly folded pairs not yet named in a log line
}

// Open returns a Guard letting limit distinct pairs through (DefaultLimit
// when limit is 0; a negative limit disables the guard and leaves the
// store alone), with the pairs the store already admitted. log may be nil.
func Open(ctx context.Context, limit int, st Store, log *slog.Logger) (*Guard, error) {
	if limit == 0 {
		limit = DefaultLimit
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Guard{
		limit:    limit,
		store:    st,
		log:      log,
		now:      time.Now,
		admitted: make(map[pair]struct{}),
		folded:   make(map[pair]struct{}),
	}
	if limit < 0 {
		return g, nil
	}
	ps, err := st.Pairs(ctx)
	if err != nil {
		return nil, fmt.Errorf("cardinality: read admitted pairs: %w", err)
	}
	g.learn(ps)
	return g, nil
}

// learn adds the store's pairs beyond those already synced; the caller
// holds mu or owns g.
func (g *Guard) learn(ps []flowmetrics.Pair) {
	for _, p := range ps[min(g.synced, len(ps)):] {
		g.admitted[p] = struct{}{}
	}
	g.synced = max(g.synced, len(ps))
}

// Admit admits durably, while there is room, those of pairs never seen
// before; pairs it cannot admit are folded by Map. It asks the store only
// when a pair is new and the limit not reached, so once the set is full
// it costs a map lookup. An error is the store's: nothing was decided, and
// the caller must not count the pairs (it retries later).
func (g *Guard) Admit(ctx context.Context, pairs []flowmetrics.Pair) error {
	if g.limit < 0 {
		return nil
	}
	g.mu.Lock()
	var todo []flowmetrics.Pair
	if len(g.admitted) < g.limit {
		for _, p := range pairs {
			if _, ok := g.admitted[p]; !ok {
				todo = append(todo, p)
			}
		}
	}
	g.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	ps, err := g.store.AdmitPairs(ctx, todo, g.limit)
	if err != nil {
		return fmt.Errorf("cardinality: admit: %w", err)
	}
	g.mu.Lock()
	g.learn(ps)
	g.mu.Unlock()
	return nil
}

// Limit returns the number of distinct pairs let through (negative: no limit).
func (g *Guard) Limit() int { return g.limit }

// Map returns the pair to count an occurrence of flow/metric under: the
// pair itself if it is admitted (Admit decides), otherwise
// (OverflowFlow, OverflowMetric). Each newly folded pair is logged once
// (rate-limited). Map is called for every sighting of a pair, repeats
// included, so it counts nothing: the pipeline counts the folded
// occurrences it claims in flowmetrics_cardinality_overflow_total.
func (g *Guard) Map(flow, metric string) (string, string) {
	if g.limit < 0 {
		return flow, metric
	}
	p := pair{Flow: flow, Metric: metric}
	if seen := g.seen.Load(); seen != nil {
		if _, ok := (*seen)[p]; ok {
			return flow, metric
		}
	}
	g.mu.Lock()
	if _, ok := g.admitted[p]; ok {
		g.missed++
		if seen := g.seen.Load(); seen == nil || g.missed > len(*seen) {
			m := maps.Clone(g.admitted)
			g.seen.Store(&m)
			g.missed = 0
		}
		g.mu.Unlock()
		return flow, metric
	}
	var logNow bool
	var suppressed int
	if _, seen := g.folded[p]; !seen {
		if len(g.folded) < rememberFolded {
			g.folded[p] = struct{}{}
		}
		logNow, suppressed = g.allowLog()
	}
	g.mu.Unlock()
	if logNow {
		args := []any{"flow", flow, "metric", metric, "limit", g.limit,
			"overflow_flow", OverflowFlow, "overflow_metric", OverflowMetric}
		if suppressed > 0 {
			args = append(args, "also_folded_unlogged", suppressed)
		}
		g.log.Warn("cardinality limit reached: folding flow metric into the overflow series", args...)
	}
	return OverflowFlow, OverflowMetric
}

// allowLog decides, under g.mu, whether a newly folded pair may be logged
// now, and returns how many earlier ones went unlogged.
func (g *Guard) allowLog() (bool, int) {
	now := g.now()
	if now.Sub(g.windowStart) >= logWindow {
		g.windowStart = now
		g.logged = 0
	}
	if g.logged >= logBurst {
		g.unlogged++
		return false, 0
	}
	g.logged++
	s := g.unlogged
	g.unlogged = 0
	return true, s
}

// Folded returns how many distinct pairs have been folded so far (up to the
// number remembered).
func (g *Guard) Folded() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.folded)
}
