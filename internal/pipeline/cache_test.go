package pipeline

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// TestKnownCacheKeys learns a conversation's keys in steps, past the few
// an entry keeps packed and with a key too long to pack, and checks after
// each step that exactly the learned keys are known and that the byte count
// grows by each new key once.
func TestKnownCacheKeys(t *testing.T) {
	now := time.Now()
	key := func(i int) string { return fmt.Sprintf("FlowMetric_Step%02d(2026-12-06T02:00:00Z)", i) }
	long := strings.Repeat("L", 300)
	steps := []struct {
		name  string
		learn []string
	}{
		{"first keys", []string{key(0), key(1), key(1)}},
		{"known again", []string{key(0), key(1)}},
		{"up to the packed", []string{key(2), key(3), key(4), key(5), key(6), key(7)}},
		{"past the packed", []string{key(7), key(8), key(9)}},
		{"into the set", []string{key(10)}},
		{"a long key", []string{long}},
	}
	for _, first := range []bool{true, false} {
		c := newKnownCache(10, 1<<20, time.Hour)
		if !first {
			// A long key first: the entry starts as a set.
			steps = append([]struct {
				name  string
				learn []string
			}{{"a long key first", []string{long}}}, steps...)
		}
		learned := map[string]bool{}
		want := int64(0)
		for _, st := range steps {
			if want == 0 {
				want = entryCost + int64(len("conv"))
			}
			for _, k := range st.learn {
				if !learned[k] {
					learned[k] = true
					want += keyCost + int64(len(k))
				}
			}
			c.learn("conv", st.learn, now)
			if _, got := c.size(); got != want {
				t.Errorf("%s: got %d bytes, want %d", st.name, got, want)
			}
			var probe []flowmetrics.Occurrence
			for i := range 12 {
				probe = append(probe, flowmetrics.Occurrence{Key: key(i)})
			}
			probe = append(probe, flowmetrics.Occurrence{Key: long}, flowmetrics.Occurrence{Key: ""})
			var gotUnknown []string
			for _, o := range c.unknown("conv", probe, now) {
				gotUnknown = append(gotUnknown, o.Key)
			}
			var wantUnknown []string
			for _, o := range probe {
				if !learned[o.Key] {
					wantUnknown = append(wantUnknown, o.Key)
				}
			}
			if strings.Join(gotUnknown, ",") != strings.Join(wantUnknown, ",") {
				t.Errorf("%s: unknown keys: got %q, want %q", st.name, gotUnknown, wantUnknown)
			}
		}
	}
}

// TestKnownCacheEvictsLeastRecent: past its conversations, the cache
// evicts the one used least recently, and a use counts as recent.
func TestKnownCacheEvictsLeastRecent(t *testing.T) {
	now := time.Now()
	c := newKnownCache(2, 1<<20, time.Hour)
	occ := []flowmetrics.Occurrence{{Key: "k"}}
	c.learn("a", []string{"k"}, now)
	c.learn("b", []string{"k"}, now)
	c.unknown("a", occ, now) // a is now the most recent
	c.learn("c", []string{"k"}, now)
	for conv, known := range map[string]bool{"a": true, "b": false, "c": true} {
		if got := len(c.unknown(conv, occ, now)) == 0; got != known {
			t.Errorf("conversation %s known: got %v, want %v", conv, got, known)
		}
	}
	if n, _ := c.size(); n != 2 {
		t.Errorf("conversations: got %d, want 2", n)
	}
}
