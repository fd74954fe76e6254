package main

import (
	"log/slog"

	"github.com/flowmetrics/flowmetrics/internal/cardinality"
	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
)

// newGuard returns the cardinality guard for the config.
func newGuard(cfg config.Config, log *slog.Logger) pipeline.Guard {
	return cardinality.New(cfg.Cardinality.Limit, log)
}
