// Package statsd is the plain StatsD sink: counters over UDP as
// "name:count|c" lines, several per datagram, for statsd, Telegraf,
// statsd_exporter or any daemon that forwards to Graphite.
//
// Plain StatsD has no timestamps: the daemon counts a line in the flush
// interval in which it arrives, not in the bucket of the occurrences. Use a
// sink that carries time (EMF, OTLP, Datadog) when late events matter.
//
// Plain StatsD has no tags either, so by default the flow and the metric are
// put in the name (genesys.flow.metric.<flow>.<metric>); TagStyle "graphite"
// or "dogstatsd" sends them as tags for daemons that understand those
// extensions.
//
// UDP has no acknowledgement; a dead daemon is detected from the ICMP "port
// unreachable" its host answers with, which a connected socket reports as
// "connection refused": after each datagram the sink waits ConfirmWait for
// it and fails the batch on a refusal (see Sink.Send).
package statsd
