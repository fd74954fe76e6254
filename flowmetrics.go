// Package flowmetrics holds the domain types shared by every part of the
// pipeline: occurrences of flow metrics, the points sinks receive, and the
// interfaces of the state store and the sinks. Implementations live under
// internal/ and are wired together by hand in cmd/flowmetrics.
package flowmetrics

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Occurrence is one distinct, well-formed metric attribute within one
// conversation: the thing flowmetrics counts exactly once.
type Occurrence struct {
	// Key identifies the occurrence within its conversation. It is the
	// attribute name exactly as the flow wrote it.
	Key    string
	Flow   string
	Metric string
	// Time is the attribute's own time (the UTC time in its name).
	Time time.Time
	// AfterClose is set by Claim on a new occurrence whose conversation's
	// path had already closed: it is counted, but its path is not derived
	// again. It is not stored.
	AfterClose bool
}

// ClaimRequest asks the store to count the occurrences of one conversation.
type ClaimRequest struct {
	ConversationID string
	Occurrences    []Occurrence
	// Ended says that the conversation's customer.end event arrived (see
	// Store.ClosePaths). A request may carry it with no occurrences.
	Ended bool
}

// Point is a count of occurrences of one flow metric in one time bucket.
type Point struct {
	Flow   string
	Metric string
	// Bucket is the start of the epoch-aligned bucket the occurrences'
	// attribute times fall into.
	Bucket time.Time
	// Width is the bucket width (Datadog's count interval, OTLP's end time).
	Width time.Duration
	Count int64
}

// Entry is one record of the outbox: the occurrences one Claim call found
// new, or the points one ClosePaths call derived.
type Entry struct {
	Seq         uint64
	Occurrences []Occurrence
	Paths       []PathPoint
}

// PathKind says what a PathPoint measures.
type PathKind uint8

// The kinds of path points. Counters count conversations; durations are
// observations of a distribution, in seconds.
const (
	// PathExit: the flow's last metric in the conversation (Flow, Metric):
	// where the conversation left the flow. A counter.
	PathExit PathKind = 1 + iota
	// PathStep: the seconds from the flow's first metric to the first
	// occurrence of Metric (Flow, Metric, Seconds). A duration.
	PathStep
	// PathTiming: a configured timing (Name, Seconds). A duration.
	PathTiming
	// PathFunnel: the conversation reached Step of funnel Name after the
	// steps before it. A counter.
	PathFunnel
	// PathExperiment: the conversation reached Step of Variant of
	// experiment Name (each variant is a funnel). A counter.
	PathExperiment
)

// String names the kind as configs, JSON and labels spell it.
func (k PathKind) String() string {
	switch k {
	case PathExit:
		return "exit"
	case PathStep:
		return "step"
	case PathTiming:
		return "timing"
	case PathFunnel:
		return "funnel"
	case PathExperiment:
		return "experiment"
	}
	return fmt.Sprintf("kind%d", uint8(k))
}

// IsDuration reports whether points of the kind are durations (Seconds)
// rather than counts of one.
func (k PathKind) IsDuration() bool { return k == PathStep || k == PathTiming }

// PathPoint is one point derived from a closed conversation path. Each
// closed conversation contributes each of its points once.
type PathPoint struct {
	Kind PathKind
	// Flow and Metric: exits and step timings.
	Flow, Metric string
	// Name of the timing, funnel or experiment.
	Name string
	// Variant of the experiment.
	Variant string
	// Step of the funnel or experiment variant.
	Step string
	// Seconds: the duration of a step timing or timing.
	Seconds float64
	// Time is the attribute time the point is stamped at: the exit's, the
	// step's, the timing's "to" step's, the funnel step's.
	Time time.Time
	// Conversation is the conversation the point comes from (examples,
	// exemplars).
	Conversation string
}

// ClosedPath is what a store knows of a conversation whose path it closes.
type ClosedPath struct {
	ConversationID string
	// Keys are the conversation's claimed keys (attribute names, which
	// carry flow, metric and time), in no particular order.
	Keys []string
	// Ended: the customer.end event arrived (else the idle timeout passed).
	Ended bool
}

// Deriver computes the points of a closed path. It must be quick, pure and
// bounded in the number of keys, and safe to call from several goroutines
// at once: a store may derive the paths of one close call in parallel.
type Deriver func(ClosedPath) []PathPoint

// PathOptions turns on conversation paths in a store: Claim then keeps each
// conversation's close deadline, and ClosePaths closes them.
type PathOptions struct {
	// Grace is how long after a conversation's customer.end event
	// attribute events still in flight are waited for.
	Grace time.Duration
	// Idle closes a conversation that got no event for this long and no
	// customer.end event.
	Idle time.Duration
}

// Step is how coarsely an open path's idle deadline follows events that
// bring only known keys (a sixteenth of Idle): a store writes such a
// conversation's deadline at most once per Step, and the pipeline tells
// the store of a conversation whose events its known-key cache answers
// at most once per Step. A path then closes between Idle and Idle+Step
// after its last event.
func (o PathOptions) Step() time.Duration { return o.Idle / 16 }

// ErrPathsUnsupported is ClosePaths' error from a store that cannot close
// paths (yet), or was opened without PathOptions.
var ErrPathsUnsupported = errors.New("conversation paths are not supported by this store")

// Store remembers which occurrences each conversation has already counted and
// holds the outbox of occurrences not yet delivered to every sink.
//
// Claim is the heart of exactly-once counting. For each request it inserts the
// keys the store does not yet hold for that conversation and returns the
// occurrences whose keys were new, in request order. The check and the insert
// are atomic per conversation: of any number of concurrent callers (in this
// process or, for shared stores, in others) claiming the same key of the same
// conversation, exactly one gets it back as new. When Claim returns a nil
// error, both the claims and an outbox entry holding the new occurrences are
// durable (as durable as the implementation is: the memory store is not). On
// error nothing of the failed requests may be assumed claimed, and retrying
// the same requests is safe: keys that were in fact stored are simply not new.
//
// A store shared by several writers (several Lambda instances on one
// DynamoDB table) may find a key that another writer claimed and has not yet
// delivered. It then returns the occurrences it did get as new together with
// a *PendingError naming the requests that hold such keys: the returned
// occurrences are claimed and in the outbox exactly as with a nil error, but
// the named requests must not be acknowledged (the other writer may still
// die before delivering); retrying them later is safe and finds the key
// delivered, or claimable again. Stores with a single writer never return it.
//
// Conversation state expires Retention after its last change; a key claimed
// again after expiry is new again.
//
// The outbox is a log of entries with increasing sequence numbers. Each sink
// reads it from its own cursor (ReadOutbox) and advances the cursor when it
// has delivered (AckState). Entries every sink has acknowledged are
// discarded.
//
// A store may also have the optional capabilities below: Sweeper,
// Settler, Leaser, Failer, SinkLister, KeyHolder.
type Store interface {
	Claim(ctx context.Context, reqs []ClaimRequest) ([]Occurrence, error)

	// ReadOutbox returns up to limit entries with Seq > after, in order. It
	// never skips an entry that a later call could still return: entries of
	// Claim calls still in progress hold back those after them.
	ReadOutbox(ctx context.Context, after uint64, limit int) ([]Entry, error)
	// Cursor returns the last sequence number the named sink acknowledged
	// (0 when it never did).
	Cursor(ctx context.Context, sink string) (uint64, error)
	// Register declares the sinks that read the outbox, so entries are kept
	// until each of them acknowledged. A sink registered for the first time
	// starts at the current end of the outbox.
	Register(ctx context.Context, sinks []string) error
	// AckState durably records that the named sink has delivered every
	// entry up to and including seq, discards entries no registered sink
	// still needs, and applies update to the sink's state in the same
	// atomic durable write: after a crash, either the cursor and the update
	// are both visible or neither is. update may be nil (only the cursor
	// moves). The update is applied even when seq does not advance the
	// cursor.
	AckState(ctx context.Context, sink string, seq uint64, update StateUpdate) error
	// SinkState returns every key of the named sink's state as last
	// committed by AckState (an empty map when there is none). A sink that
	// is no longer registered loses its state.
	SinkState(ctx context.Context, sink string) (map[string][]byte, error)
	// OutboxDepth returns how many occurrences (and path points) are
	// pending for the named sink.
	OutboxDepth(ctx context.Context, sink string) (int64, error)

	// ClosePaths closes the paths of up to limit conversations that are due
	// at asOf, and returns how many it closed. With paths on (PathOptions),
	// Claim keeps each conversation's close deadline: Grace after the
	// first request with Ended (later ones do not postpone it), otherwise
	// between Idle and Idle+Step after the conversation's last request
	// (exactly Idle when that request claimed a new key and none before it
	// brought only known keys; see PathOptions.Step). A due
	// conversation is found through an index ordered by deadline, never by
	// scanning every conversation. For each one ClosePaths calls derive
	// with its claimed keys, and writes, in ONE atomic durable write (like
	// a claim), the closed marks of every conversation it closed and one
	// outbox entry holding all their points (no entry when there are
	// none). A path closes exactly once, across concurrent calls, crashes
	// and restarts: a conversation that closed is never due again, and
	// the new keys Claim finds for it afterwards come back with
	// AfterClose set. On error nothing of the call may be assumed closed,
	// and calling again is safe. The closed mark expires with the
	// conversation's state (Retention). A store without paths returns
	// ErrPathsUnsupported.
	ClosePaths(ctx context.Context, asOf time.Time, limit int, derive Deriver) (int, error)

	// Pairs returns the flow/metric pairs the cardinality guard admitted
	// (AdmitPairs), in the order they were admitted.
	Pairs(ctx context.Context) ([]Pair, error)
	// AdmitPairs adds to the cardinality guard's admitted set each of
	// pairs it does not hold yet, in order, while it holds fewer than
	// limit, and returns the whole set as it then is, in admission order.
	// The set only grows (a pair stays admitted; nothing expires), so a
	// caller that knows its first n pairs needs only the rest. The check
	// and the add are atomic across every writer of the store: the set
	// never lists a pair twice and never takes more than limit places (it
	// holds more only after the limit was lowered; a store shared by
	// several writers may waste a place in a race, admitting fewer pairs,
	// never more). When AdmitPairs returns nil the
	// additions are durable; on error nothing of the call may be assumed
	// added, and calling again is safe. The guard admits a pair before
	// the claim that counts it, so after any crash the set holds every
	// pair the outbox and the backends hold.
	AdmitPairs(ctx context.Context, pairs []Pair, limit int) ([]Pair, error)

	// Close releases the store; it is safe to call twice.
	Close() error
}

// Pair is a flow/metric pair: one series in each backend. The cardinality
// guard admits at most its limit of them; a pair is at most MaxStateValue
// bytes once encoded, far beyond a metric attribute name's 200 bytes.
type Pair struct{ Flow, Metric string }

// Sweeper is a Store that deletes expired conversations when asked
// (serve calls Sweep every store.sweep_interval) rather than on its own.
type Sweeper interface {
	// Sweep deletes the conversations past their retention and returns
	// how many it removed.
	Sweep(ctx context.Context) (int, error)
}

// Settler is a Store that may hold some of its writes back after AckState
// returned (DynamoDB's delivered marks, written in batches). A caller that
// acknowledges its input only after delivery (Lambda) calls Settle after
// flushing, before acknowledging.
type Settler interface {
	Settle(ctx context.Context) error
}

// Leaser is a Store whose outbox entries are held under a lease
// (DynamoDB's claims and closes): once an entry's lease runs short the
// store withdraws it, and from the lease's end another instance, or this
// one, may claim its keys or close its paths again. A batch read from such
// an outbox must not be sent once one of its entries is withdrawn, or its
// points would be delivered twice.
type Leaser interface {
	// Holds reports whether the outbox still holds all n entries with
	// after < Seq <= last that ReadOutbox returned.
	Holds(after, last uint64, n int) bool
}

// PathCloser is a Store that can also close the paths of named
// conversations, those due at asOf, as ClosePaths would (one outbox entry
// for all); it returns how many this call closed (the others are not due,
// unknown, or closed already). The Lambda handler of the delayed messages
// each customer.end sends calls it, so the grace ends without waiting for
// a sweep.
type PathCloser interface {
	ClosePathsOf(ctx context.Context, conversationIDs []string, asOf time.Time, derive Deriver) (int, error)
}

// Failer is a Store that can fail in a way it cannot survive (Pebble after
// an unrecoverable error): Done is closed then, and Err says why. Only main
// acts on it, by exiting, so that a supervisor restarts the process on an
// intact write-ahead log; calls into the store may block for good after
// it.
type Failer interface {
	Done() <-chan struct{}
	Err() error
}

// SinkLister is a Store that remembers which sinks were registered across
// runs (the embedded store), so that a caller can register more sinks
// without dropping those (replay into a serve data directory).
type SinkLister interface {
	// Sinks returns the registered sinks' names, sorted.
	Sinks() []string
}

// KeyHolder is a Store that can say, cheaply and claiming nothing, which
// keys of a conversation it holds (the memory store, which holds them all
// in memory): the pipeline then leaves those out before it parses them,
// as it does with the keys its own known-key cache knows, since a claim
// would find them held.
type KeyHolder interface {
	// HeldKeys answers each of qs, all under one lock (a caller asks for a
	// few dozen events at a time, so that the store's claims are not held
	// up for long). Its answers stay true for a while after it returns, so
	// that a claim made then may rely on them: they hold for any claim
	// made within margin of the store's clock.
	HeldKeys(qs []KeyQuery, margin time.Duration)
}

// KeyQuery asks a KeyHolder about one conversation's keys; HeldKeys sets
// Held and Quiet.
type KeyQuery struct {
	ConversationID string
	// Keys are the keys asked about (only the first 64 are).
	Keys []string
	// Held has bit j set when the store holds Keys[j] for the conversation
	// and will still hold it margin later (its retention does not run out
	// before): a claim of it within margin finds it held and counts
	// nothing. Keys are only ever added to a conversation, and a
	// conversation is only dropped once expired.
	Held uint64
	// Quiet: a request of the conversation made within margin that
	// brings only held keys changes nothing in the store (no path, or a
	// path closed, ended, or whose idle deadline moved less than a Step
	// before). A request that is not Quiet still needs to reach the store,
	// with one held key, so that the conversation's path hears of its
	// event.
	Quiet bool
}

// PendingError is Claim's report that some requests hold keys another
// writer claimed and has not yet delivered (see Store). Claim's occurrences
// are valid alongside it.
type PendingError struct {
	// Requests are indexes into the Claim call's requests, ascending.
	Requests []int
}

func (e *PendingError) Error() string {
	return fmt.Sprintf("%d claim requests hold keys pending under another writer", len(e.Requests))
}

// Bounds on one conversation's state, the same in every store, so that no
// input can make a conversation's state (and the time to claim in it) grow
// without bound, and a DynamoDB item (at most 400 KB) always holds it.
// Genesys conversation ids are UUIDs (36 bytes) and a flow sets a handful
// of metric attributes per conversation: the bounds are far beyond real
// traffic.
const (
	// MaxConversationID is the longest conversation id accepted.
	MaxConversationID = 256
	// MaxConversationKeys is the most metric attribute names one
	// conversation may hold.
	MaxConversationKeys = 512
	// MaxConversationBytes bounds the total length of the names one
	// conversation holds (a name is at most about 450 bytes).
	MaxConversationBytes = 160 << 10
)

// Reasons a store refuses a claim request (RefusedError), as the reason
// label of the counters that count them.
const (
	RefusedIDTooLong    = "conversation_id_too_long"
	RefusedConversation = "conversation_full"
	RefusedByStore      = "store_refused"
)

// Refusal is one claim request that can never succeed.
type Refusal struct {
	// Request is the index into the Claim call's requests.
	Request int
	// Reason is one of the Refused… constants.
	Reason string
	// Err says why, naming the conversation.
	Err error
}

// RefusedError is Claim's report that some requests can never be claimed:
// their conversation id is longer than MaxConversationID, their new keys
// would take the conversation past MaxConversationKeys or
// MaxConversationBytes, or the backend refuses them permanently (a
// DynamoDB validation error). A refused request claims nothing and is not
// in the outbox; retrying it is useless. The other requests are claimed
// and in the outbox exactly as with a nil error (Claim's occurrences are
// valid alongside it). It may be joined with a *PendingError.
type RefusedError struct {
	Refusals []Refusal // in request order
}

func (e *RefusedError) Error() string {
	if len(e.Refusals) == 1 {
		return "claim refused: " + e.Refusals[0].Err.Error()
	}
	return fmt.Sprintf("%d claim requests refused, first: %v", len(e.Refusals), e.Refusals[0].Err)
}

// Sink delivers points to one backend.
//
// Name is the durable key of the sink: the store keeps the sink's outbox
// cursor and its state (StatefulSink) under it, so it must not change
// between runs, and two sinks of one pipeline must not share it.
//
// Send returns nil once the backend has accepted every point. Any other error
// means the batch will be sent again later (after a jittered backoff), so a
// sink must not have partly applied it unless the backend tolerates the
// repeat; an error wrapped with Permanent means the batch can never succeed:
// it is counted and dropped, and delivery goes on with the next one. An
// error that also implements RetryAfterError says when trying again is of
// use. Send with no points sends nothing (a Holder may send what it holds).
//
// The pipeline never calls Send, Close or the methods of the optional
// interfaces below (StatefulSink, Holder) concurrently, so a sink needs no
// lock of its own for them; it only guards what other goroutines touch (an
// HTTP handler reading its data, a client's background sender). Close
// flushes anything buffered, honours the context's deadline and is safe to
// call twice; a Send after Close returns at once, without panicking (an
// error where it can no longer deliver).
type Sink interface {
	Name() string
	Send(ctx context.Context, points []Point) error
	Close(ctx context.Context) error
}

// PathSink is a Sink that also delivers the points derived from closed
// conversation paths. The pipeline calls SendPaths with a batch's path
// points after Send accepted its counts (and on its own for a batch that
// has only path points); the error rules are Send's, and a StatefulSink's
// state is taken once both are delivered. Sinks that are not PathSinks do
// not get path points.
type PathSink interface {
	Sink
	SendPaths(ctx context.Context, points []PathPoint) error
}

// RetryAfterError is an error of Send that knows when trying again can
// succeed (a refused API key, a rate limit). Where the caller would wait
// past its own deadline (Lambda's Flush), it gives up at once instead.
type RetryAfterError interface {
	error
	RetryAfter() time.Time
}

// StateUpdate changes a sink's durable state: each key is set to its value;
// a nil value deletes the key. Keys are at most MaxStateKey bytes and values
// at most MaxStateValue bytes; a sink keeps its whole state bounded by
// deleting what it no longer needs.
type StateUpdate map[string][]byte

// Limits on one key and one value of a sink's state, so that every store
// can keep them (a DynamoDB item holds at most 400 KB).
const (
	MaxStateKey   = 512
	MaxStateValue = 64 << 10
)

// CheckState reports the first key or value of u beyond the limits.
func CheckState(u StateUpdate) error {
	for k, v := range u {
		switch {
		case k == "":
			return errors.New("sink state: empty key")
		case len(k) > MaxStateKey:
			return fmt.Errorf("sink state: key of %d bytes (max %d)", len(k), MaxStateKey)
		case len(v) > MaxStateValue:
			return fmt.Errorf("sink state: value of key %q has %d bytes (max %d)", k, len(v), MaxStateValue)
		}
	}
	return nil
}

// StatefulSink is a Sink whose effect on its backend depends on state that
// must survive a restart in step with its outbox cursor: running totals that
// a backend overwrites, the offset a file was acknowledged up to, the end of
// the last window a stream sent. The pipeline keeps that state in the store
// and commits it in the same write that advances the sink's cursor, so after
// any crash the state describes exactly the batches the cursor says were
// delivered.
type StatefulSink interface {
	Sink
	// Restore hands the sink its state as last committed (an empty map the
	// first time). The pipeline calls it once, from Pipeline.Register,
	// before any Send.
	Restore(ctx context.Context, state map[string][]byte) error
	// TakeState returns, and forgets, the changes to the sink's state made
	// by Restore or the Sends since the last call. The pipeline calls it
	// once right after Restore and commits the result at the unchanged
	// cursor before any Send, then after each Send that returned nil or a
	// permanent error and commits the result with that batch's cursor
	// (Store.AckState). A failed commit is retried with the same update,
	// never by sending again.
	TakeState() StateUpdate
}

// Holder is a StatefulSink that holds the points it was sent until a time
// passes, in its state (the OTLP sink keeps each window open until its
// watermark). When the outbox has nothing new for it, the pipeline asks
// Due at each turn (every flush_interval) and, when it says so, calls Send
// with no points and commits TakeState at the unchanged cursor, so what
// the sink held is sent in time even when no new occurrence comes.
type Holder interface {
	StatefulSink
	// Due reports whether Send with no points would send something now.
	Due(now time.Time) bool
}

// permanentError marks an error that retrying cannot cure.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent wraps err to tell the pipeline that retrying the batch is useless.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err was wrapped by Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// BucketStart returns the start of the epoch-aligned bucket of width w that
// holds t, in UTC.
func BucketStart(t time.Time, w time.Duration) time.Time {
	if w <= 0 {
		return t.UTC()
	}
	if w%time.Second != 0 {
		// Sub-second widths: Truncate counts from year 1, which is a whole
		// number of seconds before the epoch, so this is epoch-aligned too
		// for widths dividing a second.
		return t.UTC().Truncate(w)
	}
	ws := int64(w / time.Second)
	sec := t.Unix()
	b := sec - sec%ws
	if sec%ws < 0 {
		b -= ws
	}
	return time.Unix(b, 0).UTC()
}
