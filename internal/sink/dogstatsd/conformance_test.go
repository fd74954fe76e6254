package dogstatsd

import (
	"log/slog"
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
)

func TestConformance(t *testing.T) {
	for _, mode := range []datadog.Mode{datadog.Count, datadog.Distribution} {
		t.Run(string(mode), func(t *testing.T) {
			sinktest.Run(t, sinktest.Backend{New: func(t *testing.T) flowmetrics.Sink {
				clearClientEnv(t)
				s, err := New(Config{Addr: listenUDP(t).addr, Mode: mode}, sink.Deps{Log: slog.New(slog.DiscardHandler)})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}})
		})
	}
}
