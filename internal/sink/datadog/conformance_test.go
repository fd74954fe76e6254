package datadog

import (
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
)

func TestConformance(t *testing.T) {
	for _, mode := range []Mode{Count, Distribution} {
		t.Run(string(mode), func(t *testing.T) {
			sinktest.Run(t, sinktest.Backend{New: func(t *testing.T) flowmetrics.Sink {
				return newHarness(t, Config{Mode: mode}, naming.Config{}).sink
			}})
		})
	}
}
