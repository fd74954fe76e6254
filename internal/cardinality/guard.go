package cardinality

import (
	"log/slog"
	"sync"
	"time"
)

// DefaultLimit is the number of distinct flow/metric pairs let through when
// New is given 0.
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

type pair struct{ flow, metric string }

// Guard maps flow/metric pairs to themselves while fewer than its limit
// distinct pairs have been seen, and to the overflow pair after that. Pairs
// admitted once stay admitted for the life of the Guard (the process): the
// set is not persisted, so after a restart the first pairs seen win again,
// and each replica has its own set. It is safe for concurrent use.
type Guard struct {
	limit int
	log   *slog.Logger
	now   func() time.Time

	mu          sync.Mutex
	admitted    map[pair]struct{}
	folded      map[pair]struct{}
	windowStart time.Time
	logged      int // lines logged in the current window
	unlogged    int // newly folded pairs not yet named in a log line
}

// New returns a Guard letting limit distinct pairs through (DefaultLimit when
// limit is 0; a negative limit disables the guard). log may be nil.
func New(limit int, log *slog.Logger) *Guard {
	if limit == 0 {
		limit = DefaultLimit
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Guard{
		limit:    limit,
		log:      log,
		now:      time.Now,
		admitted: make(map[pair]struct{}),
		folded:   make(map[pair]struct{}),
	}
}

// Limit returns the number of distinct pairs let through (negative: no limit).
func (g *Guard) Limit() int { return g.limit }

// Map returns the pair to count an occurrence of flow/metric under: the pair
// itself if it is admitted or there is still room, otherwise
// (OverflowFlow, OverflowMetric). Each newly folded pair is logged once
// (rate-limited). Map is called for every sighting of a pair, repeats
// included, so it counts nothing: the pipeline counts the folded
// occurrences it claims in flowmetrics_cardinality_overflow_total.
func (g *Guard) Map(flow, metric string) (string, string) {
	if g.limit < 0 {
		return flow, metric
	}
	p := pair{flow, metric}
	g.mu.Lock()
	if _, ok := g.admitted[p]; ok {
		g.mu.Unlock()
		return flow, metric
	}
	if len(g.admitted) < g.limit {
		g.admitted[p] = struct{}{}
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
