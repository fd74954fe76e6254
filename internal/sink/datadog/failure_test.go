package datadog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// liveRecords are n conversations with one occurrence each, at the real
// time (these tests run on the real clock, like a Lambda invocation).
func liveRecords(n int) []genesys.Record {
	at := time.Now().UTC().Format("2006-01-02T15:04:05.000Z")
	var recs []genesys.Record
	for i := 0; i < n; i++ {
		names := []string{"CustomerRoutingMetric_Start(" + at + ")"}
		recs = append(recs, genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: fmt.Sprintf("conv-%d", i), MetricNames: names}})
	}
	return recs
}

func livePipeline(t *testing.T, sink flowmetrics.Sink, m *telemetry.Metrics) (*pipeline.Pipeline, flowmetrics.Store) {
	t.Helper()
	st := memstore.New(store.Options{})
	p := pipeline.New(st, []flowmetrics.Sink{sink}, pipeline.Config{RetryMin: time.Millisecond, RetryMax: 20 * time.Millisecond}, m, slog.New(slog.DiscardHandler))
	if err := p.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p, st
}

// TestRefusedKeyFailsTheFlush: Datadog answers 401 or 403. The flush (what a
// Lambda invocation does before answering) fails at once rather than at its
// deadline, so the records are retried; nothing is acknowledged; the
// failure is counted and logged; once the key is accepted again everything
// is delivered exactly once.
func TestRefusedKeyFailsTheFlush(t *testing.T) {
	for _, mode := range []Mode{Count, Distribution} {
		for _, status := range []int{http.StatusUnauthorized, http.StatusForbidden} {
			t.Run(fmt.Sprintf("%s/%d", mode, status), func(t *testing.T) {
				// The sink waits AuthRetryInterval before asking again,
				// longer than the flush's deadline.
				h := newHarness(t, Config{Mode: mode, Now: time.Now, AuthRetryInterval: 700 * time.Millisecond}, naming.Config{})
				refuse := make([]datadogtest.Response, 100)
				for i := range refuse {
					refuse[i] = datadogtest.Response{Status: status}
				}
				h.fake.Do(func() { h.fake.Script = refuse })
				p, st := livePipeline(t, h.sink, h.m)
				if _, err := p.Ingest(context.Background(), liveRecords(7)); err != nil {
					t.Fatal(err)
				}
				fctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				defer cancel()
				err := p.Flush(fctx)
				if err == nil || !errors.Is(err, errAuth) {
					t.Fatalf("flush: got %v, want the refused key", err)
				}
				if fctx.Err() != nil {
					t.Error("flush waited for its deadline; want it to fail at once (the sink will not retry before it)")
				}
				if c, _ := st.Cursor(context.Background(), Name); c != 0 {
					t.Errorf("cursor after the refusal: got %d, want 0 (nothing acknowledged)", c)
				}
				if d, _ := st.OutboxDepth(context.Background(), Name); d != 7 {
					t.Errorf("pending after the refusal: got %d, want 7", d)
				}
				reason := map[int]string{401: "unauthorized", 403: "forbidden"}[status]
				if got := testutil.ToFloat64(h.m.SinkFailures.WithLabelValues(Name, reason)); got != 1 {
					t.Errorf("failures{%s}: got %v, want 1", reason, got)
				}
				if got := testutil.ToFloat64(h.m.SinkBatchFailures.WithLabelValues(Name, "error")); got < 1 {
					t.Errorf("batch failures: got %v, want at least 1", got)
				}
				h.fake.Do(func() { h.fake.Script = nil }) // the key is fixed
				time.Sleep(750 * time.Millisecond)        // the auth retry interval
				if err := p.Flush(ctx(t)); err != nil {
					t.Fatalf("flush once the key is accepted: %v", err)
				}
				if mode == Distribution {
					h.fake.CheckDist(7)
				} else {
					h.fake.CheckClean()
					if got := h.fake.Total(); got != 7 {
						t.Errorf("held by Datadog: got %v, want 7", got)
					}
				}
			})
		}
	}
}

// TestUnreachableIntake: nothing listens at the intake's address. The flush
// fails within its deadline, nothing is acknowledged, the failures are
// counted with reason network.
func TestUnreachableIntake(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	for _, mode := range []Mode{Count, Distribution} {
		t.Run(string(mode), func(t *testing.T) {
			t.Setenv("FLOWMETRICS_TEST_DD_KEY", testKey)
			m := telemetry.New()
			s, err := New(Config{Mode: mode, URL: "http://" + addr, APIKeyEnv: "FLOWMETRICS_TEST_DD_KEY", RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond}, sink.Deps{Metrics: m, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			p, st := livePipeline(t, s, m)
			if _, err := p.Ingest(context.Background(), liveRecords(3)); err != nil {
				t.Fatal(err)
			}
			fctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			if err := p.Flush(fctx); err == nil {
				t.Fatal("flush: got nil, want an error")
			}
			if c, _ := st.Cursor(context.Background(), Name); c != 0 {
				t.Errorf("cursor: got %d, want 0 (nothing acknowledged)", c)
			}
			if d, _ := st.OutboxDepth(context.Background(), Name); d != 3 {
				t.Errorf("pending: got %d, want 3", d)
			}
			if got := testutil.ToFloat64(m.SinkFailures.WithLabelValues(Name, "network")); got < 1 {
				t.Errorf("failures{network}: got %v, want at least 1", got)
			}
			s.Close(context.Background())
		})
	}
}

// TestRateLimitBeyondTheDeadline: a 429 asking for a minute's pause fails a
// flush whose deadline is sooner at once, with nothing acknowledged.
func TestRateLimitBeyondTheDeadline(t *testing.T) {
	h := newHarness(t, Config{Now: time.Now}, naming.Config{})
	h.fake.Do(func() {
		h.fake.Script = []datadogtest.Response{{Status: http.StatusTooManyRequests, Header: http.Header{"X-Ratelimit-Reset": {"60"}}}}
	})
	p, st := livePipeline(t, h.sink, h.m)
	if _, err := p.Ingest(context.Background(), liveRecords(2)); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := p.Flush(fctx); err == nil {
		t.Fatal("flush: got nil, want the rate limit")
	}
	if fctx.Err() != nil {
		t.Error("flush waited for its deadline; want it to fail at once (the sink will not retry before it)")
	}
	if d, _ := st.OutboxDepth(context.Background(), Name); d != 2 {
		t.Errorf("pending: got %d, want 2", d)
	}
}
