package store_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/flowmetrics/flowmetrics/internal/store"
)

// TestKeySet adds keys in steps, past the keys a set keeps packed and with
// a key too long to pack, and checks after each step that exactly the
// added keys are held, counted once each, and listed.
func TestKeySet(t *testing.T) {
	key := func(i int) string { return fmt.Sprintf("FlowMetric_Step%02d(2026-12-06T02:00:00Z)", i) }
	long := strings.Repeat("L", 300)
	steps := []struct {
		name string
		add  []string
	}{
		{"first keys", []string{key(0), key(1), key(1)}},
		{"known again", []string{key(0), key(1)}},
		{"the empty key", []string{""}},
		{"up to the packed", []string{key(2), key(3), key(4), key(5), key(6)}},
		{"past the packed", []string{key(6), key(7), key(8)}},
		{"into the map", []string{key(9)}},
		{"a long key", []string{long}},
	}
	for _, longFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("long key first %v", longFirst), func(t *testing.T) {
			var s store.KeySet
			held := map[string]bool{}
			bytes := 0
			run := steps
			if longFirst {
				// The set starts as a map.
				run = append(steps[len(steps)-1:], steps...)
			}
			for _, st := range run {
				wantAdded, wantBytes := 0, 0
				for _, k := range st.add {
					if !held[k] {
						held[k] = true
						wantAdded++
						wantBytes += len(k)
					}
				}
				bytes += wantBytes
				added, addedBytes := s.Add(st.add...)
				if added != wantAdded || addedBytes != wantBytes {
					t.Errorf("%s: Add got %d keys, %d bytes; want %d, %d", st.name, added, addedBytes, wantAdded, wantBytes)
				}
				if got := (s.Size()); got != (store.Size{Keys: len(held), Bytes: bytes}) {
					t.Errorf("%s: got size %+v, want %d keys, %d bytes", st.name, got, len(held), bytes)
				}
				for i := range 12 {
					if got := s.Has(key(i)); got != held[key(i)] {
						t.Errorf("%s: Has(%s) = %v, want %v", st.name, key(i), got, held[key(i)])
					}
				}
				for _, k := range []string{"", long} {
					if got := s.Has(k); got != held[k] {
						t.Errorf("%s: Has(%.10q) = %v, want %v", st.name, k, got, held[k])
					}
				}
				var listed, want []string
				s.All(func(k string) bool { listed = append(listed, k); return true })
				for k := range held {
					want = append(want, k)
				}
				slices.Sort(listed)
				slices.Sort(want)
				if !slices.Equal(listed, want) {
					t.Errorf("%s: All listed %d keys %q, want %d", st.name, len(listed), listed, len(want))
				}
			}
		})
	}
}
