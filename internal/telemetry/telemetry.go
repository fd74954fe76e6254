// Package telemetry holds the pipeline's own metrics: what it read, counted,
// skipped and dropped (always with a reason), and how its store and sinks
// behave. Every part of the pipeline takes the one *Metrics it should report
// to; tests make their own with New.
package telemetry

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the pipeline's self-observability counters and gauges.
type Metrics struct {
	Registry *prometheus.Registry

	// Records by outcome: read, accepted, skipped (other topics), rejected
	// (with reason).
	RecordsRead     prometheus.Counter
	RecordsAccepted prometheus.Counter
	RecordsSkipped  *prometheus.CounterVec // reason
	RecordsRejected *prometheus.CounterVec // reason
	// RecordsDeferred counts accepted records not acknowledged because
	// another writer of a shared store holds some of their keys pending;
	// they are retried, not lost.
	RecordsDeferred prometheus.Counter

	Occurrences *prometheus.CounterVec // flow, metric: new occurrences claimed
	// Malformed counts malformed metric attributes by flow; count them with
	// CountMalformed, which folds flows beyond MalformedFlowLimit.
	Malformed *prometheus.CounterVec // flow
	CacheHits prometheus.Counter     // events whose keys were all known in-process
	// Limits counts each time a bound on input was applied, by reason:
	// name_too_long, malformed_flows_folded, errors_truncated,
	// body_too_large, decompressed_too_large. Records refused for a bound
	// are also counted in RecordsRejected.
	Limits *prometheus.CounterVec // reason
	// HTTPRefused counts requests refused before they were read, by
	// reason: host_not_allowed (421, a Host this server does not serve),
	// bytes_in_flight (503, the request bytes in flight at their bound).
	HTTPRefused *prometheus.CounterVec // reason

	StoreLatency *prometheus.HistogramVec // op
	StoreErrors  *prometheus.CounterVec   // op

	OutboxDepth   *prometheus.GaugeVec   // sink
	OutboxDropped *prometheus.CounterVec // sink, reason

	// Batch-level counters, kept by the pipeline for every sink.
	SinkSends         *prometheus.CounterVec // sink
	SinkPoints        *prometheus.CounterVec // sink: points accepted
	SinkBatchFailures *prometheus.CounterVec // sink, reason: error (retried) or permanent (dropped)
	SinkBatchRetries  *prometheus.CounterVec // sink
	// Request-level counters, kept by the sinks that talk to a backend:
	// each failed request with the backend's reason, and each retry a sink
	// makes within one Send.
	SinkFailures *prometheus.CounterVec // sink, reason
	SinkRetries  *prometheus.CounterVec // sink
	// PointsAdjusted counts points a sink changed or dropped to fit its
	// backend's rules, e.g. reason "clamped_late", "dropped_late".
	PointsAdjusted *prometheus.CounterVec // sink, reason
	// Overflow counts occurrences folded into the overflow series by the
	// cardinality guard.
	Overflow prometheus.Counter

	// Conversation paths: paths closed (reason end or idle), points
	// derived (by kind), customer.end events, and new occurrences of
	// conversations whose path had already closed (counted, not derived).
	PathsClosed      *prometheus.CounterVec // reason
	PathPoints       *prometheus.CounterVec // kind
	PathEnds         prometheus.Counter
	PathLate         prometheus.Counter
	PathsUnsupported *prometheus.CounterVec // sink: path points a sink does not deliver (yet)

	malformedMu    sync.Mutex
	malformedFlows map[string]struct{}
}

// MalformedFlowLimit is how many distinct flows get their own
// flowmetrics_malformed_attributes_total series. Beyond it, malformed names
// of new flows are counted under flow MalformedOverflow, so a flood of bad
// names with distinct flows cannot grow /metrics (or memory) without bound.
const MalformedFlowLimit = 1000

// MalformedOverflow is the flow label of malformed names folded beyond
// MalformedFlowLimit; it matches the cardinality guard's overflow series.
const MalformedOverflow = "overflow"

// CountMalformed counts one malformed attribute of flow, folding flows
// beyond MalformedFlowLimit into MalformedOverflow (counted in Limits with
// reason malformed_flows_folded). flow must be valid UTF-8.
func (m *Metrics) CountMalformed(flow string) {
	m.malformedMu.Lock()
	_, known := m.malformedFlows[flow]
	if !known && len(m.malformedFlows) < MalformedFlowLimit {
		m.malformedFlows[flow], known = struct{}{}, true
	}
	m.malformedMu.Unlock()
	if !known {
		m.Limits.WithLabelValues("malformed_flows_folded").Inc()
		flow = MalformedOverflow
	}
	m.Malformed.WithLabelValues(flow).Inc()
}

// New creates the metrics on a fresh registry that also carries the Go
// runtime and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{Registry: reg, malformedFlows: map[string]struct{}{}}
	cnt := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "flowmetrics", Name: name, Help: help})
		f(c)
		return c
	}
	vec := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "flowmetrics", Name: name, Help: help}, labels)
		f(c)
		return c
	}
	m.RecordsRead = cnt("records_read_total", "Input records read.")
	m.RecordsAccepted = cnt("records_accepted_total", "Attribute-update records accepted.")
	m.RecordsSkipped = vec("records_skipped_total", "Records skipped (not attribute updates).", "reason")
	m.RecordsRejected = vec("records_rejected_total", "Records rejected as invalid.", "reason")
	m.RecordsDeferred = cnt("records_deferred_total", "Accepted records left unacknowledged (to be retried) because another writer holds their keys pending.")
	m.Occurrences = vec("occurrences_total", "Flow metric occurrences counted (new claims).", "flow", "metric")
	m.Malformed = vec("malformed_attributes_total", "Metric-shaped attribute names that break the naming rules, by flow.", "flow")
	m.Limits = vec("input_limits_total", "Inputs cut, folded or refused by a bound, by reason.", "reason")
	for _, r := range []string{"name_too_long", "malformed_flows_folded", "errors_truncated", "body_too_large", "decompressed_too_large", "cache_bytes"} {
		m.Limits.WithLabelValues(r)
	}
	m.HTTPRefused = vec("http_refused_total", "HTTP requests refused before they were read, by reason: host_not_allowed (421), bytes_in_flight (503).", "reason")
	for _, r := range []string{"host_not_allowed", "bytes_in_flight"} {
		m.HTTPRefused.WithLabelValues(r)
	}
	m.CacheHits = cnt("cache_hits_total", "Events whose metric keys were all known in-process, so the store was not asked.")
	m.StoreLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "flowmetrics", Name: "store_latency_seconds", Help: "State store call latency.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
	}, []string{"op"})
	f(m.StoreLatency)
	m.StoreErrors = vec("store_errors_total", "State store errors.", "op")
	m.OutboxDepth = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "flowmetrics", Name: "outbox_depth", Help: "Occurrences waiting to be delivered, per sink."}, []string{"sink"})
	f(m.OutboxDepth)
	m.OutboxDropped = vec("outbox_dropped_total", "Occurrences dropped from the outbox without delivery.", "sink", "reason")
	m.SinkSends = vec("sink_sends_total", "Batches a sink delivered.", "sink")
	m.SinkPoints = vec("sink_points_total", "Points a sink delivered.", "sink")
	m.SinkBatchFailures = vec("sink_batch_failures_total", "Batches a sink failed to deliver (reason error: retried; permanent: dropped).", "sink", "reason")
	m.SinkBatchRetries = vec("sink_batch_retries_total", "Batches sent again after a failure, after a jittered backoff.", "sink")
	m.SinkFailures = vec("sink_failures_total", "Failed requests to a sink's backend, by the backend's reason.", "sink", "reason")
	m.SinkRetries = vec("sink_retries_total", "Requests a sink retried within one send.", "sink")
	m.PointsAdjusted = vec("points_adjusted_total", "Points a sink clamped or dropped to fit its backend's rules.", "sink", "reason")
	m.Overflow = cnt("cardinality_overflow_total", "Occurrences folded into the overflow series by the cardinality limit.")
	m.PathsClosed = vec("paths_closed_total", "Conversation paths closed: reason end (customer.end and the grace period) or idle (idle timeout without customer.end).", "reason")
	m.PathsClosed.WithLabelValues("end")
	m.PathsClosed.WithLabelValues("idle")
	m.PathPoints = vec("path_points_total", "Points derived from closed conversation paths, by kind (exit, step, timing, funnel, experiment).", "kind")
	m.PathEnds = cnt("path_end_events_total", "customer.end events read.")
	m.PathLate = cnt("path_late_occurrences_total", "New occurrences of conversations whose path had already closed: counted as occurrences, not in the closed path.")
	m.PathsUnsupported = vec("path_points_not_delivered_total", "Path points a sink does not take (a sink without path support).", "sink")
	return m
}
