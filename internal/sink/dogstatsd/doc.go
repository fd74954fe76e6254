// Package dogstatsd delivers points to a Datadog Agent or the Datadog Lambda
// Extension over DogStatsD (UDP or a Unix socket), with Datadog's Go client.
// Each point is a count stamped with its bucket start (the |T field), so the
// Agent forwards it unaggregated, at the time the occurrences happened.
//
// Timestamped points bypass the Agent's aggregation, and Datadog keeps one
// value per series and second, so this sink shares the datadog package's
// Ledger: it sends each series-second's running total, never an increment,
// which also makes a resent datagram harmless.
//
// With Config.LedgerPath set (serve uses <data_dir>/dogstatsd-ledger), the
// totals are kept in a file too and Send commits them before it returns nil,
// so a restarted process goes on from them. The crash windows this leaves
// are the datadog package's (see its package comment): a crash between the
// write to the socket and the commit resends the same totals (harmless,
// except for clamped points), a crash between the commit and the pipeline's
// Ack counts the batch twice. Exactness also needs a single writer per
// series: see the datadog package comment and README.md.
package dogstatsd
