package dynamostore

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// The sinks' state in the table.
//
// Each key of a sink's state is an item of its own, and each sink has a
// directory item listing its keys (DynamoDB has no other way to find them
// without a scan, the table having only a partition key):
//
//	id "s\x1f<sink>\x1f<key>"   v B  the value
//	id "s\x1f<sink>"            keys SS  the (encoded) keys
//
// A key that is not valid UTF-8, or begins with \x1f, is stored as \x1f and
// its unpadded URL-safe base64. Neither item has a ttl. Conversation ids
// beginning with "s\x1f" or "c\x1f" are stored with "c\x1f" in front
// (convItemID), so no conversation can land on a state item.
//
// # Atomic with the delivered marks
//
// In this store the cursors and the outbox live in memory; what survives a
// crash is the "d" marks, written when every sink acknowledged an entry, and
// the redelivery of every event whose keys were not marked. A sink's state
// must therefore change exactly when the marks of the entries it describes
// are written: an update acknowledged at seq waits (in memory, shown by
// SinkState) until every sink's cursor has reached seq, and is then written
// in the same TransactWriteItems as the marks of the entries up to seq. After
// a crash either both are visible (nothing is redelivered, the state holds
// it) or neither (the events are redelivered, their claims taken over once
// the lease ends, and the sink recomputes the same values from the state
// committed before: a Datadog count resent this way is idempotent).
//
// A commit is one transaction while it fits DynamoDB's limits (100 items,
// 4 MB). A larger one is written as several, the state items first: a crash
// between them leaves state that already holds entries whose marks are
// missing, which can only count those entries twice, never lose them (the
// other order could lower a Datadog total). The directory is written only
// when keys appear or go. Commits without a state update (no stateful sink,
// or Datadog distribution mode) keep the cheaper non-transactional marks.

const (
	stateIDPrefix = "s\x1f"
	convIDEscape  = "c\x1f"
	attrValue     = "v"
	attrKeys      = "keys"

	// DynamoDB's limits for one TransactWriteItems: 100 actions and 4 MB;
	// the byte budget leaves room for names and expressions.
	maxTransactItems = 100
	maxTransactBytes = 3 << 20
)

// convItemID is the item id of a conversation.
func convItemID(id string) string {
	if strings.HasPrefix(id, stateIDPrefix) || strings.HasPrefix(id, convIDEscape) {
		return convIDEscape + id
	}
	return id
}

func dirItemID(sink string) string { return stateIDPrefix + sink }

func encodeStateKey(k string) string {
	if utf8.ValidString(k) && !strings.HasPrefix(k, "\x1f") {
		return k
	}
	return "\x1f" + base64.RawURLEncoding.EncodeToString([]byte(k))
}

func decodeStateKey(e string) (string, error) {
	if b64, ok := strings.CutPrefix(e, "\x1f"); ok {
		b, err := base64.RawURLEncoding.DecodeString(b64)
		return string(b), err
	}
	return e, nil
}

func stateItemID(sink, encKey string) string { return stateIDPrefix + sink + "\x1f" + encKey }

// pendingState is an acknowledged update waiting for its marks.
type pendingState struct {
	seq    uint64
	update flowmetrics.StateUpdate
	size   int // bytes of keys and values
}

// Bounds on the updates one sink may have waiting for the others'
// acknowledgements.
const (
	maxPendingUpdates = 4096
	maxPendingBytes   = 32 << 20
)

// action is one write of a commit.
type action struct {
	item  types.TransactWriteItem
	id    string // the item it writes: at most once per transaction
	bytes int
	mark  bool // a delivered mark (its condition may fail: the item is gone)
}

// commit writes the delivered marks of the entries every sink acknowledged,
// with the state updates those acknowledgements carried. On failure nothing
// is forgotten: the next Ack, Settle or Close tries again.
func (s *Store) commit(ctx context.Context) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.mu.Lock()
	todo := s.discardLocked()
	m, ok := store.MinCursor(s.cursors)
	if !ok {
		m = s.last
	}
	// The updates whose entries are all acknowledged, merged per sink in
	// order; taken[sink] of them are consumed if the write succeeds.
	updates := map[string]flowmetrics.StateUpdate{}
	taken := map[string]int{}
	for sink, ps := range s.pending {
		n := 0
		for n < len(ps) && ps[n].seq <= m {
			n++
		}
		if n == 0 {
			continue
		}
		u := flowmetrics.StateUpdate{}
		for _, p := range ps[:n] {
			for k, v := range p.update {
				u[k] = v
			}
		}
		updates[sink], taken[sink] = u, n
	}
	s.mu.Unlock()
	if len(todo) == 0 && len(updates) == 0 {
		return nil
	}

	var err error
	if len(updates) == 0 {
		err = s.markDelivered(ctx, todo)
	} else {
		err = s.commitState(ctx, todo, updates)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.unmarked = append(todo, s.unmarked...)
		return fmt.Errorf("dynamostore: %w", err)
	}
	for _, e := range todo {
		s.forgetLocked(e)
	}
	for sink, n := range taken {
		if ps, ok := s.pending[sink]; ok && len(ps) >= n {
			s.pending[sink] = ps[n:]
			if len(s.pending[sink]) == 0 {
				delete(s.pending, sink)
			}
		}
	}
	return nil
}

// commitState writes the state updates and the marks of todo in as few
// transactions as DynamoDB allows, state first.
func (s *Store) commitState(ctx context.Context, todo []*entry, updates map[string]flowmetrics.StateUpdate) error {
	var acts []action
	dirChanges := map[string][2][]string{} // sink: added, removed (encoded keys)
	sinks := make([]string, 0, len(updates))
	for sink := range updates {
		sinks = append(sinks, sink)
	}
	sort.Strings(sinks)
	for _, sink := range sinks {
		dir, err := s.directory(ctx, sink)
		if err != nil {
			return err
		}
		puts, added, removed := s.stateActions(sink, dir, updates[sink])
		acts = append(acts, puts...)
		if len(added) > 0 || len(removed) > 0 {
			dirChanges[sink] = [2][]string{added, removed}
			acts = append(acts, s.directoryAction(sink, added, removed))
		}
	}
	acts = append(acts, s.markActions(todo)...)
	for _, chunk := range chunkActions(acts) {
		if err := s.transact(ctx, chunk); err != nil {
			return err
		}
	}
	s.rememberDirectories(dirChanges)
	return nil
}

// stateActions are the writes of one sink's state update, in key order: a
// Put per changed key, a Delete per removed one. added and removed are the
// keys the sink's directory (dir) gains and loses.
func (s *Store) stateActions(sink string, dir map[string]bool, update flowmetrics.StateUpdate) (acts []action, added, removed []string) {
	keys := make([]string, 0, len(update))
	for k := range update {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := update[k]
		ek := encodeStateKey(k)
		id := stateItemID(sink, ek)
		if v == nil {
			acts = append(acts, action{id: id, bytes: len(id), item: types.TransactWriteItem{Delete: &types.Delete{
				TableName: aws.String(s.cfg.Table), Key: map[string]types.AttributeValue{attrID: str(id)}}}})
			if dir[ek] {
				removed = append(removed, ek)
			}
			continue
		}
		acts = append(acts, action{id: id, bytes: len(id) + len(v), item: types.TransactWriteItem{Put: &types.Put{
			TableName: aws.String(s.cfg.Table),
			Item:      map[string]types.AttributeValue{attrID: str(id), attrValue: &types.AttributeValueMemberB{Value: v}}}}})
		if !dir[ek] {
			added = append(added, ek)
		}
	}
	return acts, added, removed
}

// directoryAction updates a sink's directory item: the keys added to its
// set and those removed from it.
func (s *Store) directoryAction(sink string, added, removed []string) action {
	id := dirItemID(sink)
	var expr []string
	vals := map[string]types.AttributeValue{}
	size := len(id)
	if len(added) > 0 {
		expr = append(expr, "ADD #keys :add")
		vals[":add"] = &types.AttributeValueMemberSS{Value: added}
	}
	if len(removed) > 0 {
		expr = append(expr, "DELETE #keys :del")
		vals[":del"] = &types.AttributeValueMemberSS{Value: removed}
	}
	for _, k := range append(append([]string(nil), added...), removed...) {
		size += len(k)
	}
	return action{id: id, bytes: size, item: types.TransactWriteItem{Update: &types.Update{
		TableName: aws.String(s.cfg.Table), Key: map[string]types.AttributeValue{attrID: str(id)},
		UpdateExpression:          aws.String(strings.Join(expr, " ")),
		ExpressionAttributeNames:  map[string]string{"#keys": attrKeys},
		ExpressionAttributeValues: vals,
	}}}
}

// markActions are the delivered marks of the entries in todo.
func (s *Store) markActions(todo []*entry) []action {
	var acts []action
	for _, j := range markJobs(todo) {
		update, cond, names, values := j.write()
		size := len(j.id) + 16
		for _, k := range j.keys {
			size += len(k) + len(keyPrefix) + 1
		}
		id := convItemID(j.id)
		acts = append(acts, action{id: id, bytes: size, mark: true, item: types.TransactWriteItem{Update: &types.Update{
			TableName: aws.String(s.cfg.Table), Key: map[string]types.AttributeValue{attrID: str(id)},
			UpdateExpression:          aws.String(update),
			ConditionExpression:       aws.String(cond),
			ExpressionAttributeNames:  names,
			ExpressionAttributeValues: values,
		}}})
	}
	return acts
}

// rememberDirectories applies committed directory changes (sink: added,
// removed) to the directories this instance holds.
func (s *Store) rememberDirectories(changes map[string][2][]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sink, ch := range changes {
		dir := s.dirs[sink]
		if dir == nil {
			dir = map[string]bool{}
			s.dirs[sink] = dir
		}
		for _, k := range ch[0] {
			dir[k] = true
		}
		for _, k := range ch[1] {
			delete(dir, k)
		}
	}
}

// markJob is one delivered-mark write: keys of a conversation, or (when
// close is set) its path's close.
type markJob struct {
	id    string
	keys  []string
	close int64
}

// write returns the mark's update: keys set to "d" while the item exists,
// or the close marked delivered while this instance's lease is on it.
func (j markJob) write() (update, cond string, names map[string]string, values map[string]types.AttributeValue) {
	if j.close != 0 {
		return closeMark(j.close)
	}
	names = map[string]string{"#t": attrTTL}
	var b strings.Builder
	b.WriteString("SET ")
	for i, p := range keyNames(j.keys, "#k", names) {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s = :d", p)
	}
	return b.String(), "attribute_exists(#t)", names, map[string]types.AttributeValue{":d": str(delivered)}
}

// markJobs groups the keys of entries by conversation, at most
// maxKeysPerWrite per write.
func markJobs(es []*entry) []markJob {
	byConv := map[string][]string{}
	var order []string
	for _, e := range es {
		for id, ks := range e.convs {
			if _, ok := byConv[id]; !ok {
				order = append(order, id)
			}
			byConv[id] = append(byConv[id], ks...)
		}
	}
	var jobs []markJob
	for _, id := range order {
		ks := byConv[id]
		for len(ks) > 0 {
			n := min(len(ks), maxKeysPerWrite)
			jobs = append(jobs, markJob{id: id, keys: ks[:n]})
			ks = ks[n:]
		}
	}
	for _, e := range es {
		for id, lease := range e.closes {
			jobs = append(jobs, markJob{id: id, close: lease})
		}
	}
	return jobs
}

// chunkActions splits acts, in order, into transactions within DynamoDB's
// limits, never writing one item twice in a transaction.
func chunkActions(acts []action) [][]action {
	var out [][]action
	var cur []action
	ids := map[string]bool{}
	size := 0
	for _, a := range acts {
		if len(cur) > 0 && (len(cur) == maxTransactItems || size+a.bytes > maxTransactBytes || ids[a.id]) {
			out = append(out, cur)
			cur, ids, size = nil, map[string]bool{}, 0
		}
		cur = append(cur, a)
		ids[a.id] = true
		size += a.bytes
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// transact writes acts in one TransactWriteItems. A mark whose item is gone
// (expired and deleted: its condition fails) is left out and the rest
// written again; a conflict with a concurrent write to one of the items
// (another instance claiming in a conversation) is retried.
func (s *Store) transact(ctx context.Context, acts []action) error {
	for attempt := 0; ; attempt++ {
		if len(acts) == 0 {
			return nil
		}
		items := make([]types.TransactWriteItem, len(acts))
		for i, a := range acts {
			items[i] = a.item
		}
		out, err := s.api.TransactWriteItems(ctx, &dynamodb.TransactWriteItemsInput{
			TransactItems:          items,
			ReturnConsumedCapacity: types.ReturnConsumedCapacityTotal,
		})
		s.statsMu.Lock()
		s.stats.TransactWriteItems++
		if err == nil {
			for _, c := range out.ConsumedCapacity {
				if c.CapacityUnits != nil {
					s.stats.WriteUnits += *c.CapacityUnits
				}
			}
		} else {
			// A cancelled transaction is billed too; DynamoDB does not
			// report how much: count one unit per item.
			s.stats.WriteUnits += float64(len(acts))
		}
		s.statsMu.Unlock()
		if err == nil {
			return nil
		}
		var tce *types.TransactionCanceledException
		if !errors.As(err, &tce) || attempt >= maxAttempts {
			return fmt.Errorf("commit sink state: %w", err)
		}
		var kept []action
		retry := false
		for i, a := range acts {
			code := ""
			if i < len(tce.CancellationReasons) {
				code = aws.ToString(tce.CancellationReasons[i].Code)
			}
			switch {
			case code == "ConditionalCheckFailed" && a.mark:
				continue // the conversation's item is gone: nothing to mark
			case code == "" || code == "None" || code == "ConditionalCheckFailed":
			case code == "TransactionConflict" || code == "ThrottlingError" || code == "ProvisionedThroughputExceeded":
				retry = true
			default:
				return fmt.Errorf("commit sink state: %s: %w", code, err)
			}
			kept = append(kept, a)
		}
		if len(kept) == len(acts) && !retry {
			return fmt.Errorf("commit sink state: %w", err)
		}
		acts = kept
		if retry {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(10<<attempt) * time.Millisecond):
			}
		}
	}
}

// directory returns this process's copy of the sink's directory, reading it
// from the table the first time.
func (s *Store) directory(ctx context.Context, sink string) (map[string]bool, error) {
	s.mu.Lock()
	dir, ok := s.dirs[sink]
	s.mu.Unlock()
	if ok {
		return dir, nil
	}
	out, err := s.getItem(ctx, &dynamodb.GetItemInput{
		Key:            map[string]types.AttributeValue{attrID: str(dirItemID(sink))},
		ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return nil, fmt.Errorf("read %s state directory: %w", sink, err)
	}
	dir = map[string]bool{}
	if ss, ok := out.Item[attrKeys].(*types.AttributeValueMemberSS); ok {
		for _, k := range ss.Value {
			dir[k] = true
		}
	}
	s.mu.Lock()
	if cur, ok := s.dirs[sink]; ok {
		dir = cur
	} else {
		s.dirs[sink] = dir
	}
	s.mu.Unlock()
	return dir, nil
}

// SinkState implements flowmetrics.Store: the state committed in the table
// (consistent reads of the directory and its items), with this process's
// acknowledged updates that are still waiting for their marks applied on
// top.
func (s *Store) SinkState(ctx context.Context, sink string) (map[string][]byte, error) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.mu.Lock()
	delete(s.dirs, sink) // read it afresh: another process may have changed it
	s.mu.Unlock()
	dir, err := s.directory(ctx, sink)
	if err != nil {
		return nil, fmt.Errorf("dynamostore: %w", err)
	}
	s.mu.Lock()
	encKeys := make([]string, 0, len(dir))
	for k := range dir {
		encKeys = append(encKeys, k)
	}
	s.mu.Unlock()
	sort.Strings(encKeys)
	st := map[string][]byte{}
	for len(encKeys) > 0 {
		n := min(len(encKeys), 100) // BatchGetItem's limit
		ids := make([]string, n)
		for i, ek := range encKeys[:n] {
			ids[i] = stateItemID(sink, ek)
		}
		encKeys = encKeys[n:]
		items, err := s.batchGet(ctx, ids)
		if err != nil {
			return nil, fmt.Errorf("dynamostore: read %s state: %w", sink, err)
		}
		for id, item := range items {
			v, _ := item[attrValue].(*types.AttributeValueMemberB)
			if v == nil {
				continue
			}
			k, err := decodeStateKey(strings.TrimPrefix(id, stateItemID(sink, "")))
			if err != nil {
				continue
			}
			st[k] = bytes.Clone(v.Value)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pending[sink] {
		for k, v := range p.update {
			if v == nil {
				delete(st, k)
			} else {
				st[k] = bytes.Clone(v)
			}
		}
	}
	return st, nil
}

// dropState deletes a sink's committed state and directory.
func (s *Store) dropState(ctx context.Context, sink string) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.mu.Lock()
	delete(s.dirs, sink)
	s.mu.Unlock()
	dir, err := s.directory(ctx, sink)
	if err != nil {
		return fmt.Errorf("dynamostore: %w", err)
	}
	var acts []action
	for ek := range dir {
		id := stateItemID(sink, ek)
		acts = append(acts, action{id: id, bytes: len(id), item: types.TransactWriteItem{Delete: &types.Delete{
			TableName: aws.String(s.cfg.Table), Key: map[string]types.AttributeValue{attrID: str(id)}}}})
	}
	if len(acts) == 0 {
		return nil
	}
	id := dirItemID(sink)
	acts = append(acts, action{id: id, bytes: len(id), item: types.TransactWriteItem{Delete: &types.Delete{
		TableName: aws.String(s.cfg.Table), Key: map[string]types.AttributeValue{attrID: str(id)}}}})
	for _, chunk := range chunkActions(acts) {
		if err := s.transact(ctx, chunk); err != nil {
			return fmt.Errorf("dynamostore: drop %s state: %w", sink, err)
		}
	}
	s.mu.Lock()
	delete(s.dirs, sink)
	s.mu.Unlock()
	return nil
}
