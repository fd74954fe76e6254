// Package wire builds the configured sinks: the one place where a config
// section becomes a sink, shared by serve, replay and Lambda. It is a plain
// list in a fixed order, no registry.
package wire

import (
	"context"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/dogstatsd"
	"github.com/flowmetrics/flowmetrics/internal/sink/emf"
	"github.com/flowmetrics/flowmetrics/internal/sink/jsonl"
	"github.com/flowmetrics/flowmetrics/internal/sink/otlp"
	"github.com/flowmetrics/flowmetrics/internal/sink/prometheus"
	"github.com/flowmetrics/flowmetrics/internal/sink/statsd"
)

// Sinks builds every sink c turns on, each from its section and d, in a
// fixed order (prometheus, jsonl, datadog, dogstatsd, emf, otlp, statsd).
// Nothing here touches the network: sinks connect when they first send. On
// error the sinks already built are closed.
func Sinks(c config.Sinks, d sink.Deps) ([]flowmetrics.Sink, error) {
	d = d.WithDefaults()
	var sinks []flowmetrics.Sink
	for _, b := range []struct {
		on    bool
		build func() (flowmetrics.Sink, error)
	}{
		{c.Prometheus.IsEnabled(), func() (flowmetrics.Sink, error) { return prometheus.New(c.Prometheus, d) }},
		{c.JSONL != nil, func() (flowmetrics.Sink, error) { return jsonl.New(*c.JSONL, d) }},
		{c.Datadog != nil, func() (flowmetrics.Sink, error) { return datadog.New(*c.Datadog, d) }},
		{c.DogStatsD != nil, func() (flowmetrics.Sink, error) { return dogstatsd.New(*c.DogStatsD, d) }},
		{c.EMF != nil, func() (flowmetrics.Sink, error) { return emf.New(*c.EMF, d) }},
		{c.OTLP != nil, func() (flowmetrics.Sink, error) { return otlp.New(*c.OTLP, d) }},
		{c.StatsD != nil, func() (flowmetrics.Sink, error) { return statsd.New(*c.StatsD, d) }},
	} {
		if !b.on {
			continue
		}
		s, err := b.build()
		if err != nil {
			for _, s := range sinks {
				s.Close(context.Background())
			}
			return nil, err
		}
		sinks = append(sinks, s)
	}
	return sinks, nil
}
