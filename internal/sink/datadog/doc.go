// Package datadog delivers points to Datadog's metrics intake without an
// Agent, in one of two modes (Config.Mode; README.md says which to pick).
//
// # Distribution mode
//
// POST /api/v1/distribution_points, deflate (zlib: the only Content-Encoding
// the endpoint documents), one point per series and bucket start holding one
// value of 1 per occurrence. Datadog aggregates distributions server-side and
// keeps every value, whoever sent it, so any number of writers (Lambda
// instances, serve processes) and any restart add up exactly: count and sum
// of the series are both the number of occurrences. Nothing needs to be
// remembered, and the price is that a batch sent twice counts twice: the
// batch-resume logic below keeps a failed Send from resending what Datadog
// accepted, but a crash after Datadog's 202 and before the pipeline
// recorded the cursor resends the batch (the one duplicate window). A
// series-second with more than MaxValuesPerPoint occurrences in one batch is
// sent as several points of that second.
//
// # Count mode
//
// POST /api/v2/series, gzip, counts (type 1) stamped with the start of their
// bucket and an interval of the bucket width. Datadog keeps one value per
// series and second: a later point with the same name, tags and timestamp
// replaces the earlier one, within a request and across requests. A count
// sent naively would therefore lose occurrences whenever one bucket is
// delivered in more than one batch (late events, batch boundaries, retries).
// The Ledger in this package remembers, for every series and second still
// inside Datadog's acceptance window, the total Datadog holds, and sends the
// new total rather than the increment. That makes each point idempotent:
// sending it twice leaves the same value.
//
// The totals are the sink's state (flowmetrics.StatefulSink, encoded as in
// state.go): the pipeline restores them at Register and commits what changed
// after each delivered batch in the same durable write that advances the
// sink's cursor (Store.AckState: one synced Pebble batch, or one DynamoDB
// transaction with the delivered marks). Against that, a crash leaves:
//
//   - Crash after Datadog accepted a payload (202) and before the commit.
//     Neither the cursor nor the totals moved: the batch is sent again and
//     its totals are computed again from the committed ones, which do not
//     include it, so the same values are sent and overwrite themselves:
//     correct. This is why the totals are handed over once per Send, after
//     every payload of the batch, and never after a failed Send: a batch
//     partly delivered when the process stops (say, during an outage) is
//     resent whole by the next process and must be added to the totals from
//     before it, once.
//   - No crash can separate the totals from the cursor, so the old ledger
//     file's second window (totals written, cursor not) is gone.
//   - Clamped points (older than 59 minutes, LatePolicy clamp) are sent at
//     now-59min, a second that moves with the clock. In the first case, a
//     batch resent later is clamped to a different second, so what Datadog
//     accepted before the crash stays at the old second and the resent
//     points are added at the new one: those clamped points count twice.
//     Within one process the Batch kept by a failed Send prevents this; a
//     crash cannot. Points inside the window are not affected.
//
// The state is bounded: totals older than PruneAge are deleted (nil
// updates), so it holds at most the series count times the slots PruneAge
// spans.
//
// # One writer per series, in count mode
//
// Count mode is exact only with a single writer per series: Datadog keeps the
// last value of a series and second whoever sent it, and each writer knows
// only its own totals. Two serve replicas, several Lambda instances, or both
// Datadog sinks delivering the same series overwrite each other's totals (an
// undercount; TestConcurrentWriters shows it). Use distribution mode there.
//
// # Conversation paths
//
// SendPaths (paths.go) delivers the points derived from closed paths by the
// same rules: exits, funnels and experiments are counts of conversations,
// summed per series and PathBucket and sent as the occurrences are (count
// mode: running totals in the same state; distribution mode: values of
// 1); step timings and timings are distribution points of seconds in both
// modes, so Datadog computes their percentiles from every value. In count
// mode a path batch therefore goes to both intakes.
//
// The package also holds Datadog's naming rules (MetricName, Tag) and the
// late-point policy, which the dogstatsd sink shares.
package datadog
