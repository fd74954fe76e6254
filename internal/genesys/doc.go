// Package genesys reads Genesys Cloud conversation events as the Amazon
// EventBridge integration delivers them, and finds the flow metric
// attributes in them. It also writes them: Envelope and AttributeName are
// what the generators (corpus, demo) and the tests build their events
// from, so every producer writes the shape the decoder reads.
//
// # The contract with flow authors
//
// An Architect flow marks an interesting moment by setting a Participant
// Data attribute named
//
//	<Flow>Metric_<Metric>(<RFC 3339 date-time>)
//	CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)
//
// FLOW is the text before the first "Metric_"; METRIC runs from there to the
// last "(", and the date-time sits between that "(" and the ")" that ends
// the name. The attribute's value is ignored. A name that looks like a
// metric attribute but breaks a rule is malformed: it is never counted as a
// metric, but it is reported with its flow, so that a typo in a flow gets
// noticed rather than silently lost. ParseAttribute spells out the shape
// and the rules, and where RFC 3339 left a choice. FLOW and METRIC are at
// most MaxFlowLen and MaxMetricLen (200) bytes, and a name must be valid
// UTF-8: the decoder hands over each attribute name that holds "Metric_"
// with its exact bytes (a lone surrogate escape as its WTF-8 bytes), never
// "repaired", so two different names can never become one key. Nor may FLOW or METRIC hold a
// control character or an invisible format character (Unicode Cf, such as
// a bidirectional override or a zero-width space, and the line and
// paragraph separators), so two different keys can never look the same.
//
// # Events
//
// Genesys publishes AttributeUpdateEvents on the topic
// v2.detail.events.conversation.{id}.attributes; each carries every
// attribute of one participant. An input record is an EventBridge envelope
// (whose "detail" holds the event) or a bare detail object (topicName and
// eventBody), as some forwarders deliver it. Decode reads a stream of them
// (one value, a JSON array when the whole input is one, or NDJSON) without
// holding more than one record, and DecodeValue a single one. Each record is
// Accepted (an attributes event), Skipped (another topic: not an error) or
// Rejected (not JSON, not an event, larger than MaxRecordSize, or an
// attributes event without a conversation id or whose attributes are
// missing, not all strings, or more than MaxAttributes).
// An accepted event keeps only what counting needs: the names that hold
// "Metric_", each once and sorted (other names and every value are
// validated, then dropped). Extract turns it into occurrences, the unit
// flowmetrics counts once per conversation.
//
// The decoder is a small JSON reader of its own rather than encoding/json:
// replay must handle 100,000 events a second on two cores, and encoding/json
// scans each record twice and allocates for every field it fills. It still
// validates every record in full, as encoding/json would; a fuzz test holds
// the two to the same verdicts.
package genesys
