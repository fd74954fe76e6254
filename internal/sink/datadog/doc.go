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
// The package also holds Datadog's naming rules (MetricName, Tag) and the
// late-point policy, which the dogstatsd sink shares.
package datadog
