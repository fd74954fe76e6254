// Package sink holds what every sink is built from besides its own
// configuration: Deps. Each backend is its own package under internal/sink
// (datadog, dogstatsd, emf, jsonl, otlp, prometheus, statsd) exporting
// New(cfg Config, d sink.Deps) (*Sink, error); internal/wire builds the
// configured ones, and internal/sink/sinktest is the conformance suite
// every one of them passes.
package sink

import (
	"log/slog"
	"os"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// Deps is what a sink needs from the process it runs in. The zero value
// of each field takes its default (WithDefaults).
type Deps struct {
	// Namer names points in the backend (default: naming's defaults).
	Namer *naming.Namer
	// Metrics receives the sink's own counters; the Prometheus sink also
	// registers its counter on Metrics.Registry (default: a fresh set).
	Metrics *telemetry.Metrics
	// Log receives the sink's logs (default slog.Default()).
	Log *slog.Logger
	// Secret returns the secret held in the named environment variable,
	// "" when it is not set (default os.Getenv). A secret never comes from
	// the config file; Lambda passes the Datadog API key it read from
	// Secrets Manager this way.
	Secret func(env string) string
	// Store is the store the pipeline delivers from. A sink that resumes
	// ahead of delivery (Prometheus: the occurrences still pending are
	// counted at once on a restart, so /metrics never goes down) reads its
	// pending occurrences from it; nil turns that off.
	Store flowmetrics.Store
	// Ephemeral says the sinks' state does not outlive the process (the
	// memory store, a replay): a sink that holds points in its state until
	// a time passes (OTLP windows) sends them at Close instead.
	Ephemeral bool
}

// WithDefaults returns d with every unset field at its default.
func (d Deps) WithDefaults() Deps {
	if d.Namer == nil {
		d.Namer = naming.New(naming.Config{})
	}
	if d.Metrics == nil {
		d.Metrics = telemetry.New()
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if d.Secret == nil {
		d.Secret = os.Getenv
	}
	return d
}
