// Package dogstatsd delivers points to a Datadog Agent or the Datadog Lambda
// Extension over DogStatsD (UDP or a Unix socket), with Datadog's Go client,
// in one of two modes (Config.Mode).
//
// Count mode (the default) sends each point as a count stamped with its
// bucket start (the |T field), so the Agent forwards it unaggregated, at the
// time the occurrences happened. Timestamped points bypass the Agent's
// aggregation, and Datadog keeps one value per series and second, so this
// sink shares the datadog package's Ledger: it sends each series-second's
// running total, never an increment, which also makes a resent datagram
// harmless. The totals are the sink's state (flowmetrics.StatefulSink),
// committed by the pipeline with the sink's cursor, so a restart goes on from
// them. Exactness needs a single writer per series: see the datadog package
// comment and README.md.
//
// Distribution mode sends one distribution value of 1 per occurrence (|d).
// The Agent and Datadog add up every value, whoever sent it, so any number of
// writers and restarts are exact. DogStatsD distributions carry no
// timestamp: the Agent stamps them with their arrival (its 10-second flush),
// so an occurrence is counted when it is delivered, not at its attribute
// time. A batch resent after a write error or a crash counts twice.
package dogstatsd
