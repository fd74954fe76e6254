// Package dynamostore is the flowmetrics.Store on Amazon DynamoDB: the state
// that lets many Lambda instances (or several serve replicas) count every
// occurrence exactly once without a server of their own.
//
// # Item layout
//
// One item per conversation, partition key "id" (S):
//
//	id         S  conversation id (prefixed with "c\x1f" if it begins with
//	              "s\x1f" or "c\x1f", which name sink-state items)
//	ttl        N  epoch seconds: the time of the last claim write plus the retention
//	"k:<key>"  S  one attribute per claimed metric attribute name:
//	              "d"              delivered (or nothing will ever deliver it)
//	              "<owner>@<ms>"   claimed by the store instance <owner>, which
//	                               holds it until the lease ends at epoch ms <ms>
//
// With conversation paths on (store.Options.Paths), the item also holds:
//
//	ps  S  the path index partition: a hash of the id modulo PathShards
//	pb  N  epoch ms from which the path is due: the first customer.end
//	       plus the grace, else the last event plus the idle timeout
//	       rounded up to IdleStep; removed once the close is delivered
//	pe  N  epoch ms of the first customer.end plus the grace; 2^53
//	       ("never") once closed
//	pc  N  the close: its lease end in epoch ms while its points are
//	       pending, 0 once delivered
//
// (Earlier versions also wrote pn, a nonce; a reset removes it.)
//
// # Closing paths, and finding them without a scan
//
// A global secondary index "paths" (partition ps, sort pb, KEYS_ONLY)
// holds every conversation with path state. ClosePaths queries each of its
// PathShards partitions for pb ≤ now, oldest first, and closes each
// candidate with one conditional UpdateItem:
//
//	SET pc = :lease, ttl = :ttl
//	CONDITION pb <= :asOf AND (attribute_not_exists(pc) OR pc < :now) AND ttl > :now
//	ReturnValues ALL_OLD
//
// DynamoDB serialises writes to an item, so of any number of instances
// closing at once exactly one succeeds; ALL_OLD hands it the keys to
// derive from. The points go into the outbox like a claim's, and the close
// stays pending under the lease until every sink acknowledged them; the
// mark then sets pc = 0 and pe = "never" and removes pb (on condition
// pc = :lease), so nothing can make the path due again while the item
// lives: a later claim or end can only write pb = pe = "never". An
// instance that dies in between leaves pc to run out, and the next sweep
// closes the path again. Without sinks the close is written as delivered.
//
// Why this index: its sort key is the due time, so a sweep reads only the
// due conversations (plus, at most, closes pending under another
// instance's live lease); the shards spread its writes over partitions
// (each takes 1,000 writes a second); and KEYS_ONLY means that only a
// change of ps or pb writes the index. pe keeps an ended conversation's
// deadline: a claim writes "pb = if_not_exists(pe, :idle)", so new keys
// after the end (or after the close) leave it alone. Idle deadlines are
// rounded up to IdleStep so that a conversation's index entry moves at
// most once a step, not with every event. Every event postpones the idle
// close, new keys or not: a claim's write sets pb, and a claim that
// ReadFirst finds all known, so writes nothing, sets pb with a write of
// its own when the rounded deadline moved (on condition that pe is absent
// and pb is earlier). The pipeline's known-key cache lets one event of a
// conversation through to the store per IdleStep (pipeline.Config's
// PathTouch, which the Lambda handler sets to Store.PathTouch), so a
// conversation that goes on without new keys stays open.
//
// Index writes per conversation, as DynamoDB bills them (keys only: one
// write unit per entry added or removed, two per move): the first claim
// adds it, the end moves it, the close's mark removes it; an event moves
// it only when it crosses an IdleStep boundary (15 minutes by default, or
// a sixteenth of the idle timeout if shorter).
//
// # Claiming
//
// A claim of a conversation's keys is one UpdateItem:
//
//	SET ttl = :ttl, #k0 = if_not_exists(#k0, :mine), #k1 = if_not_exists(#k1, :mine), …
//	CONDITION attribute_not_exists(ttl) OR ttl > :now
//	ReturnValues ALL_OLD
//
// A key whose attribute did not exist before the write is new, and this
// instance alone got it: DynamoDB serialises writes to an item, and
// if_not_exists keeps the first writer's value. The claim and its "pending"
// mark are the same attribute written by the same request, so there is no
// moment when a key is claimed but not marked pending. ALL_OLD rather than
// UPDATED_OLD: both cost nothing extra, and ALL_OLD returns every old
// attribute whether or not the write changed it, which is what the decision
// needs.
//
// Why not "ADD keys :k, pending :k" on two string sets: ADD cannot say which
// caller put a key into the second set. A caller that finds every key already
// claimed has still added them all to "pending" again, so after a crash a key
// long delivered would look undelivered and be counted twice. A per-key
// attribute set with if_not_exists records the first claimer and is the same
// single UpdateItem, at the same cost.
//
// DynamoDB deletes expired items lazily (typically within days), so an item
// whose ttl has passed is treated as empty: the claim's condition fails, the
// item is read and rewritten with only the requested keys (all new), guarded
// by a condition on the ttl it read.
//
// With Config.ReadFirst, a claim first reads the requested attributes with an
// eventually consistent GetItem (half a read unit) and writes only when some
// key may be new: an event carrying only known keys then costs a read instead
// of a write. The write still decides; a stale read only costs the write.
//
// # Crash safety and the outbox
//
// The outbox is in this process's memory: this store is meant for callers
// that deliver before they acknowledge their input (the Lambda handlers
// flush before returning). Durability comes from the pending marks and from
// the at-least-once redelivery of the event that carried the claim:
//
//   - Claimed keys stay "<owner>@<lease end>" until every registered sink has
//     acknowledged the outbox entry holding them; then one UpdateItem per
//     conversation sets them to "d" (inside one TransactWriteItems with the
//     sinks' state updates, when there are any).
//   - An entry is handed to sinks only until Lease−Margin after its claim;
//     after that it is dropped unsent (counted in Stats.Dropped and logged),
//     because from the lease's end another instance may claim it again.
//     The store is a flowmetrics.Leaser: the pipeline asks it (Holds)
//     before every send of a batch, so a batch it held for a retry after a
//     failed send is abandoned once one of its entries was dropped.
//     Without this, a held batch was sent after the lease, beside the
//     entry that claimed (or closed) the same keys again from the
//     redelivered event.
//   - A claim that finds a key pending under a lease that has ended claims it
//     again (one conditional UpdateItem comparing the old value), so exactly
//     one of several concurrent claimers takes it over, and it is new again.
//     The same holds for this instance's own pending keys that no live outbox
//     entry holds (a claim that failed half-way).
//   - A claim that finds a key pending under another instance's live lease
//     does not count it, and reports the requests holding such keys in a
//     *flowmetrics.PendingError (Stats.PendingElsewhere counts them): the
//     other instance may be delivering it, or may have died, so the caller
//     must not acknowledge those records but have them redelivered later
//     (the Lambda handlers list them in batchItemFailures, or fail a direct
//     invocation). The redelivery finds the key delivered, or its lease
//     ended and claims it. With ReadFirst the read alone decides this, with
//     no write. The occurrences Claim returns alongside the error are
//     claimed and in the outbox as usual.
//
// The guarantee, exactly: an occurrence whose claim was made is delivered to
// every sink at least once, provided the event that carried the claim is
// redelivered after the claim's lease ended whenever its processing did not
// succeed. With SQS that holds when the visibility timeout is at least Lease
// plus the function timeout, and maxReceiveCount leaves room for it; with
// asynchronous invocation (EventBridge → Lambda), when Lease is shorter than
// the one minute Lambda waits before its first retry. That includes SQS
// handing the same message to two consumers at once: the one without the
// claim does not acknowledge it while the claim is pending.
//
// An occurrence is delivered twice only when (a) a sink accepted it and the
// instance died, or could not write "d", before the mark, and an event
// carrying the key arrives after the lease (for the Lambda handlers: the new
// occurrences of the one send in flight, during the time from the sink's
// acceptance to the last mark write; deploy/aws/README.md has it measured); (b) a
// sink accepted it in a send that was still running when the lease ended,
// or in part of a batch whose send failed and was held until the lease
// ended (abandoned then), and it was claimed again; or (c) with
// several sinks, one acknowledged and the other failed until the lease ended:
// the retry delivers to both.
//
// Claims made while no sink is registered are written as delivered: nothing
// would ever deliver them. Register the sinks before the first Claim.
//
// # Retention
//
// Every claim write sets ttl to now plus the retention, so retention counts
// from the last claim write that reached DynamoDB (a change, or a repeat that
// the pipeline's cache and ReadFirst did not filter out). Enable TTL on the
// table with attribute name "ttl".
//
// # Sink state
//
// A sink's state (flowmetrics.StatefulSink: the Datadog count mode's running
// totals) is kept in the table, one item per key plus a directory item per
// sink, and committed in the same TransactWriteItems as the delivered marks
// of the entries it describes, so that after a crash either both are visible
// or neither; see state.go. Only commits that carry a state update use
// transactions (each item written in one costs two write units); without one
// the marks stay plain UpdateItems.
//
// # The cardinality guard's admitted pairs
//
// One item per admitted flow/metric pair, in slots taken in order by
// conditional writes, so every instance shares one set that never passes
// the limit; see pairs.go.
//
// # Permissions
//
// dynamodb:GetItem, dynamodb:UpdateItem and dynamodb:BatchGetItem (the
// cardinality guard's admitted pairs, read at a cold start) on the table,
// and with paths dynamodb:Query on its index "paths"; with a stateful sink
// (Datadog count mode) also dynamodb:PutItem and dynamodb:DeleteItem (the
// actions inside TransactWriteItems, which has no permission of its own).
package dynamostore
