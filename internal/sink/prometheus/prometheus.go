// Package prometheus is the Prometheus sink: it keeps the counter
// genesys_flow_metric_total{flow,metric} (plus static labels) that /metrics
// exposes. Prometheus scrapes counters and timestamps them itself, so bucket
// times are not passed on: an occurrence adds to the counter when it is
// delivered. Counters restart from zero with the process, which rate() and
// increase() handle as a counter reset.
package prometheus

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
)

// Config is the sinks.prometheus section.
type Config struct {
	// Enabled turns the sink on (default on for serve).
	Enabled *bool `yaml:"enabled"`
	// Name of the counter; default genesys_flow_metric_total.
	Name string `yaml:"name"`
}

// DefaultName is the counter's name.
const DefaultName = "genesys_flow_metric_total"

var validName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)

// Validate checks the section.
func (c Config) Validate() error {
	if c.Name != "" && !validName.MatchString(c.Name) {
		return fmt.Errorf("sinks.prometheus.name %q: not a valid Prometheus metric name", c.Name)
	}
	return nil
}

// IsEnabled reports whether the sink is on; it is unless disabled.
func (c Config) IsEnabled() bool { return c.Enabled == nil || *c.Enabled }

// Sink counts delivered occurrences in a CounterVec registered on reg.
type Sink struct {
	counter *prometheus.CounterVec
}

// New registers the counter on reg.
func New(cfg Config, namer *naming.Namer, reg prometheus.Registerer) (*Sink, error) {
	name := cfg.Name
	if name == "" {
		name = DefaultName
	}
	constLabels := prometheus.Labels{}
	if namer != nil {
		for _, t := range namer.Static() {
			constLabels[LabelName(t.Key)] = t.Value
		}
	}
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        name,
		Help:        "Occurrences of Genesys Cloud flow metrics, counted once per conversation.",
		ConstLabels: constLabels,
	}, []string{"flow", "metric"})
	if err := reg.Register(c); err != nil {
		return nil, fmt.Errorf("prometheus sink: %w", err)
	}
	return &Sink{counter: c}, nil
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
		s.counter.WithLabelValues(p.Flow, p.Metric).Add(float64(p.Count))
	}
	return nil
}

// Close implements flowmetrics.Sink.
func (s *Sink) Close(ctx context.Context) error { return nil }
