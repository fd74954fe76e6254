package store

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

func occs(keys ...string) []flowmetrics.Occurrence {
	out := make([]flowmetrics.Occurrence, len(keys))
	for i, k := range keys {
		out[i] = flowmetrics.Occurrence{Key: k}
	}
	return out
}

func keysOf(os []flowmetrics.Occurrence) []string {
	var out []string
	for _, o := range os {
		out = append(out, o.Key)
	}
	return out
}

// Short requests are scanned for repeats, long ones use a set; both give
// each new key once, in order.
func TestFilterNew(t *testing.T) {
	long := make([]string, 0, 3*scanRepeats)
	var wantLong []string
	for i := range scanRepeats {
		k := fmt.Sprint("k", i)
		long = append(long, k, k, "known")
		wantLong = append(wantLong, k)
	}
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{"empty", nil, nil},
		{"short with repeats and a known key", []string{"a", "known", "b", "a", "c", "b"}, []string{"a", "b", "c"}},
		{"long with repeats and a known key", long, wantLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := keysOf(FilterNew(occs(tt.in...), func(k string) bool { return k == "known" }))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// One event's distinct keys cost linear time: 100,000 keys took 33 s when
// repeats were found by scanning. The time is reported, not asserted.
func TestFilterNewManyKeys(t *testing.T) {
	const n = 100_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprint("FMetric_M", i, "(2023-03-05T08:18:04Z)")
	}
	start := time.Now()
	got := FilterNew(occs(keys...), func(string) bool { return false })
	if len(got) != n {
		t.Fatalf("got %d new keys, want %d", len(got), n)
	}
	t.Logf("%d distinct keys filtered in %v", n, time.Since(start))
}

func BenchmarkFilterNew(b *testing.B) {
	for _, n := range []int{10, 1_000, 100_000} {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprint("FMetric_M", i, "(2023-03-05T08:18:04Z)")
		}
		in := occs(keys...)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				FilterNew(in, func(string) bool { return false })
			}
		})
	}
}
