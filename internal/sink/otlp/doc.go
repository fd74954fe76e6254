// Package otlp is the OpenTelemetry sink: OTLP/HTTP with protobuf bodies,
// built with the official protobuf types and sent over net/http to a
// collector or to any backend with an OTLP intake (Grafana Cloud,
// Honeycomb, New Relic, Datadog).
//
// Each flow metric is one stream of a monotonic Sum (delta by default,
// cumulative as an option) whose windows are the pipeline's buckets. A
// stream's windows are sent once each, in order, never overlapping, as the
// OpenTelemetry data model asks of a delta stream: a bucket is held open
// until a watermark after its end, occurrences of a bucket already sent go
// to the stream's next window (and a counter). Each stream's end and its
// closed and open windows are the sink's state (flowmetrics.StatefulSink),
// committed with the outbox cursor; a window is sent only after its
// closing is committed, so a crash neither loses a window nor sends one
// with other counts than the first time. The sink is a flowmetrics.Holder: the
// drainer sends it an empty batch when a held window is due.
//
// Path points (a flowmetrics.PathSink) are streams too: exits, funnels
// and experiments monotonic Sums of conversations, step timings and
// timings explicit-bucket Histograms in seconds, windows sent by the same
// rule (see paths.go).
//
// Retries follow OTLP/HTTP: only no answer, 429, 502, 503 and 504 are
// retried (Send returns an error; the pipeline sends the same batch again
// with jittered backoff and the sink does not count it twice), a
// Retry-After is honoured, a 413 splits the request, and any other status
// drops the request's windows with a counter and an error log naming the
// status. A 2xx partial success is delivered; its rejected points are
// counted.
package otlp
