package otlp

import (
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
)

func TestConformance(t *testing.T) {
	for _, temp := range []string{Delta, Cumulative} {
		t.Run(temp, func(t *testing.T) {
			sinktest.Run(t, sinktest.Backend{New: func(t *testing.T) flowmetrics.Sink {
				return newSink(t, Config{Endpoint: newCollector(t).srv.URL, Temporality: temp}, naming.Config{})
			}})
		})
	}
}
