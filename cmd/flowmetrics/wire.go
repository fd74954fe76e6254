package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/dogstatsd"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// openStore opens the configured store. The embedded one lives in
// <data_dir>/state; tune holds the store.Options the caller sets beyond
// the config (serve's: serveStoreTuning).
func openStore(c config.Config, log *slog.Logger, tune store.Options) (flowmetrics.Store, error) {
	opts := tune
	opts.Retention = c.Store.Retention
	if c.Paths.IsEnabled() {
		opts.Paths = c.Paths.Options()
	}
	switch c.Store.Type {
	case "memory":
		return memstore.New(opts), nil
	case "embedded":
		oldLedgers(c, log)
		s, err := pebblestore.Open(filepath.Join(c.DataDir, "state"), opts, log)
		if err != nil {
			return nil, fmt.Errorf("open store (is another flowmetrics using %s?): %w", c.DataDir, err)
		}
		return s, nil
	}
	return nil, fmt.Errorf("store.type %q: unknown", c.Store.Type)
}

// sinkDeps is what serve and replay build their sinks from (wire.Sinks).
// st, when not nil, lets a sink resume ahead of delivery (Prometheus).
func sinkDeps(c config.Config, m *telemetry.Metrics, log *slog.Logger, st flowmetrics.Store) sink.Deps {
	return sink.Deps{
		Namer:   naming.New(c.Naming),
		Metrics: m,
		Log:     log,
		Store:   st,
		// The memory store's sink state dies with the process.
		Ephemeral: c.Store.Type == "memory",
	}
}

// withPaths turns conversation paths on in pcfg when the config has them
// on (the store was then opened with them by openStore).
func withPaths(c config.Config, pcfg *pipeline.Config) {
	if c.Paths.IsEnabled() {
		pcfg.Derive = paths.New(c.Paths, pcfg.Guard).Derive
		pcfg.PathTouch = c.Paths.Options().Step()
	}
}

// withoutCacheOverMemory turns the known-key cache off over the memory
// store, which holds every conversation's keys packed in memory itself: the
// cache would hold its conversations a second time to save store calls
// that cost about what its own lookups cost (docs/PERFORMANCE.md). The
// pipeline asks the memory store which keys it holds instead
// (flowmetrics.KeyHolder).
func withoutCacheOverMemory(c config.Config, pcfg *pipeline.Config) {
	if c.Store.Type == "memory" {
		pcfg.CacheConversations = -1
	}
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
