package dynamostore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

const (
	attrID    = "id"
	attrTTL   = "ttl"
	keyPrefix = "k:"
	delivered = "d"

	// maxKeysPerWrite keeps an update expression far below DynamoDB's
	// limits (4 KB of expression, 300 operators and functions).
	maxKeysPerWrite = 50
	// maxAttempts bounds the retries of a claim that lost a race.
	maxAttempts = 8
)

// Defaults of Config.
const (
	DefaultLease       = 40 * time.Second
	DefaultMargin      = 10 * time.Second
	DefaultConcurrency = 16
)

// Config configures the store.
type Config struct {
	// Table is the table name (or ARN). It needs a string partition key
	// named "id"; TTL on the attribute "ttl" keeps it from growing.
	Table string
	// Lease is how long a claim stays reserved for this instance before
	// another may take it over; DefaultLease if zero. It must exceed the
	// time from a claim to its delivery (the Lambda function timeout), and
	// the input must be redelivered only after it (see the package doc).
	Lease time.Duration
	// Margin: an outbox entry is no longer handed to sinks once less than
	// Margin of its lease is left, so a send in progress ends before anyone
	// can take the claim over; DefaultMargin if zero.
	Margin time.Duration
	// ReadFirst makes a claim read the conversation (eventually consistent)
	// before writing, and write only when some key may be new.
	ReadFirst bool
	// Concurrency bounds the requests one Claim or Ack sends at once;
	// DefaultConcurrency if zero.
	Concurrency int
	// Owner names this instance in pending marks; random if empty. Two
	// running instances must never share it.
	Owner string
	// PathIndex is the global secondary index through which ClosePaths
	// finds due conversations (see paths.go); DefaultPathIndex if empty.
	PathIndex string
	// PathShards is how many partitions of the index the conversations
	// are spread over; DefaultPathShards if zero. A sweep queries each.
	PathShards int
	// IdleStep rounds idle deadlines up to a multiple of it, so that the
	// index entry of a conversation moves at most once per step however
	// many new keys it gets; if zero, DefaultIdleStep or a sixteenth of
	// the idle timeout, whichever is shorter. An idle path closes up to one
	// step after its idle timeout, never before.
	IdleStep time.Duration
}

// WithDefaults fills in the zero fields.
func (c Config) WithDefaults() Config {
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	if c.Margin == 0 {
		c.Margin = DefaultMargin
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.PathIndex == "" {
		c.PathIndex = DefaultPathIndex
	}
	if c.PathShards == 0 {
		c.PathShards = DefaultPathShards
	}
	if c.IdleStep == 0 {
		c.IdleStep = DefaultIdleStep
	}
	if c.Owner == "" {
		var b [6]byte
		rand.Read(b[:])
		c.Owner = hex.EncodeToString(b[:])
	}
	return c
}

// Validate checks the configuration without touching the network.
func (c Config) Validate() error {
	switch {
	case c.Table == "":
		return errors.New("dynamostore: table is required")
	case c.Lease < 0 || c.Margin < 0 || c.Concurrency < 0 || c.IdleStep < 0:
		return errors.New("dynamostore: lease, margin, concurrency and idle step must not be negative")
	case c.PathShards < 0 || c.PathShards > maxPathShards:
		return fmt.Errorf("dynamostore: path shards %d: want 1 to %d", c.PathShards, maxPathShards)
	case c.Lease != 0 && c.Margin >= c.Lease:
		return fmt.Errorf("dynamostore: margin %v must be shorter than lease %v", c.Margin, c.Lease)
	case strings.Contains(c.Owner, "@"):
		return fmt.Errorf("dynamostore: owner %q must not contain @", c.Owner)
	}
	return nil
}

// API is the part of the DynamoDB client the store uses; *dynamodb.Client
// satisfies it.
type API interface {
	GetItem(ctx context.Context, in *dynamodb.GetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.GetItemOutput, error)
	UpdateItem(ctx context.Context, in *dynamodb.UpdateItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.UpdateItemOutput, error)
	// TransactWriteItems and BatchGetItem serve the sinks' state (see
	// state.go): only a sink with state (Datadog count mode) uses them.
	TransactWriteItems(ctx context.Context, in *dynamodb.TransactWriteItemsInput, optFns ...func(*dynamodb.Options)) (*dynamodb.TransactWriteItemsOutput, error)
	BatchGetItem(ctx context.Context, in *dynamodb.BatchGetItemInput, optFns ...func(*dynamodb.Options)) (*dynamodb.BatchGetItemOutput, error)
	// Query serves ClosePaths: it reads the path index.
	Query(ctx context.Context, in *dynamodb.QueryInput, optFns ...func(*dynamodb.Options)) (*dynamodb.QueryOutput, error)
}

// Stats counts the requests the store sent and the capacity DynamoDB
// reported for them.
type Stats struct {
	GetItem    int64
	UpdateItem int64
	// TransactWriteItems and BatchGetItem count the requests of sink
	// state commits and loads.
	TransactWriteItems int64
	BatchGetItem       int64
	// Query counts the path index queries of ClosePaths.
	Query int64
	// ConditionalFailures are writes refused by their condition. DynamoDB
	// bills a refused write too, and does not report its capacity: each is
	// counted as one unit in WriteUnits.
	ConditionalFailures int64
	ReadUnits           float64
	WriteUnits          float64
	// Dropped counts outbox entries abandoned unsent because their lease
	// ran out; their events' redelivery claims them again.
	Dropped int64
	// PendingElsewhere counts claim requests reported in a
	// flowmetrics.PendingError: they held a key another instance claimed
	// under a live lease.
	PendingElsewhere int64
	// Refused counts claim requests reported in a
	// flowmetrics.RefusedError.
	Refused int64
}

// Store is a flowmetrics.Store on a DynamoDB table, with its outbox in
// memory.
type Store struct {
	api     API
	cfg     Config
	opts    store.Options
	log     *slog.Logger
	stripes store.Stripes

	statsMu sync.Mutex
	stats   Stats

	mu      sync.Mutex
	entries []*entry // in Seq order
	last    uint64
	cursors map[string]uint64
	// pending holds, per sink, the state updates acknowledged but not yet
	// committed: an update is committed with the delivered marks of the
	// entries up to its seq, once every sink has acknowledged them (see
	// state.go).
	pending map[string][]pendingState
	// dirs is this process's copy of each sink's state directory.
	dirs map[string]map[string]bool
	// local maps conversation and key to the entry of this instance that
	// holds the key's claim: in the outbox, or delivered and awaiting its
	// mark.
	local map[string]map[string]*entry
	// unmarked are entries every sink acknowledged whose keys are not yet
	// marked delivered.
	unmarked []*entry
	// closing maps a conversation whose path this instance closed, and
	// whose points are in the outbox or awaiting their mark, to the close
	// lease written (see paths.go).
	closing map[string]int64
	// unsent counts the entries dropped unsent (their lease ran out) since
	// the last Settle, which reports them.
	unsent int
	closed bool

	// commitMu serialises commits, so that a sink's state updates reach
	// DynamoDB in the order they were made.
	commitMu sync.Mutex
	// pairMu guards the cardinality guard's admitted pairs as this
	// instance has read them (pairs.go); pairsRead: read at least once.
	pairMu    sync.Mutex
	pairs     store.PairSet
	pairsRead bool
}

type entry struct {
	flowmetrics.Entry
	// deadline is when the entry stops being handed to sinks; zero when
	// its keys were written as delivered already.
	deadline time.Time
	convs    map[string][]string
	// closes are the conversations whose paths this entry's points come
	// from, with the close lease written for each.
	closes map[string]int64
	// acked: every sink delivered it; its keys await (or got) their mark.
	acked bool
}

// Open returns a store on the table. It does not touch the network: a
// missing table or permission shows up at the first Claim.
func Open(cfg Config, api API, opts store.Options, log *slog.Logger) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if api == nil {
		return nil, errors.New("dynamostore: no DynamoDB client")
	}
	if log == nil {
		log = slog.Default()
	}
	if cfg.IdleStep == 0 && opts.Paths != nil && opts.Paths.Idle > 0 {
		// At most a sixteenth of the idle timeout late.
		cfg.IdleStep = min(DefaultIdleStep, opts.Paths.Idle/16)
	}
	cfg = cfg.WithDefaults()
	return &Store{
		api: api, cfg: cfg, opts: opts.WithDefaults(),
		log:     log.With("component", "dynamostore", "table", cfg.Table),
		cursors: map[string]uint64{}, local: map[string]map[string]*entry{},
		pending: map[string][]pendingState{}, dirs: map[string]map[string]bool{},
		closing: map[string]int64{},
	}, nil
}

// Owner returns the name this instance writes into its pending marks.
func (s *Store) Owner() string { return s.cfg.Owner }

// Stats returns the counts so far.
func (s *Store) Stats() Stats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	return s.stats
}

var errClosed = errors.New("dynamostore: closed")

// Claim implements flowmetrics.Store. Conversations are claimed in parallel,
// each with one UpdateItem (more only above 50 keys, after an expiry, or to
// take over a claim whose lease ended). Claims of the same conversation in
// this process are serialised, so the outbox check of this instance's own
// pending keys is exact.
//
// A conversation that would pass the bounds of flowmetrics (keys and bytes
// per conversation), or that DynamoDB refuses for good (a
// ValidationException: an item over 400 KB, a key too long), is refused:
// what the call claimed in it is released again, and its requests are
// reported in a *flowmetrics.RefusedError while the other conversations of
// the batch are claimed as usual.
func (s *Store) Claim(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	closed, sinks := s.closed, len(s.cursors) > 0
	s.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	var refused store.Refusals
	defer func() {
		if n := refused.Len(); n > 0 {
			s.statsMu.Lock()
			s.stats.Refused += int64(n)
			s.statsMu.Unlock()
		}
	}()
	b := groupByConversation(reqs, s.opts.Paths != nil, &refused)
	if len(b.order) == 0 {
		return nil, refused.Err()
	}
	unlock := s.stripes.Lock(b.order)
	defer unlock()

	start := s.opts.Now()
	results, err := s.claimConversations(ctx, b, sinks)
	if err != nil {
		// Keys this call did claim stay pending under this instance's
		// lease with no entry holding them: the retry (here or anywhere
		// once the lease ends) claims them again.
		return nil, fmt.Errorf("dynamostore: %w", err)
	}
	out, convs, pe := b.collect(reqs, results, &refused)
	var perr error
	if pe != nil {
		s.statsMu.Lock()
		s.stats.PendingElsewhere += int64(len(pe.Requests))
		s.statsMu.Unlock()
		perr = pe
	}
	if rerr := refused.Err(); rerr != nil {
		perr = errors.Join(perr, rerr)
	}
	if len(out) == 0 {
		return nil, perr
	}
	s.enqueue(out, convs, start, sinks)
	return out, perr
}

// batch is one Claim call's requests grouped by conversation: each
// conversation's distinct keys, in first-seen order.
type batch struct {
	order []string
	keys  map[string][]string
	// ended are the conversations whose customer.end a request carries
	// (with paths on).
	ended map[string]bool
}

// groupByConversation groups the requests' keys by conversation. A request
// whose conversation id is too long, or whose keys alone pass the bounds of
// one conversation, is refused here, before any write. With paths, the
// ends are grouped too; without, a request that carries only an end is
// left out.
func groupByConversation(reqs []flowmetrics.ClaimRequest, paths bool, refused *store.Refusals) batch {
	b := batch{keys: map[string][]string{}, ended: map[string]bool{}}
	seen := map[string]map[string]bool{}
	add := func(id string) map[string]bool {
		m := seen[id]
		if m == nil {
			m = map[string]bool{}
			seen[id] = m
			b.order = append(b.order, id)
		}
		return m
	}
	for i, r := range reqs {
		if err := store.CheckID(r.ConversationID); err != nil {
			refused.Add(i, flowmetrics.RefusedIDTooLong, err)
			continue
		}
		if err := (store.Size{}).Plus(store.FilterNew(r.Occurrences, func(string) bool { return false })).Check(r.ConversationID); err != nil {
			refused.Add(i, flowmetrics.RefusedConversation, err)
			continue
		}
		if paths && r.Ended {
			add(r.ConversationID)
			b.ended[r.ConversationID] = true
		}
		for _, o := range r.Occurrences {
			m := add(r.ConversationID)
			if !m[o.Key] {
				m[o.Key] = true
				b.keys[r.ConversationID] = append(b.keys[r.ConversationID], o.Key)
			}
		}
	}
	return b
}

// convResult is what a claim did in one conversation: the keys it got as
// new, those pending under another instance's live lease, and, when the
// conversation was refused, why (nothing of it is then claimed).
type convResult struct {
	won, pend map[string]bool
	refused   *flowmetrics.Refusal
	// afterClose: the conversation's path had closed before the claim.
	afterClose bool
}

// claimConversations claims every conversation of b in parallel. Only a
// transient failure is returned as an error; a refusal is in the result.
func (s *Store) claimConversations(ctx context.Context, b batch, sinks bool) ([]convResult, error) {
	results := make([]convResult, len(b.order))
	err := s.parallel(ctx, len(b.order), func(ctx context.Context, i int) error {
		var err error
		id := b.order[i]
		if b.ended[id] {
			if err = s.markEnd(ctx, id); err != nil {
				return err
			}
		}
		results[i], err = s.claimConversation(ctx, id, b.keys[id], sinks)
		return err
	})
	return results, err
}

// collect turns the conversations' results into the new occurrences (in
// request order, each key once), the keys of each conversation that went
// into them, and the requests holding keys pending elsewhere; it adds the
// requests of refused conversations to refused.
func (b batch) collect(reqs []flowmetrics.ClaimRequest, results []convResult, refused *store.Refusals) (out []flowmetrics.Occurrence, convs map[string][]string, pe *flowmetrics.PendingError) {
	byConv := make(map[string]*convResult, len(b.order))
	convs = map[string][]string{}
	for i, id := range b.order {
		r := &results[i]
		byConv[id] = r
		for _, k := range b.keys[id] {
			if r.won[k] {
				convs[id] = append(convs[id], k)
			}
		}
	}
	emitted := map[string]map[string]bool{}
	for i, r := range reqs {
		res := byConv[r.ConversationID]
		if res == nil || refused.Has(i) {
			continue
		}
		if res.refused != nil {
			refused.Add(i, res.refused.Reason, res.refused.Err)
			continue
		}
		pending := false
		for _, o := range r.Occurrences {
			if res.pend[o.Key] {
				pending = true
			}
			if !res.won[o.Key] || emitted[r.ConversationID][o.Key] {
				continue
			}
			if emitted[r.ConversationID] == nil {
				emitted[r.ConversationID] = map[string]bool{}
			}
			emitted[r.ConversationID][o.Key] = true
			o.AfterClose = res.afterClose
			out = append(out, o)
		}
		if pending {
			if pe == nil {
				pe = &flowmetrics.PendingError{}
			}
			pe.Requests = append(pe.Requests, i)
		}
	}
	return out, convs, pe
}

// enqueue appends the outbox entry of one Claim call. With sinks, its keys
// are indexed as held by this instance until the entry's deadline.
func (s *Store) enqueue(out []flowmetrics.Occurrence, convs map[string][]string, start time.Time, sinks bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last++
	e := &entry{Entry: flowmetrics.Entry{Seq: s.last, Occurrences: out}, convs: convs}
	if sinks {
		e.deadline = start.Add(s.cfg.Lease - s.cfg.Margin)
		for id, ks := range convs {
			m := s.local[id]
			if m == nil {
				m = map[string]*entry{}
				s.local[id] = m
			}
			for _, k := range ks {
				m[k] = e
			}
		}
	}
	s.entries = append(s.entries, e)
}

// claimConversation claims keys of one conversation and returns those it
// got as new, and those pending under another instance's live lease. When
// the conversation would pass its bounds, or DynamoDB refuses a write for
// good, what it won is released and the result says why.
func (s *Store) claimConversation(ctx context.Context, id string, keys []string, sinks bool) (convResult, error) {
	res := convResult{won: map[string]bool{}, pend: map[string]bool{}}
	now := s.opts.Now()
	mine := delivered
	if sinks {
		mine = s.cfg.Owner + "@" + strconv.FormatInt(now.Add(s.cfg.Lease).UnixMilli(), 10)
	}
	var size store.Size
	for len(keys) > 0 {
		n := min(len(keys), maxKeysPerWrite)
		after, err := s.claimChunk(ctx, id, keys[:n], mine, now, &res)
		if err != nil {
			if !IsPermanent(err) {
				return convResult{}, err
			}
			res.refused = &flowmetrics.Refusal{Reason: flowmetrics.RefusedByStore, Err: err}
			break
		}
		if after.Keys > 0 {
			size = after
		}
		keys = keys[n:]
	}
	if res.refused == nil && len(res.won) > 0 {
		if err := size.Check(id); err != nil {
			res.refused = &flowmetrics.Refusal{Reason: flowmetrics.RefusedConversation, Err: err}
		}
	}
	if res.refused == nil {
		return res, nil
	}
	s.log.Warn("claim refused", "conversation", truncate(id), "reason", res.refused.Reason, "err", res.refused.Err)
	if err := s.release(ctx, id, res.won, mine); err != nil {
		return convResult{}, err
	}
	res.won = nil
	return res, nil
}

// release removes keys this call claimed in a conversation it then
// refused, provided they still hold its mark. If it fails, the claim fails
// as a whole and its retry claims the keys again (they are this instance's,
// with no entry holding them) and refuses them again.
func (s *Store) release(ctx context.Context, id string, won map[string]bool, mine string) error {
	keys := make([]string, 0, len(won))
	for k := range won {
		keys = append(keys, k)
	}
	for len(keys) > 0 {
		n := min(len(keys), maxKeysPerWrite)
		names := map[string]string{}
		ph := keyNames(keys[:n], "#k", names)
		var cond []string
		for _, p := range ph {
			cond = append(cond, p+" = :v")
		}
		_, err := s.updateItem(ctx, &dynamodb.UpdateItemInput{
			Key:                       s.key(id),
			UpdateExpression:          aws.String("REMOVE " + strings.Join(ph, ", ")),
			ConditionExpression:       aws.String(strings.Join(cond, " AND ")),
			ExpressionAttributeNames:  names,
			ExpressionAttributeValues: map[string]types.AttributeValue{":v": str(mine)},
		})
		if err != nil && !isConditionFailed(err) {
			return fmt.Errorf("conversation %q: release refused claim: %w", id, err)
		}
		keys = keys[n:]
	}
	return nil
}

// truncate shortens a conversation id for a log line.
func truncate(id string) string {
	if len(id) <= 64 {
		return id
	}
	return id[:64] + "…"
}

type takeover struct {
	key, old string
}

// claimChunk claims up to maxKeysPerWrite keys of one conversation. It
// returns the size of the conversation's item after its write (zero when
// it wrote nothing).
func (s *Store) claimChunk(ctx context.Context, id string, keys []string, mine string, now time.Time, res *convResult) (store.Size, error) {
	won, pend := res.won, res.pend
	if s.cfg.ReadFirst {
		var err error
		if keys, err = s.unknown(ctx, id, keys, now, pend); err != nil || len(keys) == 0 {
			return store.Size{}, err
		}
	}
	for attempt := 0; attempt < maxAttempts; attempt++ {
		raw, expired, err := s.update(ctx, id, keys, mine, now)
		if err != nil {
			return store.Size{}, err
		}
		old := strings_(raw)
		if expired {
			ok, err := s.reset(ctx, id, keys, mine, now)
			if err != nil {
				return store.Size{}, err
			}
			if ok {
				for _, k := range keys {
					won[k] = true
				}
				return sizeOf(keys), nil
			}
			continue
		}
		size := itemSize(old)
		var take []takeover
		for _, k := range keys {
			v, present := old[keyPrefix+k]
			switch st := s.state(id, k, v, present, now); st {
			case stateNew:
				size.Keys++
				size.Bytes += len(k)
				won[k] = true
			case stateKnown:
			case statePendingElsewhere:
				pend[k] = true
			case stateTake:
				take = append(take, takeover{k, v})
			}
		}
		if s.opts.Paths != nil {
			if _, ok := raw[attrClose]; ok {
				res.afterClose = true
			}
		}
		if len(take) == 0 {
			return size, nil
		}
		ok, err := s.takeOver(ctx, id, take, mine, now)
		if err != nil {
			return store.Size{}, err
		}
		if ok {
			for _, t := range take {
				won[t.key] = true
			}
			return size, nil
		}
		// Someone else changed one of them first: look again.
		keys = keys[:0:0]
		for _, t := range take {
			keys = append(keys, t.key)
		}
	}
	return store.Size{}, fmt.Errorf("conversation %q: still contended after %d attempts", id, maxAttempts)
}

// itemSize is the size of the conversation an item (as strings_ returns
// it) holds.
func itemSize(item map[string]string) store.Size {
	var size store.Size
	for a := range item {
		if k, ok := strings.CutPrefix(a, keyPrefix); ok {
			size.Keys++
			size.Bytes += len(k)
		}
	}
	return size
}

func sizeOf(keys []string) store.Size {
	size := store.Size{Keys: len(keys)}
	for _, k := range keys {
		size.Bytes += len(k)
	}
	return size
}

type keyState int

const (
	stateNew keyState = iota
	stateKnown
	stateTake
	// statePendingElsewhere: another instance holds the claim under a live
	// lease. Not new here, and not yet safe to acknowledge: that instance
	// may die before it delivers.
	statePendingElsewhere
)

// state decides what a key's old attribute means for this claim.
func (s *Store) state(id, key string, v string, present bool, now time.Time) keyState {
	if !present {
		return stateNew
	}
	if v == delivered {
		return stateKnown
	}
	owner, lease, ok := parsePending(v)
	if !ok {
		s.log.Warn("unreadable claim mark; treating the key as known", "conversation", id, "value", v)
		return stateKnown
	}
	if owner == s.cfg.Owner {
		if s.liveLocally(id, key, now) {
			return stateKnown
		}
		// Ours, but no live entry holds it: a claim that failed half-way,
		// or an entry whose lease ran out.
		return stateTake
	}
	if lease.After(now) {
		return statePendingElsewhere
	}
	return stateTake
}

func parsePending(v string) (owner string, lease time.Time, ok bool) {
	i := strings.LastIndexByte(v, '@')
	if i < 0 {
		return "", time.Time{}, false
	}
	ms, err := strconv.ParseInt(v[i+1:], 10, 64)
	if err != nil {
		return "", time.Time{}, false
	}
	return v[:i], time.UnixMilli(ms), true
}

// liveLocally reports whether an entry of this instance that can still be
// delivered (or has been) holds the key.
func (s *Store) liveLocally(id, key string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.local[id][key]
	return e != nil && (e.deadline.IsZero() || e.acked || now.Before(e.deadline))
}

func keyNames(keys []string, prefix string, names map[string]string) []string {
	ph := make([]string, len(keys))
	for i, k := range keys {
		ph[i] = prefix + strconv.Itoa(i)
		names[ph[i]] = keyPrefix + k
	}
	return ph
}

func (s *Store) ttl(now time.Time) types.AttributeValue {
	return num(now.Add(s.opts.Retention).Unix())
}

func num(n int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(n, 10)}
}

func str(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }

func (s *Store) key(id string) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{attrID: str(convItemID(id))}
}

// update is the claim write. expired reports that the item exists but its
// retention has passed.
func (s *Store) update(ctx context.Context, id string, keys []string, mine string, now time.Time) (old map[string]types.AttributeValue, expired bool, err error) {
	names := map[string]string{"#t": attrTTL}
	values := map[string]types.AttributeValue{
		":t": s.ttl(now), ":v": str(mine), ":now": num(now.Unix()),
	}
	var b strings.Builder
	b.WriteString("SET #t = :t")
	s.setIdleDue(&b, id, now, false, names, values)
	for _, p := range keyNames(keys, "#k", names) {
		fmt.Fprintf(&b, ", %s = if_not_exists(%s, :v)", p, p)
	}
	out, err := s.updateItem(ctx, &dynamodb.UpdateItemInput{
		Key:                       s.key(id),
		UpdateExpression:          aws.String(b.String()),
		ConditionExpression:       aws.String("attribute_not_exists(#t) OR #t > :now"),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: values,
		ReturnValues:              types.ReturnValueAllOld,
	})
	if isConditionFailed(err) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("conversation %q: %w", id, err)
	}
	return out.Attributes, false, nil
}

// reset replaces an expired item by one holding only keys, all claimed by
// this call. It reports false when the item changed meanwhile.
func (s *Store) reset(ctx context.Context, id string, keys []string, mine string, now time.Time) (bool, error) {
	got, err := s.getItem(ctx, &dynamodb.GetItemInput{Key: s.key(id), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return false, fmt.Errorf("conversation %q: %w", id, err)
	}
	oldTTL, ok := got.Item[attrTTL].(*types.AttributeValueMemberN)
	if !ok {
		return false, nil // gone (TTL deleted it): claim it afresh
	}
	if t, err := strconv.ParseInt(oldTTL.Value, 10, 64); err != nil || t > now.Unix() {
		return false, nil
	}
	names := map[string]string{"#t": attrTTL}
	values := map[string]types.AttributeValue{":t": s.ttl(now), ":v": str(mine), ":old": oldTTL}
	var b strings.Builder
	b.WriteString("SET #t = :t")
	s.setIdleDue(&b, id, now, true, names, values)
	for _, p := range keyNames(keys, "#k", names) {
		fmt.Fprintf(&b, ", %s = :v", p)
	}
	want := map[string]bool{}
	for _, k := range keys {
		want[keyPrefix+k] = true
	}
	var stale []string
	for a := range got.Item {
		if strings.HasPrefix(a, keyPrefix) && !want[a] {
			stale = append(stale, strings.TrimPrefix(a, keyPrefix))
		}
	}
	remove := keyNames(stale, "#r", names)
	// A new lifetime: the old path's end and close go with the old keys.
	for _, a := range []string{attrEnd, attrClose, attrNonce} {
		if _, ok := got.Item[a]; ok {
			names["#"+a] = a
			remove = append(remove, "#"+a)
		}
	}
	if len(remove) > 0 {
		b.WriteString(" REMOVE ")
		b.WriteString(strings.Join(remove, ", "))
	}
	_, err = s.updateItem(ctx, &dynamodb.UpdateItemInput{
		Key:                       s.key(id),
		UpdateExpression:          aws.String(b.String()),
		ConditionExpression:       aws.String("#t = :old"),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: values,
	})
	if isConditionFailed(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("conversation %q: reset expired: %w", id, err)
	}
	return true, nil
}

// takeOver claims keys whose claim lease ended, provided nobody changed them
// since they were read. It reports false when someone did.
func (s *Store) takeOver(ctx context.Context, id string, take []takeover, mine string, now time.Time) (bool, error) {
	names := map[string]string{"#t": attrTTL}
	values := map[string]types.AttributeValue{":t": s.ttl(now), ":v": str(mine), ":now": num(now.Unix())}
	var set, cond strings.Builder
	set.WriteString("SET #t = :t")
	cond.WriteString("#t > :now")
	for i, t := range take {
		p, o := "#k"+strconv.Itoa(i), ":o"+strconv.Itoa(i)
		names[p] = keyPrefix + t.key
		values[o] = str(t.old)
		fmt.Fprintf(&set, ", %s = :v", p)
		fmt.Fprintf(&cond, " AND %s = %s", p, o)
	}
	_, err := s.updateItem(ctx, &dynamodb.UpdateItemInput{
		Key:                       s.key(id),
		UpdateExpression:          aws.String(set.String()),
		ConditionExpression:       aws.String(cond.String()),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: values,
	})
	if isConditionFailed(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("conversation %q: take over: %w", id, err)
	}
	return true, nil
}

// unknown reads the keys (eventually consistent) and returns those that may
// be new; it adds those pending under another instance's live lease to
// pend. A stale read errs only towards writing, or towards a retry of a key
// that was in fact delivered meanwhile.
func (s *Store) unknown(ctx context.Context, id string, keys []string, now time.Time, pend map[string]bool) ([]string, error) {
	names := map[string]string{"#t": attrTTL}
	proj := append([]string{"#t"}, keyNames(keys, "#k", names)...)
	if s.opts.Paths != nil {
		names["#pb"], names["#pe"] = attrDue, attrEnd
		proj = append(proj, "#pb", "#pe")
	}
	got, err := s.getItem(ctx, &dynamodb.GetItemInput{
		Key:                      s.key(id),
		ProjectionExpression:     aws.String(strings.Join(proj, ", ")),
		ExpressionAttributeNames: names,
	})
	if err != nil {
		return nil, fmt.Errorf("conversation %q: %w", id, err)
	}
	t, ok := got.Item[attrTTL].(*types.AttributeValueMemberN)
	if !ok {
		return keys, nil
	}
	if n, err := strconv.ParseInt(t.Value, 10, 64); err != nil || n <= now.Unix() {
		return keys, nil
	}
	item := strings_(got.Item)
	var out []string
	for _, k := range keys {
		v, present := item[keyPrefix+k]
		switch s.state(id, k, v, present, now) {
		case stateKnown:
		case statePendingElsewhere:
			pend[k] = true
		default:
			out = append(out, k)
		}
	}
	if len(out) == 0 && s.opts.Paths != nil {
		// Nothing to write, but the event still keeps its path open.
		if err := s.touch(ctx, id, got.Item, now); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// markDelivered sets the keys of delivered entries to "d", one UpdateItem
// per conversation (and 50 keys).
func (s *Store) markDelivered(ctx context.Context, es []*entry) error {
	jobs := markJobs(es)
	return s.parallel(ctx, len(jobs), func(ctx context.Context, i int) error {
		update, cond, names, values := jobs[i].write()
		_, err := s.updateItem(ctx, &dynamodb.UpdateItemInput{
			Key:                       s.key(jobs[i].id),
			UpdateExpression:          aws.String(update),
			ConditionExpression:       aws.String(cond),
			ExpressionAttributeNames:  names,
			ExpressionAttributeValues: values,
		})
		if isConditionFailed(err) {
			// The item expired and is gone, or another instance took
			// the close over: nothing to mark.
			return nil
		}
		if err != nil {
			return fmt.Errorf("mark delivered: conversation %q: %w", jobs[i].id, err)
		}
		return nil
	})
}

func strings_(item map[string]types.AttributeValue) map[string]string {
	out := make(map[string]string, len(item))
	for k, v := range item {
		if sv, ok := v.(*types.AttributeValueMemberS); ok {
			out[k] = sv.Value
		}
	}
	return out
}

func isConditionFailed(err error) bool {
	var ccf *types.ConditionalCheckFailedException
	return errors.As(err, &ccf)
}

func (s *Store) updateItem(ctx context.Context, in *dynamodb.UpdateItemInput) (*dynamodb.UpdateItemOutput, error) {
	in.TableName = aws.String(s.cfg.Table)
	in.ReturnConsumedCapacity = types.ReturnConsumedCapacityTotal
	out, err := s.api.UpdateItem(ctx, in)
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	s.stats.UpdateItem++
	switch {
	case isConditionFailed(err):
		s.stats.ConditionalFailures++
		s.stats.WriteUnits++
	case err == nil && out.ConsumedCapacity != nil && out.ConsumedCapacity.CapacityUnits != nil:
		s.stats.WriteUnits += *out.ConsumedCapacity.CapacityUnits
	}
	return out, err
}

func (s *Store) getItem(ctx context.Context, in *dynamodb.GetItemInput) (*dynamodb.GetItemOutput, error) {
	in.TableName = aws.String(s.cfg.Table)
	in.ReturnConsumedCapacity = types.ReturnConsumedCapacityTotal
	out, err := s.api.GetItem(ctx, in)
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	s.stats.GetItem++
	if err == nil && out.ConsumedCapacity != nil && out.ConsumedCapacity.CapacityUnits != nil {
		s.stats.ReadUnits += *out.ConsumedCapacity.CapacityUnits
	}
	return out, err
}

// parallel runs fn for 0..n-1 with at most Concurrency at once and returns
// the first error; the others are cancelled.
func (s *Store) parallel(ctx context.Context, n int, fn func(ctx context.Context, i int) error) error {
	if n == 1 {
		return fn(ctx, 0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, s.cfg.Concurrency)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			if err := fn(ctx, i); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}(i)
	}
	wg.Wait()
	return first
}

// ReadOutbox implements flowmetrics.Store. Entries whose lease is about to
// end are dropped, not returned.
func (s *Store) ReadOutbox(ctx context.Context, after uint64, limit int) ([]flowmetrics.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropExpiredLocked()
	var out []flowmetrics.Entry
	for _, e := range s.entries {
		if e.Seq <= after {
			continue
		}
		if len(out) >= limit {
			break
		}
		out = append(out, e.Entry)
	}
	return out, nil
}

// Holds implements flowmetrics.Leaser: the pipeline asks before each send
// of a batch, so a batch read before its entries were dropped (a send that
// failed, held for a retry) is never sent after they were, when a
// redelivered event or a sweep may already have claimed or closed the same
// keys again. The entries whose lease runs short are dropped first, as
// ReadOutbox does.
func (s *Store) Holds(after, last uint64, n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropExpiredLocked()
	held := 0
	for _, e := range s.entries {
		if e.Seq <= after {
			continue
		}
		if e.Seq > last {
			break
		}
		held++
	}
	return held == n
}

func (s *Store) dropExpiredLocked() {
	now := s.opts.Now()
	kept := s.entries[:0]
	var dropped, occs int
	for _, e := range s.entries {
		if !e.deadline.IsZero() && !now.Before(e.deadline) {
			s.forgetLocked(e)
			dropped++
			occs += len(e.Occurrences)
			continue
		}
		kept = append(kept, e)
	}
	clear(s.entries[len(kept):])
	s.entries = kept
	if dropped > 0 {
		s.unsent += dropped
		s.statsMu.Lock()
		s.stats.Dropped += int64(dropped)
		s.statsMu.Unlock()
		s.log.Warn("outbox entries not delivered within their claim lease were dropped; their events' redelivery claims them again",
			"entries", dropped, "occurrences", occs, "lease", s.cfg.Lease)
	}
}

// forgetLocked removes e's keys from the local index.
func (s *Store) forgetLocked(e *entry) {
	for id, lease := range e.closes {
		if s.closing[id] == lease {
			delete(s.closing, id)
		}
	}
	for id, ks := range e.convs {
		m := s.local[id]
		for _, k := range ks {
			if m[k] == e {
				delete(m, k)
			}
		}
		if len(m) == 0 {
			delete(s.local, id)
		}
	}
}

// Cursor implements flowmetrics.Store.
func (s *Store) Cursor(ctx context.Context, sink string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cursors[sink], nil
}

// Register implements flowmetrics.Store.
func (s *Store) Register(ctx context.Context, sinks []string) error {
	s.mu.Lock()
	next := map[string]uint64{}
	for _, name := range sinks {
		c, ok := s.cursors[name]
		if !ok {
			c = s.last
		}
		next[name] = c
	}
	var gone []string
	for name := range s.cursors {
		if _, ok := next[name]; !ok {
			gone = append(gone, name)
			delete(s.pending, name)
		}
	}
	s.cursors = next
	s.mu.Unlock()
	// A sink no longer registered loses its state.
	for _, name := range gone {
		if err := s.dropState(ctx, name); err != nil {
			return err
		}
	}
	return s.commit(ctx)
}

// AckState implements flowmetrics.Store. The cursors and the outbox live in
// this process's memory; what is durable is the delivered marks of the
// entries every sink acknowledged, and the update becomes durable with them:
// it is committed in the same TransactWriteItems as the marks of the entries
// up to seq, once every sink has acknowledged those (see state.go). Until
// then SinkState shows it, and a crash loses both, so the entries' events
// are redelivered and resent from the state committed before. If writing
// the marks fails, AckState returns the error and the next AckState (or
// Settle, or Close) tries again.
func (s *Store) AckState(ctx context.Context, sink string, seq uint64, update flowmetrics.StateUpdate) error {
	if err := flowmetrics.CheckState(update); err != nil {
		return fmt.Errorf("dynamostore: ack %s: %w", sink, err)
	}
	s.mu.Lock()
	c, ok := s.cursors[sink]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("dynamostore: ack from unregistered sink %q", sink)
	}
	if seq > c {
		s.cursors[sink] = seq
	}
	if len(update) > 0 {
		ps := s.pending[sink]
		size := 0
		for _, p := range ps {
			size += p.size
		}
		if len(ps) >= maxPendingUpdates || size >= maxPendingBytes {
			s.mu.Unlock()
			// Another sink has not acknowledged for a long time (it is
			// failing, and so are the invocations): refuse rather than
			// hold ever more updates in memory. The pipeline retries.
			return fmt.Errorf("dynamostore: ack %s: %d state updates (%d bytes) already wait for the other sinks' acknowledgements", sink, len(ps), size)
		}
		u := make(flowmetrics.StateUpdate, len(update))
		n := 0
		for k, v := range update {
			u[k] = bytes.Clone(v)
			n += len(k) + len(v)
		}
		s.pending[sink] = append(ps, pendingState{seq: max(seq, c), update: u, size: n})
	}
	s.mu.Unlock()
	return s.commit(ctx)
}

// discardLocked moves the entries no sink still needs out of the outbox and
// returns those (with any earlier ones) whose keys still need their mark.
func (s *Store) discardLocked() []*entry {
	m, ok := store.MinCursor(s.cursors)
	if !ok {
		m = s.last
	}
	i := 0
	for i < len(s.entries) && s.entries[i].Seq <= m {
		e := s.entries[i]
		if e.deadline.IsZero() {
			s.forgetLocked(e)
		} else {
			e.acked = true
			s.unmarked = append(s.unmarked, e)
		}
		i++
	}
	clear(s.entries[:i])
	s.entries = s.entries[i:]
	todo := s.unmarked
	s.unmarked = nil
	return todo
}

// Settle writes the delivered marks that an earlier Ack could not write. A
// caller that acknowledges its input after delivery (the Lambda handlers)
// calls it after flushing, so an occurrence delivered is also marked before
// its event is acknowledged; otherwise a later event carrying the key could
// take the claim over once its lease ends and count it again.
//
// Settle also reports, with an error wrapping ErrUnsent, outbox entries
// dropped unsent since the last call because their lease ran out: a flush
// that returned nil did not deliver them, so the caller must not
// acknowledge the events that carried them (their redelivery claims the
// keys again once the lease has ended).
func (s *Store) Settle(ctx context.Context) error {
	err := s.commit(ctx)
	s.mu.Lock()
	s.dropExpiredLocked()
	n := s.unsent
	s.unsent = 0
	s.mu.Unlock()
	if n > 0 {
		return errors.Join(err, fmt.Errorf("%w: %d outbox entries", ErrUnsent, n))
	}
	return err
}

// ErrUnsent is Settle's report that entries were dropped unsent.
var ErrUnsent = errors.New("dynamostore: claims not delivered within their lease")

// OutboxDepth implements flowmetrics.Store.
func (s *Store) OutboxDepth(ctx context.Context, sink string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropExpiredLocked()
	c := s.cursors[sink]
	var n int64
	for _, e := range s.entries {
		if e.Seq > c {
			n += int64(len(e.Occurrences) + len(e.Paths))
		}
	}
	return n, nil
}

// Close marks what was delivered and not yet marked (within five seconds)
// and releases the store; it is safe to call twice. Entries still in the
// outbox are abandoned: their claims are taken over once their lease ends.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.commit(ctx)
}

var (
	_ flowmetrics.Settler = (*Store)(nil)
	_ flowmetrics.Leaser  = (*Store)(nil)
)
