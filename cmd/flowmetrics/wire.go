package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/dogstatsd"
	"github.com/flowmetrics/flowmetrics/internal/sink/emf"
	"github.com/flowmetrics/flowmetrics/internal/sink/jsonl"
	"github.com/flowmetrics/flowmetrics/internal/sink/otlp"
	"github.com/flowmetrics/flowmetrics/internal/sink/prometheus"
	"github.com/flowmetrics/flowmetrics/internal/sink/statsd"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// openStore opens the configured store. The embedded one lives in
// <data_dir>/state.
func openStore(c config.Config, log *slog.Logger) (flowmetrics.Store, error) {
	opts := store.Options{Retention: c.Store.Retention}
	if c.Paths.IsEnabled() {
		opts.Paths = c.Paths.Options()
	}
	switch c.Store.Type {
	case "memory":
		return memstore.New(opts), nil
	case "embedded":
		s, err := pebblestore.Open(filepath.Join(c.DataDir, "state"), opts, log)
		if err != nil {
			return nil, fmt.Errorf("open store (is another flowmetrics using %s?): %w", c.DataDir, err)
		}
		return s, nil
	}
	return nil, fmt.Errorf("store.type %q: unknown", c.Store.Type)
}

// buildSinks creates the configured sinks. Nothing here touches the network:
// sinks connect when they first send.
func buildSinks(c config.Config, m *telemetry.Metrics, log *slog.Logger) ([]flowmetrics.Sink, error) {
	namer := naming.New(c.Naming)
	oldLedgers(c, log)
	var sinks []flowmetrics.Sink
	fail := func(err error) ([]flowmetrics.Sink, error) {
		for _, s := range sinks {
			s.Close(context.Background())
		}
		return nil, err
	}
	if c.Sinks.Prometheus.IsEnabled() {
		s, err := prometheus.New(c.Sinks.Prometheus, namer, m.Registry)
		if err != nil {
			return fail(err)
		}
		sinks = append(sinks, s)
	}
	if c.Sinks.JSONL != nil {
		s, err := jsonl.New(*c.Sinks.JSONL, namer, log)
		if err != nil {
			return fail(err)
		}
		sinks = append(sinks, s)
	}
	// A plain switch per backend, in a fixed order: no registry.
	type build func() (flowmetrics.Sink, error)
	for _, b := range []struct {
		on    bool
		build build
	}{
		{c.Sinks.Datadog != nil, func() (flowmetrics.Sink, error) { return datadog.New(*c.Sinks.Datadog, namer, m, log) }},
		{c.Sinks.DogStatsD != nil, func() (flowmetrics.Sink, error) { return dogstatsd.New(*c.Sinks.DogStatsD, namer, m, log) }},
		{c.Sinks.EMF != nil, func() (flowmetrics.Sink, error) { return emf.New(*c.Sinks.EMF, namer, m, log) }},
		{c.Sinks.OTLP != nil, func() (flowmetrics.Sink, error) {
			oc := *c.Sinks.OTLP
			// The memory store's sink state dies with the process: send
			// the windows still open at the end instead of keeping them.
			oc.FlushOnClose = oc.FlushOnClose || c.Store.Type == "memory"
			return otlp.New(oc, namer, m, log)
		}},
		{c.Sinks.StatsD != nil, func() (flowmetrics.Sink, error) { return statsd.New(*c.Sinks.StatsD, namer, m, log) }},
	} {
		if !b.on {
			continue
		}
		s, err := b.build()
		if err != nil {
			return fail(err)
		}
		sinks = append(sinks, s)
	}
	return sinks, nil
}

// withPaths turns conversation paths on in pcfg when the config has them
// on (the store was then opened with them by openStore).
func withPaths(c config.Config, pcfg *pipeline.Config) {
	if c.Paths.IsEnabled() {
		pcfg.Derive = paths.New(c.Paths, pcfg.Guard).Derive
	}
}

// sweeper deletes expired conversations every interval until ctx ends.
type sweeper interface {
	Sweep(ctx context.Context) (int, error)
}

// oldLedgers warns about the ledger files earlier versions kept the Datadog
// totals in: the totals are in the store now, and those files are not read.
func oldLedgers(c config.Config, log *slog.Logger) {
	for _, name := range []string{datadog.Name, dogstatsd.Name} {
		path := filepath.Join(c.DataDir, name+"-ledger")
		if _, err := os.Stat(path); err == nil {
			log.Warn("an old Datadog ledger file is no longer used (the running totals are kept in the store now); it can be deleted", "path", path)
		}
	}
}
