package datadog

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
)

// TestPipelineOutage runs the whole pipeline into the fake intake while it
// answers 503 for a while, then 429 with a reset header, then 202: the
// outbox depth rises during the outage and drains after it, nothing is lost
// or duplicated, and the pipeline's own metrics show the retries.
func TestPipelineOutage(t *testing.T) {
	h := newHarness(t, Config{MaxRetries: 1}, naming.Config{})
	p := pipeline.New(memstore.New(store.Options{}), []flowmetrics.Sink{h.sink}, pipeline.Config{RetryMin: time.Millisecond, RetryMax: 20 * time.Millisecond}, h.m, nil)
	if err := p.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	unavailable := datadogtest.Response{Status: http.StatusServiceUnavailable}
	var outage []datadogtest.Response
	for i := 0; i < 10000; i++ {
		outage = append(outage, unavailable)
	}
	h.fake.Do(func() { h.fake.Script = outage })

	// 40 conversations, each with two metric attributes, sent twice.
	var recs []genesys.Record
	for i := 0; i < 40; i++ {
		at := t0.Add(-time.Duration(i) * 7 * time.Second).Format("2006-01-02T15:04:05.000Z")
		names := []string{
			"CustomerRoutingMetric_Start(" + at + ")",
			"Billing MainMetric_PaymentTaken(" + at + ")",
		}
		rec := genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: fmt.Sprintf("conv-%d", i), MetricNames: names}}
		recs = append(recs, rec, rec)
	}
	res, err := p.Ingest(context.Background(), recs)
	if err != nil || res.Occurrences != 80 {
		t.Fatalf("ingest: got %d occurrences, err %v; want 80", res.Occurrences, err)
	}

	// During the outage a bounded flush gives up and the points stay pending.
	short, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	err = p.Flush(short)
	cancel()
	if err == nil {
		t.Fatal("flush during the outage: got nil, want the sink's error")
	}
	p.UpdateDepth(context.Background())
	if got := testutil.ToFloat64(h.m.OutboxDepth.WithLabelValues(Name)); got != 80 {
		t.Errorf("outbox depth during the outage: got %v, want 80", got)
	}
	if got := h.fake.Total(); got != 0 {
		t.Errorf("delivered during the outage: got %v, want 0", got)
	}

	// The backend comes back rate-limiting, then accepts; the pipeline
	// delivers everything exactly once.
	var outageRequests int
	h.fake.Do(func() {
		// One more 503 first: the request the bounded flush abandoned may
		// still reach the fake and must not be the one that takes the 429.
		outageRequests = 10000 - len(h.fake.Script) + 1
		h.fake.Script = []datadogtest.Response{unavailable, {Status: http.StatusTooManyRequests, Header: http.Header{"X-Ratelimit-Reset": {"1"}, "X-Ratelimit-Remaining": {"0"}}}}
	})
	if err := p.Flush(ctx(t)); err != nil {
		t.Fatalf("flush after the outage: %v", err)
	}
	if got := testutil.ToFloat64(h.m.OutboxDepth.WithLabelValues(Name)); got != 0 {
		t.Errorf("outbox depth after the outage: got %v, want 0", got)
	}
	h.fake.CheckClean()
	if got := h.fake.Total(); got != 80 {
		t.Errorf("total held by Datadog: got %v, want 80", got)
	}
	if got := testutil.ToFloat64(h.m.SinkBatchRetries.WithLabelValues(Name)); got < 1 {
		t.Errorf("pipeline batch retries: got %v, want at least 1", got)
	}
	if got := testutil.ToFloat64(h.m.SinkFailures.WithLabelValues(Name, "server_error")); got < 1 || got > float64(outageRequests) {
		t.Errorf("503s counted: got %v, want between 1 and the %d requests of the outage", got, outageRequests)
	}
	if got := testutil.ToFloat64(h.m.SinkFailures.WithLabelValues(Name, "rate_limited")); got != 1 {
		t.Errorf("429s counted: got %v, want 1", got)
	}
}
