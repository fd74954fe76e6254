package prometheus

import (
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
)

func TestConformance(t *testing.T) {
	sinktest.Run(t, sinktest.Backend{New: func(t *testing.T) flowmetrics.Sink {
		s, err := New(Config{}, sink.Deps{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}})
}
