// Package pipeline runs events through extract → claim → outbox → sinks.
//
// Ingest turns decoded records into occurrences, claims them in the store
// (which makes the new ones durable in the outbox in the same write), and
// returns only then, so callers acknowledge their senders after it. One
// drainer per sink reads the outbox from the sink's cursor, aggregates the
// occurrences into epoch-aligned buckets of their attribute time, sends, and
// advances the cursor; a failing sink is retried with jittered exponential
// backoff while its points stay pending.
package pipeline
