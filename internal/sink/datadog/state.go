package datadog

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"slices"
	"strconv"
	"strings"

	"github.com/flowmetrics/flowmetrics"
)

// The count-mode totals in the state store.
//
// One key per series and half-hour slot of Unix seconds,
//
//	t/<32 hex digits: the first 16 bytes of SHA-256 of the series key>/<Unix second / 1800>
//
// whose value is
//
//	uvarint(len(series key)) series key   (the metric name and tags, NUL-joined)
//	then, per second of the slot with a total, in increasing order:
//	uvarint(second - previous second, the first one counted from the slot start) uvarint(total)
//
// so a commit rewrites only the slots a batch touched (usually the current
// one of a few series), a value stays a few hundred bytes with 10 s buckets
// (at most 1800 seconds, plus clamped ones: about 20 kB in the worst case of
// 1 s buckets, far below MaxStateValue), and the key stays short whatever the
// tags. A slot whose totals have all been pruned is deleted (a nil update),
// so the state is bounded by the series count times the four or five slots
// PruneAge can span. Half an hour keeps that key count (and DynamoDB's
// directory of keys) small while a value stays within one write unit for
// 10 s buckets.
const (
	stateKeyPrefix = "t/"
	slotSeconds    = 1800
)

type slotKey struct {
	series string
	slot   int64
}

func slotOf(ts int64) int64 {
	s := ts / slotSeconds
	if ts%slotSeconds < 0 {
		s--
	}
	return s
}

func stateKey(k slotKey) string {
	h := sha256.Sum256([]byte(k.series))
	return stateKeyPrefix + hex.EncodeToString(h[:16]) + "/" + strconv.FormatInt(k.slot, 10)
}

func encodeSlot(series string, slot int64, byTS map[int64]int64) []byte {
	var secs []int64
	for ts := range byTS {
		if slotOf(ts) == slot {
			secs = append(secs, ts)
		}
	}
	if len(secs) == 0 {
		return nil
	}
	slices.Sort(secs)
	b := binary.AppendUvarint(nil, uint64(len(series)))
	b = append(b, series...)
	prev := slot * slotSeconds
	for _, ts := range secs {
		b = binary.AppendUvarint(b, uint64(ts-prev))
		b = binary.AppendUvarint(b, uint64(max(byTS[ts], 0)))
		prev = ts
	}
	return b
}

var errBadState = errors.New("not a total of this sink")

func decodeSlot(key string, v []byte) (series string, totals map[int64]int64, err error) {
	rest, ok := strings.CutPrefix(key, stateKeyPrefix)
	if !ok {
		return "", nil, errBadState
	}
	_, slotStr, ok := strings.Cut(rest, "/")
	slot, perr := strconv.ParseInt(slotStr, 10, 64)
	if !ok || perr != nil {
		return "", nil, errBadState
	}
	n, k := binary.Uvarint(v)
	if k <= 0 || n == 0 || uint64(len(v)-k) < n {
		return "", nil, errBadState
	}
	series = string(v[k : k+int(n)])
	if stateKey(slotKey{series, slot}) != key {
		return "", nil, errBadState
	}
	v = v[k+int(n):]
	totals = make(map[int64]int64)
	prev := slot * slotSeconds
	for len(v) > 0 {
		d, k1 := binary.Uvarint(v)
		if k1 <= 0 {
			return "", nil, errBadState
		}
		t, k2 := binary.Uvarint(v[k1:])
		if k2 <= 0 || t > 1<<62 {
			return "", nil, errBadState
		}
		v = v[k1+k2:]
		ts := prev + int64(d)
		if d > slotSeconds || slotOf(ts) != slot || (len(totals) > 0 && d == 0) {
			return "", nil, errBadState
		}
		totals[ts] = int64(t)
		prev = ts
	}
	return series, totals, nil
}

// Restore replaces the totals with the committed state (see the comment at
// the top of this file). Totals too old to matter are dropped, and keys that
// cannot be read (another sink's format, a corrupt value) are logged and
// deleted by the next TakeState: forgetting a total can only undercount its
// second, never double count. In distribution mode nothing is kept: totals
// left by count mode are all deleted.
func (l *Ledger) Restore(state map[string][]byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.totals)
	clear(l.dirty)
	clear(l.stale)
	bad := 0
	horizon := l.now().Add(PruneAge).Unix()
	for key, v := range state {
		if l.mode == Distribution {
			l.stale[key] = struct{}{}
			continue
		}
		series, totals, err := decodeSlot(key, v)
		if err != nil {
			l.stale[key] = struct{}{}
			bad++
			continue
		}
		byTS := l.totals[series]
		if byTS == nil {
			byTS = make(map[int64]int64, len(totals))
			l.totals[series] = byTS
		}
		for ts, t := range totals {
			byTS[ts] = t
			if ts > horizon {
				// No point is sent beyond now+9 min: this total is
				// not one this sink wrote. Dropping it rewrites the
				// slot without it.
				delete(byTS, ts)
				l.dirty[slotKey{series, slotOf(ts)}] = struct{}{}
			}
		}
	}
	if bad > 0 {
		l.log.Warn("sink state: keys that are not totals of this sink were dropped (forgetting a total can only undercount its second)", "keys", bad)
	}
	l.pruneAt(l.now(), true)
	return nil
}

// TakeState returns the changes to the totals since the last call, as
// updates of the state keys they live in, and forgets them.
func (l *Ledger) TakeState() flowmetrics.StateUpdate {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.dirty) == 0 && len(l.stale) == 0 {
		return nil
	}
	u := make(flowmetrics.StateUpdate, len(l.dirty)+len(l.stale))
	for k := range l.stale {
		u[k] = nil
	}
	for sk := range l.dirty {
		u[stateKey(sk)] = encodeSlot(sk.series, sk.slot, l.totals[sk.series])
	}
	clear(l.dirty)
	clear(l.stale)
	return u
}
