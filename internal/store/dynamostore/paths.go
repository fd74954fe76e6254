package dynamostore

import (
	"context"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// The path attributes of a conversation's item (see the package doc).
const (
	attrShard = "ps" // S: the index partition, from a hash of the id
	attrDue   = "pb" // N: epoch ms at or after which the path is due (index sort key)
	attrEnd   = "pe" // N: epoch ms of the first customer.end plus the grace
	attrClose = "pc" // N: the close's lease end in epoch ms; 0 once its points are delivered
	// attrNonce was written by each claim of earlier versions (so that a
	// claim could undo its own move of pb); a reset removes it.
	attrNonce = "pn"
)

// Defaults of the path index.
const (
	DefaultPathIndex  = "paths"
	DefaultPathShards = 16
	DefaultIdleStep   = 15 * time.Minute
	maxPathShards     = 256
)

// never is the end time of a closed path: a claim or an end writes
// "pb = if_not_exists(pe, …)", so after a close they can only write never,
// a due time no sweep reaches. The close's mark removes pb (one index
// write); a late key or end puts the item back under never (one more).
const never = int64(1) << 53

func (s *Store) shard(id string) string {
	h := fnv.New32a()
	h.Write([]byte(id))
	return strconv.Itoa(int(h.Sum32() % uint32(s.cfg.PathShards)))
}

// idleDue is the idle deadline of a claim at now, rounded up to IdleStep.
func (s *Store) idleDue(now time.Time) int64 {
	ms := now.Add(s.opts.Paths.Idle).UnixMilli()
	step := s.cfg.IdleStep.Milliseconds()
	if step > 1 {
		ms = (ms + step - 1) / step * step
	}
	return ms
}

// setIdleDue adds to a claim's SET clause the path index attributes: the
// shard, and the idle deadline unless the conversation ended (then the
// deadline is its end's, which is also what a closed path keeps: never).
// A claim is an event of the conversation, new keys or not, so it
// postpones the idle close. A reset (the conversation starts over) sets
// the idle deadline whatever the old item held.
func (s *Store) setIdleDue(b *strings.Builder, id string, now time.Time, reset bool, names map[string]string, values map[string]types.AttributeValue) {
	if s.opts.Paths == nil {
		return
	}
	names["#ps"], names["#pb"] = attrShard, attrDue
	values[":ps"], values[":pb"] = str(s.shard(id)), num(s.idleDue(now))
	if reset {
		b.WriteString(", #ps = :ps, #pb = :pb")
		return
	}
	names["#pe"] = attrEnd
	b.WriteString(", #ps = :ps, #pb = if_not_exists(#pe, :pb)")
}

// PathTouch is how often the store needs to hear of a conversation whose
// events bring only known keys to keep its path open: its IdleStep, since
// deadlines are rounded up to it (pipeline.Config.PathTouch).
func (s *Store) PathTouch() time.Duration { return s.cfg.IdleStep }

// touch postpones the idle close of a conversation whose claim brought only
// known keys and so wrote nothing (ReadFirst): item is what the claim read
// (its pb and pe). It writes only when the rounded deadline moves, which is
// at most once per IdleStep, and never an ended or closed path's (pe), nor
// a deadline back.
func (s *Store) touch(ctx context.Context, id string, item map[string]types.AttributeValue, now time.Time) error {
	if _, ended := item[attrEnd]; ended {
		return nil
	}
	due := s.idleDue(now)
	prev, ok := item[attrDue].(*types.AttributeValueMemberN)
	if !ok {
		return nil // delivered and no longer indexed, or not a path of this store's
	}
	if n, err := strconv.ParseInt(prev.Value, 10, 64); err == nil && n >= due {
		return nil
	}
	_, err := s.updateItem(ctx, &dynamodb.UpdateItemInput{
		Key:                       s.key(id),
		UpdateExpression:          aws.String("SET #pb = :pb"),
		ConditionExpression:       aws.String("attribute_exists(#pb) AND attribute_not_exists(#pe) AND #pb < :pb"),
		ExpressionAttributeNames:  map[string]string{"#pb": attrDue, "#pe": attrEnd},
		ExpressionAttributeValues: map[string]types.AttributeValue{":pb": num(due)},
	})
	if err != nil && !isConditionFailed(err) {
		return fmt.Errorf("conversation %q: postpone the idle close: %w", id, err)
	}
	return nil
}

// markEnd records a conversation's customer.end: the first one sets the
// deadline to now plus the grace, later ones keep it, and a closed path
// keeps its "never".
func (s *Store) markEnd(ctx context.Context, id string) error {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		now := s.opts.Now()
		_, err := s.updateItem(ctx, &dynamodb.UpdateItemInput{
			Key:                      s.key(id),
			UpdateExpression:         aws.String("SET #t = :t, #ps = :ps, #pe = if_not_exists(#pe, :e), #pb = if_not_exists(#pe, :e)"),
			ConditionExpression:      aws.String("attribute_not_exists(#t) OR #t > :now"),
			ExpressionAttributeNames: map[string]string{"#t": attrTTL, "#ps": attrShard, "#pe": attrEnd, "#pb": attrDue},
			ExpressionAttributeValues: map[string]types.AttributeValue{
				":t": s.ttl(now), ":ps": str(s.shard(id)), ":now": num(now.Unix()),
				":e": num(now.Add(s.opts.Paths.Grace).UnixMilli()),
			},
		})
		if err == nil {
			return nil
		}
		if !isConditionFailed(err) {
			return fmt.Errorf("conversation %q: end: %w", id, err)
		}
		// Expired: the conversation starts over, and this end is its first.
		if _, err := s.reset(ctx, id, nil, delivered, now); err != nil {
			return err
		}
	}
	return fmt.Errorf("conversation %q: end: still contended after %d attempts", id, maxAttempts)
}

// ClosePaths implements flowmetrics.Store. Due conversations are found by
// querying each shard of the path index for a due time at or before asOf,
// oldest first; never by a scan. Each is closed by one conditional
// UpdateItem (due, not closed or its close's lease ended, not expired)
// that returns the item, so exactly one of any number of concurrent
// closers gets it. The points go into one outbox entry; the close stays
// pending under this instance's lease until every sink acknowledged them,
// and then is marked delivered, exactly like a claim's keys: if this
// instance dies first, the lease ends and the next sweep closes the path
// again.
func (s *Store) ClosePaths(ctx context.Context, asOf time.Time, limit int, derive flowmetrics.Deriver) (int, error) {
	if s.opts.Paths == nil {
		return 0, fmt.Errorf("dynamostore: %w", flowmetrics.ErrPathsUnsupported)
	}
	if limit <= 0 {
		limit = store.ClosePathsLimit
	}
	ids, err := s.due(ctx, asOf, limit)
	if err != nil {
		return 0, fmt.Errorf("dynamostore: close paths: %w", err)
	}
	return s.closePaths(ctx, ids, asOf, derive)
}

// ClosePathsOf implements flowmetrics.PathCloser: the handler of the
// delayed customer.end messages calls it. Conversation ids that are not
// valid are left out.
func (s *Store) ClosePathsOf(ctx context.Context, ids []string, asOf time.Time, derive flowmetrics.Deriver) (int, error) {
	if s.opts.Paths == nil {
		return 0, fmt.Errorf("dynamostore: %w", flowmetrics.ErrPathsUnsupported)
	}
	seen := map[string]bool{}
	var todo []string
	s.mu.Lock()
	for _, id := range ids {
		// A close this instance holds (its points in the outbox, or
		// delivered and awaiting their mark) is not closed again, even
		// once its lease has ended: as in due.
		if _, mine := s.closing[id]; mine {
			continue
		}
		if store.CheckID(id) == nil && !seen[id] {
			seen[id] = true
			todo = append(todo, id)
		}
	}
	s.mu.Unlock()
	return s.closePaths(ctx, todo, asOf, derive)
}

type candidate struct {
	id  string
	due int64
}

// due returns up to limit conversations the index says are due at asOf,
// oldest first, leaving out those whose close this instance holds.
func (s *Store) due(ctx context.Context, asOf time.Time, limit int) ([]string, error) {
	shards := make([][]candidate, s.cfg.PathShards)
	err := s.parallel(ctx, s.cfg.PathShards, func(ctx context.Context, i int) error {
		var err error
		shards[i], err = s.queryShard(ctx, strconv.Itoa(i), asOf.UnixMilli(), limit)
		return err
	})
	if err != nil {
		return nil, err
	}
	var all []candidate
	for _, c := range shards {
		all = append(all, c...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].due < all[j].due })
	ids := make([]string, 0, min(limit, len(all)))
	for _, c := range all[:min(limit, len(all))] {
		ids = append(ids, c.id)
	}
	return ids, nil
}

func (s *Store) queryShard(ctx context.Context, shard string, asOf int64, limit int) ([]candidate, error) {
	var out []candidate
	var start map[string]types.AttributeValue
	for {
		in := &dynamodb.QueryInput{
			TableName:                 aws.String(s.cfg.Table),
			IndexName:                 aws.String(s.cfg.PathIndex),
			KeyConditionExpression:    aws.String("#ps = :ps AND #pb <= :asOf"),
			ExpressionAttributeNames:  map[string]string{"#ps": attrShard, "#pb": attrDue},
			ExpressionAttributeValues: map[string]types.AttributeValue{":ps": str(shard), ":asOf": num(asOf)},
			Limit:                     aws.Int32(int32(min(limit, 1000))),
			ExclusiveStartKey:         start,
			ReturnConsumedCapacity:    types.ReturnConsumedCapacityTotal,
		}
		res, err := s.api.Query(ctx, in)
		s.statsMu.Lock()
		s.stats.Query++
		if err == nil && res.ConsumedCapacity != nil && res.ConsumedCapacity.CapacityUnits != nil {
			s.stats.ReadUnits += *res.ConsumedCapacity.CapacityUnits
		}
		s.statsMu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("query index %s: %w", s.cfg.PathIndex, err)
		}
		s.mu.Lock()
		for _, item := range res.Items {
			id, ok := item[attrID].(*types.AttributeValueMemberS)
			due, ok2 := item[attrDue].(*types.AttributeValueMemberN)
			if !ok || !ok2 {
				continue
			}
			conv := convIDOf(id.Value)
			if _, mine := s.closing[conv]; mine {
				continue
			}
			n, _ := strconv.ParseInt(due.Value, 10, 64)
			out = append(out, candidate{conv, n})
		}
		s.mu.Unlock()
		if len(out) >= limit || len(res.LastEvaluatedKey) == 0 {
			return out, nil
		}
		start = res.LastEvaluatedKey
	}
}

// closed is one path a call closed.
type closed struct {
	path  flowmetrics.ClosedPath
	lease int64
}

// closePaths closes the given conversations where they are due, derives
// their points and puts them in one outbox entry.
func (s *Store) closePaths(ctx context.Context, ids []string, asOf time.Time, derive flowmetrics.Deriver) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	isClosed, sinks := s.closed, len(s.cursors) > 0
	s.mu.Unlock()
	if isClosed {
		return 0, errClosed
	}
	unlock := s.stripes.Lock(ids)
	defer unlock()
	now := s.opts.Now()
	lease := now.Add(s.cfg.Lease).UnixMilli()
	got := make([]*closed, len(ids))
	err := s.parallel(ctx, len(ids), func(ctx context.Context, i int) error {
		var err error
		got[i], err = s.closeOne(ctx, ids[i], asOf, now, lease, sinks)
		return err
	})
	if err != nil {
		// The closes that succeeded stay pending under this instance's
		// lease with no entry holding them: a sweep after the lease
		// closes them again.
		return 0, fmt.Errorf("dynamostore: close paths: %w", err)
	}
	e := &entry{closes: map[string]int64{}}
	n := 0
	for _, c := range got {
		if c == nil {
			continue
		}
		n++
		e.Paths = append(e.Paths, derive(c.path)...)
		if sinks {
			e.closes[c.path.ConversationID] = c.lease
		}
	}
	if n == 0 {
		return 0, nil
	}
	if sinks && len(e.Paths) == 0 {
		// Nothing to deliver: mark the closes delivered now.
		if err := s.markDelivered(ctx, []*entry{e}); err != nil {
			return 0, fmt.Errorf("dynamostore: close paths: %w", err)
		}
		return n, nil
	}
	if len(e.Paths) == 0 {
		return n, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last++
	e.Seq = s.last
	if sinks {
		e.deadline = now.Add(s.cfg.Lease - s.cfg.Margin)
		for id, l := range e.closes {
			s.closing[id] = l
		}
	}
	s.entries = append(s.entries, e)
	return n, nil
}

// closeOne is the close of one conversation: nil when it is not due, not
// there, or closed (or being closed under a live lease) already. Without
// sinks the close is written as delivered.
func (s *Store) closeOne(ctx context.Context, id string, asOf, now time.Time, lease int64, sinks bool) (*closed, error) {
	names := map[string]string{"#t": attrTTL, "#pb": attrDue, "#pc": attrClose}
	values := map[string]types.AttributeValue{
		":t": s.ttl(now), ":asOf": num(asOf.UnixMilli()), ":nowms": num(now.UnixMilli()), ":now": num(now.Unix()),
	}
	set := "SET #t = :t, #pc = :lease"
	if sinks {
		values[":lease"] = num(lease)
	} else {
		names["#pe"] = attrEnd
		values[":lease"], values[":never"] = num(0), num(never)
		set += ", #pe = :never REMOVE #pb"
	}
	out, err := s.updateItem(ctx, &dynamodb.UpdateItemInput{
		Key:                       s.key(id),
		UpdateExpression:          aws.String(set),
		ConditionExpression:       aws.String("#pb <= :asOf AND (attribute_not_exists(#pc) OR #pc < :nowms) AND #t > :now"),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: values,
		// ALL_OLD: the keys are the same, and the end is as it was.
		ReturnValues: types.ReturnValueAllOld,
	})
	if isConditionFailed(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("conversation %q: close: %w", id, err)
	}
	cp := flowmetrics.ClosedPath{ConversationID: id}
	for a := range out.Attributes {
		if k, ok := strings.CutPrefix(a, keyPrefix); ok {
			cp.Keys = append(cp.Keys, k)
		}
	}
	if e, ok := out.Attributes[attrEnd].(*types.AttributeValueMemberN); ok && e.Value != strconv.FormatInt(never, 10) {
		cp.Ended = true
	}
	return &closed{path: cp, lease: lease}, nil
}

// closeMark is the write that marks a delivered close: the path is never
// due again. It does nothing when another instance took the close over.
func closeMark(lease int64) (update, cond string, names map[string]string, values map[string]types.AttributeValue) {
	return "SET #pc = :zero, #pe = :never REMOVE #pb", "#pc = :lease",
		map[string]string{"#pc": attrClose, "#pb": attrDue, "#pe": attrEnd},
		map[string]types.AttributeValue{":zero": num(0), ":never": num(never), ":lease": num(lease)}
}

// convIDOf is the conversation id of an item id (the inverse of
// convItemID).
func convIDOf(itemID string) string {
	return strings.TrimPrefix(itemID, convIDEscape)
}
