package dashboard

import (
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
)

// The dashboard's Recorder is one more sink of the pipeline.
func TestConformance(t *testing.T) {
	sinktest.Run(t, sinktest.Backend{New: func(t *testing.T) flowmetrics.Sink { return NewRecorder(nil) }})
}
