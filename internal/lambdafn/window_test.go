package lambdafn_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// stampingSink records when each Send returned: from then until the keys
// are marked delivered, a crash counts the sent occurrences twice.
type stampingSink struct {
	recordingSink
	mu   sync.Mutex
	sent time.Time
}

func (s *stampingSink) Send(ctx context.Context, ps []flowmetrics.Point) error {
	err := s.recordingSink.Send(ctx, ps)
	s.mu.Lock()
	s.sent = time.Now()
	s.mu.Unlock()
	return err
}

// TestDuplicateWindow measures the one duplicate window of the Lambda path:
// from a sink's acceptance to the end of the invocation (the delivered marks
// are the last thing it writes). A SIGKILL inside it counts that
// invocation's new occurrences twice once their events come back; anywhere
// else, nothing. It prints the window's length (against dynalite here) and
// checks the count stayed exact.
func TestDuplicateWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("measurement: skipped in -short mode")
	}
	sink := &stampingSink{}
	h := newHandler(t, dynamo(t, "a"), sink)
	var windows []time.Duration
	want := 0
	for i := 0; i < 50; i++ {
		var bodies []string
		for j := 0; j < 10; j++ {
			conv := fmt.Sprintf("c%d-%d", i, j)
			bodies = append(bodies, envelope(conv, map[string]string{fmt.Sprintf("FMetric_M%d(2026-11-20T09:31:00Z)", j%3): "1"}))
			want++
		}
		resp := h.HandleSQS(invocation(t), sqsEvent(bodies...))
		done := time.Now()
		if len(resp.BatchItemFailures) > 0 {
			t.Fatalf("batch %d: failures %v", i, failures(resp))
		}
		sink.mu.Lock()
		windows = append(windows, done.Sub(sink.sent))
		sink.mu.Unlock()
	}
	got := int64(0)
	for _, n := range sink.total() {
		got += n
	}
	if got != int64(want) {
		t.Errorf("delivered %d, want %d", got, want)
	}
	sort.Slice(windows, func(i, j int) bool { return windows[i] < windows[j] })
	t.Logf("duplicate window (sink accepted → delivered marks written), batches of 10 events in 10 conversations: median %v, p90 %v, max %v",
		windows[len(windows)/2], windows[len(windows)*9/10], windows[len(windows)-1])
}
