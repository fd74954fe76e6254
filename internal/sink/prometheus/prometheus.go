// Package prometheus is the Prometheus sink: it keeps the counter
// genesys_flow_metric_total{flow,metric} (plus static labels) that /metrics
// exposes, and the series of conversation paths: exits, funnels and
// experiments as counters (with the latest conversation id as an
// OpenMetrics exemplar), step timings and timings as histograms. Prometheus scrapes counters and timestamps them itself, so bucket
// times are not passed on: an occurrence adds to the counter when it is
// delivered. The counters resume across a restart: their totals are the
// sink's state, committed with its cursor, and with the store in its Deps
// the occurrences still pending are counted at once, so /metrics never
// goes down (see Restore).
package prometheus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
)

// Config is the sinks.prometheus section.
type Config struct {
	// Enabled turns the sink on (default on for serve).
	Enabled *bool `yaml:"enabled"`
	// Name of the counter; default genesys_flow_metric_total.
	Name string `yaml:"name"`
	// DurationBuckets are the upper bounds, in seconds, of the step-timing
	// and timing histograms (default DefaultDurationBuckets: 1 s to 4 h).
	// Changing them starts the histograms again from zero.
	DurationBuckets []float64 `yaml:"duration_buckets"`
}

// DefaultName is the counter's name.
const DefaultName = "genesys_flow_metric_total"

var validName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)

// Validate checks the section.
func (c Config) Validate() error {
	if c.Name != "" && !validName.MatchString(c.Name) {
		return fmt.Errorf("name %q: not a valid Prometheus metric name", c.Name)
	}
	if err := ValidBuckets(c.DurationBuckets); err != nil {
		return fmt.Errorf("duration_buckets: %w", err)
	}
	for _, n := range []string{ExitName, StepName, TimingName, FunnelName, ExperimentName} {
		if c.Name == n {
			return fmt.Errorf("name %q: the name of a path series", c.Name)
		}
	}
	return nil
}

// IsEnabled reports whether the sink is on; it is unless disabled.
func (c Config) IsEnabled() bool { return c.Enabled == nil || *c.Enabled }

// Sink counts delivered occurrences in a CounterVec registered on reg.
type Sink struct {
	counter *prometheus.CounterVec
	paths   *pathMetrics

	totals  map[series]int64
	dirty   map[series]struct{}
	skipped []string // state keys Restore could not read, deleted next

	// outbox (sink.Deps.Store), when set, is read by Restore: the
	// occurrences still pending for this sink are added to the counters at
	// once (ahead), and consumed from ahead as they are delivered again.
	// Without it, a process killed after adding a batch to the counters
	// and before committing it would come back with the counters lower (at
	// the committed totals) until the batch is delivered again, and a
	// scrape in between would see a counter reset. With it, the counters
	// come back at the committed totals plus everything pending, which is
	// at least what they showed before; a pending occurrence then adds
	// nothing when it is delivered.
	outbox flowmetrics.Store
	ahead  map[series]int64
}

type series struct{ flow, metric string }

// New registers the counter on d.Metrics.Registry.
func New(cfg Config, d sink.Deps) (*Sink, error) {
	d = d.WithDefaults()
	name := cfg.Name
	if name == "" {
		name = DefaultName
	}
	constLabels := prometheus.Labels{}
	for _, t := range d.Namer.Static() {
		constLabels[LabelName(t.Key)] = t.Value
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        name,
		Help:        "Occurrences of Genesys Cloud flow metrics, counted once per conversation.",
		ConstLabels: constLabels,
	}, []string{"flow", "metric"})
	if err := d.Metrics.Registry.Register(c); err != nil {
		return nil, fmt.Errorf("prometheus sink: %w", err)
	}
	bounds := cfg.DurationBuckets
	if len(bounds) == 0 {
		bounds = DefaultDurationBuckets
	}
	pm := newPathMetrics(bounds, constLabels)
	if err := d.Metrics.Registry.Register(pm); err != nil {
		d.Metrics.Registry.Unregister(c)
		return nil, fmt.Errorf("prometheus sink: %w", err)
	}
	return &Sink{counter: c, paths: pm, totals: map[series]int64{}, dirty: map[series]struct{}{}, ahead: map[series]int64{}, outbox: d.Store}, nil
}

// LabelName sanitises a static tag name to Prometheus label rules.
func LabelName(s string) string {
	var b strings.Builder
	for i, r := range s {
		ok := r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (i > 0 && r >= '0' && r <= '9')
		if ok {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// Name implements flowmetrics.Sink.
func (s *Sink) Name() string { return "prometheus" }

// Send implements flowmetrics.Sink; it never fails.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	for _, p := range points {
		if p.Count <= 0 {
			continue
		}
		k := series{p.Flow, p.Metric}
		n := p.Count
		if a := s.ahead[k]; a > 0 {
			take := min(a, n)
			if s.ahead[k] = a - take; s.ahead[k] == 0 {
				delete(s.ahead, k)
			}
			n -= take
		}
		if n > 0 {
			s.counter.WithLabelValues(p.Flow, p.Metric).Add(float64(n))
		}
		s.totals[k] += p.Count
		s.dirty[k] = struct{}{}
	}
	return nil
}

// State: one key per counter, "c/" and the first 16 bytes of the SHA-256 of
// its label values in hex (so keys stay short whatever the names), holding
// {"flow","metric","total"}. A counter is never deleted, so neither is its
// key; the cardinality guard bounds both.
type counterState struct {
	Flow   string `json:"flow"`
	Metric string `json:"metric"`
	Total  int64  `json:"total"`
}

func stateKey(k series) string {
	h := sha256.Sum256([]byte(k.flow + "\x00" + k.metric))
	return "c/" + hex.EncodeToString(h[:16])
}

// Restore implements flowmetrics.StatefulSink: it sets every counter to its
// committed total, plus, with a store in its Deps, the occurrences pending for the
// sink. Keys it cannot read are skipped, and deleted with the next
// TakeState.
func (s *Sink) Restore(ctx context.Context, state map[string][]byte) error {
	if s.outbox != nil {
		if err := s.countPending(ctx); err != nil {
			return err
		}
	}
	for key, v := range state {
		if strings.HasPrefix(key, "p/") {
			if !s.paths.restore(key, v) {
				s.skipped = append(s.skipped, key)
			}
			continue
		}
		var cs counterState
		if err := json.Unmarshal(v, &cs); err != nil || cs.Total < 0 || stateKey(series{cs.Flow, cs.Metric}) != key {
			s.skipped = append(s.skipped, key)
			continue
		}
		k := series{cs.Flow, cs.Metric}
		if d := cs.Total - s.totals[k]; d > 0 {
			s.counter.WithLabelValues(k.flow, k.metric).Add(float64(d))
			s.totals[k] = cs.Total
		}
	}
	return nil
}

// countPending adds the occurrences after the sink's cursor to ahead and
// to the counters.
func (s *Sink) countPending(ctx context.Context) error {
	after, err := s.outbox.Cursor(ctx, s.Name())
	if err != nil {
		return fmt.Errorf("prometheus sink: read cursor: %w", err)
	}
	for {
		entries, err := s.outbox.ReadOutbox(ctx, after, 1024)
		if err != nil {
			return fmt.Errorf("prometheus sink: read pending occurrences: %w", err)
		}
		if len(entries) == 0 {
			return nil
		}
		for _, e := range entries {
			for _, o := range e.Occurrences {
				k := series{o.Flow, o.Metric}
				s.ahead[k]++
				s.counter.WithLabelValues(k.flow, k.metric).Inc()
			}
			s.paths.countAhead(e.Paths)
		}
		after = entries[len(entries)-1].Seq
	}
}

// TakeState implements flowmetrics.StatefulSink: the totals of the counters
// that changed since the last call.
func (s *Sink) TakeState() flowmetrics.StateUpdate {
	if len(s.dirty) == 0 && len(s.skipped) == 0 && !s.paths.changed() {
		return nil
	}
	u := make(flowmetrics.StateUpdate, len(s.dirty)+len(s.skipped))
	s.paths.take(u)
	for _, k := range s.skipped {
		u[k] = nil
	}
	s.skipped = nil
	for k := range s.dirty {
		b, _ := json.Marshal(counterState{k.flow, k.metric, s.totals[k]})
		u[stateKey(k)] = b
	}
	clear(s.dirty)
	return u
}

// Close implements flowmetrics.Sink.
func (s *Sink) Close(ctx context.Context) error { return nil }
