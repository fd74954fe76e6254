// Package dogstatsd delivers points to a Datadog Agent or the Datadog Lambda
// Extension over DogStatsD (UDP or a Unix socket), with Datadog's Go client.
// Each point is a count stamped with its bucket start (the |T field), so the
// Agent forwards it unaggregated, at the time the occurrences happened.
//
// Timestamped points bypass the Agent's aggregation, and Datadog keeps one
// value per series and second, so this sink shares the datadog package's
// Ledger: it sends each series-second's running total, never an increment,
// which also makes a resent datagram harmless.
package dogstatsd
