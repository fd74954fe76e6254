package main

import (
	"context"
	"log/slog"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/cardinality"
	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
)

// newGuard returns the cardinality guard for the config, with the pairs the
// store already admitted.
func newGuard(ctx context.Context, cfg config.Config, st flowmetrics.Store, log *slog.Logger) (pipeline.Guard, error) {
	return cardinality.Open(ctx, cfg.Cardinality.Limit, st, log)
}
