package telemetry

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Malformed names with distinct flows once made 1.35 M label values (RSS
// 1.5 GiB, /metrics 74 MB). Flows beyond the limit fold into one series,
// and every sighting is still counted.
func TestCountMalformedFoldsFlows(t *testing.T) {
	m := New()
	const n = 200_000
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		m.CountMalformed(fmt.Sprint("flow-", i))
	}
	m.CountMalformed("flow-0") // an admitted flow keeps its own series
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)

	if got, want := testutil.CollectAndCount(m.Malformed), MalformedFlowLimit+1; got != want {
		t.Errorf("got %d malformed series, want %d (the limit and the overflow)", got, want)
	}
	if got, want := testutil.ToFloat64(m.Malformed.WithLabelValues(MalformedOverflow)), float64(n-MalformedFlowLimit); got != want {
		t.Errorf("got %v folded sightings, want %v", got, want)
	}
	if got := testutil.ToFloat64(m.Malformed.WithLabelValues("flow-0")); got != 2 {
		t.Errorf("got %v sightings of flow-0, want 2", got)
	}
	if got, want := testutil.ToFloat64(m.Limits.WithLabelValues("malformed_flows_folded")), float64(n-MalformedFlowLimit); got != want {
		t.Errorf("got %v counted in input_limits_total, want %v", got, want)
	}
	t.Logf("%d distinct malformed flows: live heap grew by %d KiB (total allocated %d MiB)",
		n, (int64(after.HeapAlloc)-int64(before.HeapAlloc))>>10, (after.TotalAlloc-before.TotalAlloc)>>20)
}
