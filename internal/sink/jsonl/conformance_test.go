package jsonl

import (
	"log/slog"
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
)

func TestConformance(t *testing.T) {
	path := t.TempDir() + "/points.jsonl"
	sinktest.Run(t, sinktest.Backend{New: func(t *testing.T) flowmetrics.Sink {
		s, err := New(Config{Path: path}, sink.Deps{Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}})
}
