// Package datadog delivers points to Datadog's metrics intake without an
// Agent: POST /api/v2/series, gzip, counts (type 1) stamped with the start of
// their bucket and an interval of the bucket width.
//
// Datadog keeps one value per series and second: a later point with the same
// name, tags and timestamp replaces the earlier one, within a request and
// across requests. A count sent naively would therefore lose occurrences
// whenever one bucket is delivered in more than one batch (late events, batch
// boundaries, retries). The Ledger in this package remembers, for every
// series and second still inside Datadog's acceptance window, the total
// Datadog holds, and sends the new total rather than the increment. That
// makes each point idempotent: sending it twice leaves the same value.
//
// # A durable ledger
//
// A Ledger in memory is empty after a restart: a late point for a bucket
// sent before the restart would be sent as a total of 1 and overwrite the
// bucket's earlier total (an undercount). With Config.LedgerPath set (serve
// uses <data_dir>/datadog-ledger; see LedgerPath), the Ledger keeps its
// totals in a file too (OpenLedger): Send commits the new totals (append,
// fsync) after Datadog accepted the batch and before it returns nil, and a
// new process loads them. The file is a log of records with checksums; a
// record torn by a crash is cut when the file is opened; the file is
// rewritten compactly when it is opened and when it has grown to more than
// twice the live totals plus a slack, and totals older than PruneAge (1 h 10
// min, beyond anything Datadog still accepts) are dropped then, so memory
// and disk stay bounded by the series count times the window.
//
// The pipeline advances a sink's outbox cursor (Store.Ack) only after Send
// returned nil, and sends a failed batch again unchanged. Against that, the
// crash windows are:
//
//   - Crash after Datadog accepted a payload (202) and before the ledger
//     commit. The cursor has not moved: the batch is sent again and its
//     totals are computed again from the committed ones, which do not
//     include it, so the same values are sent and overwrite themselves:
//     correct. This is why the ledger is committed once per Send, after
//     every payload of the batch, and not after each payload, and why Close
//     does not commit: a batch partly delivered when the process stops
//     (say, during an outage) is resent whole by the next process and must
//     be added to the totals from before it, once.
//   - Crash after the commit and before the pipeline's Ack. The batch is
//     sent again and added again on top of totals that already hold it: a
//     duplicate. This is the window DESIGN.md accepts ("a crash after a
//     sink accepted a batch and before the outbox recorded it").
//   - Clamped points (older than 59 minutes, LatePolicy clamp) are sent at
//     now-59min, a second that moves with the clock. In the first window, a
//     batch resent later is clamped to a different second, so what Datadog
//     accepted before the crash stays at the old second and the resent
//     points are added at the new one: those clamped points count twice.
//     Within one process the Batch kept by a failed Send prevents this; a
//     crash cannot. Points inside the window are not affected.
//   - If the commit itself fails, Send returns a retryable error; the
//     pipeline's retry (the same points) resumes the Batch, sends nothing
//     again and only retries the commit.
//
// # One writer per series
//
// Exactness needs a single writer per series: Datadog keeps the last value
// of a series and second whoever sent it, and each writer's Ledger knows only
// its own totals. Two serve replicas, several Lambda instances, or both
// Datadog sinks delivering the same series, sending the same flow metric for
// the same bucket overwrite each other's totals (an undercount). Run one
// serve, or one Lambda instance at a time (reserved concurrency 1), per
// series. In Lambda the ledger is in memory (nothing survives a cold
// start), so a cold start has the undercount described above for buckets
// still inside the window.
//
// The package also holds Datadog's naming rules (MetricName, Tag) and the
// late-point policy, which the dogstatsd sink shares.
package datadog
