package dynamostore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// The cardinality guard's admitted pairs (AdmitPairs) are slots, one item
// each, without a ttl:
//
//	id "s\x1f\x1fpair\x1f<i>"   v B  the pair in slot i (store.EncodePair)
//
// (a sink's name is never empty, so no sink's state lands there). Each
// slot is written by a conditional write that fails when it is taken, and
// an instance writes into slots n… only after reading slots 0…n-1, with
// pairs it did not find there, and never into slot limit or beyond: so
// however many instances admit at once, no more than limit slots are ever
// taken, and a slot holds the pair of its first writer. The new pairs of
// one call are written in parallel, up to Concurrency slots at once; when
// one of those writes finds its slot taken, the instance reads the slots
// again before going on. That race can leave a pair in two slots (two
// instances admitting it at once, each into a different slot): the second
// is wasted, and the limit still holds. Loading the set reads the slots in
// batches of 100 until the first free one.
const pairIDPrefix = stateIDPrefix + "\x1fpair\x1f"

func pairItemID(i int) string { return pairIDPrefix + strconv.Itoa(i) }

// Pairs implements flowmetrics.Store: it reads the slots this instance has
// not seen yet.
func (s *Store) Pairs(ctx context.Context) ([]flowmetrics.Pair, error) {
	s.pairMu.Lock()
	defer s.pairMu.Unlock()
	if err := s.syncPairs(ctx); err != nil {
		return nil, err
	}
	return s.pairs.List(), nil
}

// AdmitPairs implements flowmetrics.Store: one conditional UpdateItem per
// new pair, only for the first admissions (once the set is full, the
// guard asks no more).
func (s *Store) AdmitPairs(ctx context.Context, pairs []flowmetrics.Pair, limit int) ([]flowmetrics.Pair, error) {
	s.pairMu.Lock()
	defer s.pairMu.Unlock()
	if !s.pairsRead {
		if err := s.syncPairs(ctx); err != nil {
			return nil, err
		}
	}
	for lost := 0; ; {
		add := s.pairs.Missing(pairs, limit)
		if len(add) == 0 {
			return s.pairs.List(), nil
		}
		add = add[:min(len(add), s.cfg.Concurrency)]
		vals := make([][]byte, len(add))
		for i, p := range add {
			v, err := store.EncodePair(p)
			if err != nil {
				return nil, fmt.Errorf("dynamostore: admit: %w", err)
			}
			vals[i] = v
		}
		first := s.pairs.Slots()
		taken := make([]bool, len(add))
		err := s.parallel(ctx, len(add), func(ctx context.Context, i int) error {
			_, err := s.updateItem(ctx, &dynamodb.UpdateItemInput{
				Key:                       map[string]types.AttributeValue{attrID: str(pairItemID(first + i))},
				UpdateExpression:          aws.String("SET #v = :v"),
				ConditionExpression:       aws.String("attribute_not_exists(#id)"),
				ExpressionAttributeNames:  map[string]string{"#v": attrValue, "#id": attrID},
				ExpressionAttributeValues: map[string]types.AttributeValue{":v": &types.AttributeValueMemberB{Value: vals[i]}},
			})
			if isConditionFailed(err) {
				taken[i] = true
				return nil
			}
			return err
		})
		if err != nil {
			// Some slots may be written: the next call finds them taken
			// and reads them.
			return nil, fmt.Errorf("dynamostore: admit: %w", err)
		}
		if !slices.Contains(taken, true) {
			for _, p := range add {
				s.pairs.Add(p)
			}
			continue
		}
		// Another instance took a slot: learn what the slots hold.
		if lost++; lost > maxAttempts*16 {
			return nil, errors.New("dynamostore: admit: slots keep being taken")
		}
		if err := s.syncPairs(ctx); err != nil {
			return nil, err
		}
	}
}

// syncPairs reads the slots after those this instance knows, up to the
// first free one. The caller holds pairMu.
func (s *Store) syncPairs(ctx context.Context) error {
	for {
		n := s.pairs.Slots()
		ids := make([]string, 100)
		for i := range ids {
			ids[i] = pairItemID(n + i)
		}
		items, err := s.batchGet(ctx, ids)
		if err != nil {
			return fmt.Errorf("dynamostore: read admitted pairs: %w", err)
		}
		s.pairsRead = true
		for _, id := range ids {
			v, ok := items[id][attrValue].(*types.AttributeValueMemberB)
			if !ok {
				return nil
			}
			p, err := store.DecodePair(v.Value)
			if err != nil {
				return fmt.Errorf("dynamostore: admitted pair %q: %w", id, err)
			}
			s.pairs.Add(p)
		}
	}
}

// batchGet reads the items of ids (at most 100, BatchGetItem's limit) with
// consistent reads, by id; absent items are left out.
func (s *Store) batchGet(ctx context.Context, ids []string) (map[string]map[string]types.AttributeValue, error) {
	ka := types.KeysAndAttributes{ConsistentRead: aws.Bool(true)}
	for _, id := range ids {
		ka.Keys = append(ka.Keys, map[string]types.AttributeValue{attrID: str(id)})
	}
	req := map[string]types.KeysAndAttributes{s.cfg.Table: ka}
	got := map[string]map[string]types.AttributeValue{}
	for attempt := 0; len(req) > 0; attempt++ {
		if attempt > maxAttempts {
			return nil, fmt.Errorf("unprocessed keys after %d attempts", attempt)
		}
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(time.Duration(10<<min(attempt, 6)) * time.Millisecond):
			}
		}
		out, err := s.api.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{RequestItems: req, ReturnConsumedCapacity: types.ReturnConsumedCapacityTotal})
		s.statsMu.Lock()
		s.stats.BatchGetItem++
		if err == nil {
			for _, c := range out.ConsumedCapacity {
				if c.CapacityUnits != nil {
					s.stats.ReadUnits += *c.CapacityUnits
				}
			}
		}
		s.statsMu.Unlock()
		if err != nil {
			return nil, err
		}
		for _, item := range out.Responses[s.cfg.Table] {
			if id, ok := item[attrID].(*types.AttributeValueMemberS); ok {
				got[id.Value] = item
			}
		}
		req = out.UnprocessedKeys
	}
	return got, nil
}
