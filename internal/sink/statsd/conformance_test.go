package statsd

import (
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/sinktest"
)

func TestConformance(t *testing.T) {
	for _, style := range []string{TagStyleNone, TagStyleGraphite, TagStyleDogStatsD} {
		t.Run(style, func(t *testing.T) {
			sinktest.Run(t, sinktest.Backend{New: func(t *testing.T) flowmetrics.Sink {
				addr, _ := listen(t)
				s, err := New(Config{Addr: addr, TagStyle: style}, sink.Deps{Log: quiet})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}})
		})
	}
}
