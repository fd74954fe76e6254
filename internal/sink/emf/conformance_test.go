package emf

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
)

func TestConformance(t *testing.T) {
	t.Run("writer", func(t *testing.T) {
		sinktest.Run(t, sinktest.Backend{New: func(t *testing.T) flowmetrics.Sink {
			s, err := New(Config{Writer: &bytes.Buffer{}}, sink.Deps{Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}})
	})
	t.Run("file", func(t *testing.T) {
		path := t.TempDir() + "/emf.log"
		sinktest.Run(t, sinktest.Backend{New: func(t *testing.T) flowmetrics.Sink {
			s, err := New(Config{Path: path}, sink.Deps{Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}})
	})
}
