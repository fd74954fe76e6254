package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/flowmetrics/flowmetrics"
)

// PairSet is the cardinality guard's admitted set as every store keeps it
// (flowmetrics.Store.AdmitPairs): slots taken in order, slot i holding the
// i-th pair written. In a store shared by several writers a race can put a
// pair into two slots (see dynamostore); the set is then the distinct
// pairs, in the order of their first slot, and the wasted slot still
// counts against the limit, which therefore always holds. It is not safe
// for concurrent use.
type PairSet struct {
	slots int
	list  []flowmetrics.Pair
	has   map[flowmetrics.Pair]struct{}
}

// Slots returns how many slots are taken.
func (s *PairSet) Slots() int { return s.slots }

// Has reports whether the set holds p.
func (s *PairSet) Has(p flowmetrics.Pair) bool {
	_, ok := s.has[p]
	return ok
}

// Add records that the next slot holds p.
func (s *PairSet) Add(p flowmetrics.Pair) {
	s.slots++
	if s.Has(p) {
		return
	}
	if s.has == nil {
		s.has = map[flowmetrics.Pair]struct{}{}
	}
	s.has[p] = struct{}{}
	s.list = append(s.list, p)
}

// List returns a copy of the distinct pairs, in the order of their slots.
func (s *PairSet) List() []flowmetrics.Pair { return append([]flowmetrics.Pair(nil), s.list...) }

// Missing returns those of pairs the set lacks, each once, in order, so
// many that the slots taken would then be at most limit.
func (s *PairSet) Missing(pairs []flowmetrics.Pair, limit int) []flowmetrics.Pair {
	var out []flowmetrics.Pair
	seen := map[flowmetrics.Pair]struct{}{}
	for _, p := range pairs {
		if s.slots+len(out) >= limit {
			break
		}
		if _, dup := seen[p]; dup || s.Has(p) {
			continue
		}
		seen[p] = struct{}{}
		out = append(out, p)
	}
	return out
}

// EncodePair is how a store keeps a pair: the flow's length (uvarint), the
// flow, the metric. It fails beyond flowmetrics.MaxStateValue.
func EncodePair(p flowmetrics.Pair) ([]byte, error) {
	b := binary.AppendUvarint(nil, uint64(len(p.Flow)))
	b = append(append(b, p.Flow...), p.Metric...)
	if len(b) > flowmetrics.MaxStateValue {
		return nil, fmt.Errorf("flow/metric pair of %d bytes (max %d)", len(b), flowmetrics.MaxStateValue)
	}
	return b, nil
}

// DecodePair reverses EncodePair.
func DecodePair(b []byte) (flowmetrics.Pair, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || uint64(len(b)-k) < n {
		return flowmetrics.Pair{}, errors.New("corrupt flow/metric pair")
	}
	return flowmetrics.Pair{Flow: string(b[k : k+int(n)]), Metric: string(b[k+int(n):])}, nil
}
