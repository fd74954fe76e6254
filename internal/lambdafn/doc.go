// Package lambdafn runs the pipeline inside AWS Lambda: Genesys Cloud's
// EventBridge integration → a rule on the partner event bus → either the
// function directly (one event per invocation) or an SQS queue whose event
// source hands the function batches and reads back batchItemFailures.
//
// Handler implements lambda.Handler and tells the two payloads apart, so the
// same function serves either trigger. Each invocation claims the events'
// metric keys in DynamoDB (internal/store/dynamostore), delivers the new
// occurrences to every sink, and only then answers: the store's outbox is
// in memory, and the answer is the acknowledgement. Records that can never
// succeed (not JSON, not an event) are logged and counted, never retried; a
// store or sink failure fails the invocation (EventBridge target) or lists
// every accepted record of the batch (SQS), so they come back. A record is
// acknowledged only when its occurrences are delivered or were already:
// one holding a key that another instance claimed and has not yet marked
// delivered (flowmetrics.PendingError) is listed too, or fails a direct
// invocation, and comes back after that instance delivered or its lease
// ended. A sink that keeps failing is given up after DefaultFlushAttempts
// sends, so the invocation answers in seconds, not at its timeout.
//
// Each invocation that fails or defers records writes one CloudWatch
// embedded-metric line (namespace ReportNamespace: RecordsFailed,
// RecordsDeferred) on stdout, which the template's alarm watches.
//
// Timing rules that keep exactly-once (see the dynamostore package doc):
// a failed event must come back only after its claims' lease (40 s) has
// ended and after the instance's known-key cache forgot them (15 s), so the
// SQS visibility timeout is at least lease + function timeout + cache TTL
// (the template uses 120 s), and for the EventBridge target the lease plus
// the cache TTL stays under the one minute Lambda waits before retrying.
//
// Configuration comes from environment variables (ConfigFromEnv); Run is the
// entry point of `flowmetrics lambda`, which a provided.al2023 "bootstrap"
// runs.
package lambdafn
