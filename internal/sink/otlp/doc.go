// Package otlp is the OpenTelemetry sink: OTLP/HTTP with protobuf bodies, sent
// by the OpenTelemetry Go exporter (otlpmetrichttp) to a collector or to any
// backend with an OTLP intake (Grafana Cloud, Honeycomb, New Relic,
// Datadog).
//
// Each point becomes a data point of a delta-temporality monotonic Sum whose
// StartTimeUnixNano is the bucket start and TimeUnixNano the bucket end,
// with the attributes flow, metric and the static tags. The SDK's
// instruments cannot stamp past times, so the sink builds the
// metricdata.ResourceMetrics itself and calls the exporter's Export.
//
// The exporter's own retry is turned off: the pipeline retries a failed
// batch with jittered backoff from its durable outbox, counts the retries,
// and never gives up after a minute as the exporter would. The sink sees
// each response's status code (through its own HTTP transport) to tell
// retryable failures from permanent ones, and treats a 2xx partial success
// as delivered: the OTLP specification says not to retry it, and retrying
// would count the accepted points twice.
package otlp
