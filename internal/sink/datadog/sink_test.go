package datadog

import (
	"bytes"
	"context"

	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

const testKey = "0123456789abcdef0123456789abcdef"

// t0 is the test clock: every point below is stamped relative to it.
var t0 = time.Date(2026, 11, 20, 9, 31, 50, 0, time.UTC)

func fixedClock() func() time.Time { return func() time.Time { return t0 } }

type harness struct {
	sink *Sink
	fake *datadogtest.Intake
	m    *telemetry.Metrics
	logs *bytes.Buffer
}

func newHarness(t *testing.T, cfg Config, ncfg naming.Config) *harness {
	t.Helper()
	t.Setenv("FLOWMETRICS_TEST_DD_KEY", testKey)
	now := cfg.Now
	if now == nil {
		now = fixedClock()
	}
	fake := datadogtest.New(t, testKey, now)
	cfg.URL = fake.URL
	cfg.APIKeyEnv = "FLOWMETRICS_TEST_DD_KEY"
	cfg.Now = now
	if cfg.RetryInitial == 0 {
		cfg.RetryInitial = time.Millisecond
		cfg.RetryMax = 5 * time.Millisecond
	}
	m := telemetry.New()
	var logs bytes.Buffer
	s, err := New(cfg, sink.Deps{Namer: naming.New(ncfg), Metrics: m, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return &harness{s, fake, m, &logs}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func pt(flow, metric string, ago time.Duration, count int64) flowmetrics.Point {
	w := 10 * time.Second
	return flowmetrics.Point{Flow: flow, Metric: metric, Bucket: flowmetrics.BucketStart(t0.Add(-ago), w), Width: w, Count: count}
}

// samplePoints are the points of the golden files: two points of one series
// and bucket (summed), a later bucket, a flow with a space, and a flow and
// metric with non-ASCII letters and a dash.
func samplePoints() []flowmetrics.Point {
	return []flowmetrics.Point{
		pt("CustomerRouting", "Unknown", 50*time.Second, 2),
		pt("Billing Main", "PaymentTaken", 60*time.Second, 4),
		pt("CustomerRouting", "Unknown", 45*time.Second, 1),
		pt("CustomerRouting", "Unknown", 40*time.Second, 1),
		pt("Gestión Pagos", "Pago-OK", 30*time.Second, 1),
	}
}

func sum(points []flowmetrics.Point) float64 {
	var n float64
	for _, p := range points {
		n += float64(p.Count)
	}
	return n
}

func TestGoldenPayload(t *testing.T) {
	tests := []struct {
		name   string
		naming naming.Config
		golden string
	}{
		{"default name with tags", naming.Config{Tags: map[string]string{"env": "prod", "team": "CX"}}, "series_default.golden.json"},
		{"name template", naming.Config{Template: "genesys.{flow}.{metric}", Tags: map[string]string{"env": "prod"}}, "series_template.golden.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{}, tt.naming)
			if err := h.s().Send(ctx(t), samplePoints()); err != nil {
				t.Fatalf("Send: got %v, want nil", err)
			}
			h.fake.CheckClean()
			if len(h.fake.Bodies) != 1 {
				t.Fatalf("got %d payloads, want 1", len(h.fake.Bodies))
			}
			got := h.fake.Bodies[0]
			golden.Check(t, filepath.Join("testdata", tt.golden), got)
			if got, want := h.fake.Total(), sum(samplePoints()); got != want {
				t.Errorf("total held by Datadog: got %v, want %v", got, want)
			}
		})
	}
}

func (h *harness) s() *Sink { return h.sink }

// TestOutageThenRateLimit is a Datadog outage at the sink level: the
// intake answers 503 for a while, then 429 with X-RateLimit-Reset, then
// 202. The pipeline's retry is played by calling Send again with the same
// points. Nothing may be lost or written twice.
func TestOutageThenRateLimit(t *testing.T) {
	h := newHarness(t, Config{MaxRetries: 2}, naming.Config{})
	unavailable := datadogtest.Response{Status: http.StatusServiceUnavailable}
	h.fake.Do(func() {
		h.fake.Script = []datadogtest.Response{unavailable, unavailable, unavailable, unavailable,
			{Status: http.StatusTooManyRequests, Header: http.Header{"X-Ratelimit-Reset": {"1"}, "X-Ratelimit-Remaining": {"0"}, "X-Ratelimit-Limit": {"100"}, "X-Ratelimit-Period": {"10"}}}}
	})
	points := samplePoints()

	err := h.sink.Send(ctx(t), points)
	if err == nil || flowmetrics.IsPermanent(err) {
		t.Fatalf("first Send during the outage: got %v, want a retryable error", err)
	}
	if got := h.fake.Total(); got != 0 {
		t.Fatalf("delivered during the outage: got %v, want 0", got)
	}

	start := time.Now()
	if err := h.sink.Send(ctx(t), points); err != nil {
		t.Fatalf("second Send: got %v, want nil", err)
	}
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Errorf("X-RateLimit-Reset: 1 honoured? waited %v, want about 1s", waited)
	}
	h.fake.CheckClean()
	if got, want := h.fake.Total(), sum(points); got != want {
		t.Errorf("total held by Datadog: got %v, want %v", got, want)
	}
	want := []int{503, 503, 503, 503, 429, 202}
	if got := h.fake.Statuses; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("responses: got %v, want %v", got, want)
	}
	checks := []struct {
		name string
		got  float64
		want float64
	}{
		{"failures server_error", testutil.ToFloat64(h.m.SinkFailures.WithLabelValues(Name, "server_error")), 4},
		{"failures rate_limited", testutil.ToFloat64(h.m.SinkFailures.WithLabelValues(Name, "rate_limited")), 1},
		{"retries", testutil.ToFloat64(h.m.SinkRetries.WithLabelValues(Name)), 4}, // 2 in each Send
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

// manyPoints returns n points of distinct series in one bucket.
func manyPoints(n int) []flowmetrics.Point {
	var ps []flowmetrics.Point
	for i := 0; i < n; i++ {
		ps = append(ps, pt(fmt.Sprintf("Flow%03d", i), "Done", 20*time.Second, int64(i%3+1)))
	}
	return ps
}

// TestPartialFailureIsNotResent: a batch split into several payloads, the
// second failing after the first was accepted. Neither the retry inside Send
// nor the pipeline's next Send may send the first again.
func TestPartialFailureIsNotResent(t *testing.T) {
	tests := []struct {
		name       string
		maxRetries int
		failures   int // 503s for the second payload
		wantErr    bool
	}{
		{"retried within Send", 2, 1, false},
		{"resumed by the next Send", 1, 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{MaxRetries: tt.maxRetries, MaxUncompressedBytes: 1200}, naming.Config{})
			script := []datadogtest.Response{{Status: http.StatusAccepted}}
			for i := 0; i < tt.failures; i++ {
				script = append(script, datadogtest.Response{Status: http.StatusServiceUnavailable})
			}
			h.fake.Do(func() { h.fake.Script = script })
			points := manyPoints(30)

			err := h.sink.Send(ctx(t), points)
			if (err != nil) != tt.wantErr {
				t.Fatalf("first Send: got %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				if err := h.sink.Send(ctx(t), points); err != nil {
					t.Fatalf("second Send: got %v, want nil", err)
				}
			}
			h.fake.CheckClean()
			if n := len(h.fake.Bodies); n < 3 {
				t.Errorf("accepted payloads: got %d, want at least 3 (the batch must be split)", n)
			}
			if got, want := h.fake.Total(), sum(points); got != want {
				t.Errorf("total held by Datadog: got %v, want %v", got, want)
			}
		})
	}
}

// Test400DoesNotBlockOthers: one payload refused with 400; the others are
// delivered and the refused points are counted.
func Test400DoesNotBlockOthers(t *testing.T) {
	h := newHarness(t, Config{MaxUncompressedBytes: 250}, naming.Config{})
	h.fake.Do(func() {
		h.fake.Reject = func(s datadogtest.Series) bool {
			for _, tg := range s.Tags {
				if tg == "flow:flow005" {
					return true
				}
			}
			return false
		}
	})
	points := manyPoints(10)
	points = append(points, pt("Flow005", "Done", 30*time.Second, 7)) // same series, another bucket

	err := h.sink.Send(ctx(t), points)
	if !flowmetrics.IsPermanent(err) {
		t.Fatalf("Send: got %v, want a Permanent error", err)
	}
	h.fake.CheckClean()
	var refused float64
	for _, p := range points {
		if p.Flow == "Flow005" {
			refused += float64(p.Count)
		}
	}
	if got, want := h.fake.Total(), sum(points)-refused; got != want {
		t.Errorf("total held by Datadog: got %v, want %v", got, want)
	}
	if got := testutil.ToFloat64(h.m.PointsAdjusted.WithLabelValues(Name, ReasonRejected)); got != 2 {
		t.Errorf("points_adjusted{rejected}: got %v, want 2", got)
	}
	if got := testutil.ToFloat64(h.m.SinkFailures.WithLabelValues(Name, "bad_request")); got != 1 {
		t.Errorf("failures bad_request: got %v, want 1", got)
	}
	// The pipeline drops a batch after a Permanent error; the next one
	// starts afresh.
	if err := h.sink.Send(ctx(t), []flowmetrics.Point{pt("Other", "Done", 0, 1)}); err != nil {
		t.Errorf("next Send: got %v, want nil", err)
	}
}

// Test413Splits: the intake's limit is lower than the sink believes; the
// sink splits on 413 until the parts fit.
func Test413Splits(t *testing.T) {
	h := newHarness(t, Config{}, naming.Config{})
	h.fake.Do(func() { h.fake.MaxCompressed = 700 })
	points := manyPoints(200)
	if err := h.sink.Send(ctx(t), points); err != nil {
		t.Fatalf("Send: got %v, want nil", err)
	}
	h.fake.CheckClean()
	if got, want := h.fake.Total(), sum(points); got != want {
		t.Errorf("total held by Datadog: got %v, want %v", got, want)
	}
	if got := testutil.ToFloat64(h.m.SinkFailures.WithLabelValues(Name, "too_large")); got < 1 {
		t.Errorf("failures too_large: got %v, want at least 1", got)
	}
}

// TestPayloadLimits: with lowered limits, every payload is within both and
// the intake never has to answer 413.
func TestPayloadLimits(t *testing.T) {
	tests := []struct {
		name                 string
		compressed, uncompr  int
		points               int
		wantAtLeastNPayloads int
	}{
		{"uncompressed limit binds", 100000, 2000, 300, 10},
		{"compressed limit binds", 600, 1000000, 300, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{MaxPayloadBytes: tt.compressed, MaxUncompressedBytes: tt.uncompr}, naming.Config{})
			h.fake.Do(func() { h.fake.MaxCompressed, h.fake.MaxUncompressed = tt.compressed, tt.uncompr })
			points := manyPoints(tt.points)
			if err := h.sink.Send(ctx(t), points); err != nil {
				t.Fatalf("Send: got %v, want nil", err)
			}
			h.fake.CheckClean()
			for _, st := range h.fake.Statuses {
				if st != http.StatusAccepted {
					t.Errorf("got status %d, want only 202", st)
				}
			}
			if got := len(h.fake.Bodies); got < tt.wantAtLeastNPayloads {
				t.Errorf("payloads: got %d, want at least %d", got, tt.wantAtLeastNPayloads)
			}
			if got, want := h.fake.Total(), sum(points); got != want {
				t.Errorf("total held by Datadog: got %v, want %v", got, want)
			}
		})
	}
}

// TestTotalsAcrossSends: Datadog keeps the last value per series and second,
// so a bucket delivered in two batches must be sent as its running total.
func TestTotalsAcrossSends(t *testing.T) {
	h := newHarness(t, Config{}, naming.Config{})
	batches := [][]flowmetrics.Point{
		{pt("F", "M", 20*time.Second, 2)},
		{pt("F", "M", 20*time.Second, 3), pt("F", "M", 5*time.Second, 1)},
		{pt("F", "M", 19*time.Second, 4)}, // same 10 s bucket as the first
	}
	for i, b := range batches {
		if err := h.sink.Send(ctx(t), b); err != nil {
			t.Fatalf("Send %d: got %v, want nil", i, err)
		}
	}
	if got := h.fake.Total(); got != 10 {
		t.Errorf("total held by Datadog: got %v, want 10", got)
	}
	k := datadogtest.Point{Metric: "genesys.flow.metric", Tags: "flow:f,metric:m", TS: flowmetrics.BucketStart(t0.Add(-20*time.Second), 10*time.Second).Unix()}
	h.fake.Do(func() {
		if got := h.fake.Store[k]; got != 9 {
			t.Errorf("bucket value: got %v, want 9", got)
		}
	})
}

func TestLatePolicy(t *testing.T) {
	old := pt("F", "Old", 2*time.Hour, 3)
	future := pt("F", "Future", -30*time.Minute, 2)
	fresh := pt("F", "Fresh", time.Minute, 1)
	points := []flowmetrics.Point{old, future, fresh}
	lo := t0.Add(-MaxAge + Margin).Unix()
	hi := t0.Add(MaxAhead - Margin).Unix()
	tests := []struct {
		policy     LatePolicy
		wantTS     map[string]int64 // metric tag → timestamp held
		wantCounts map[string]float64
		wantErr    bool
	}{
		{Clamp, map[string]int64{"old": lo, "future": hi, "fresh": fresh.Bucket.Unix()},
			map[string]float64{ReasonClampedLate: 1, ReasonClampedFuture: 1}, false},
		{Drop, map[string]int64{"fresh": fresh.Bucket.Unix()},
			map[string]float64{ReasonDroppedLate: 1, ReasonDroppedFuture: 1}, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			h := newHarness(t, Config{LatePolicy: tt.policy}, naming.Config{})
			if err := h.sink.Send(ctx(t), points); err != nil {
				t.Fatalf("Send: got %v, want nil", err)
			}
			h.fake.CheckClean()
			got := map[string]int64{}
			h.fake.Do(func() {
				for k := range h.fake.Store {
					metric := strings.TrimPrefix(strings.Split(k.Tags, ",")[1], "metric:")
					got[metric] = k.TS
				}
			})
			if fmt.Sprint(got) != fmt.Sprint(tt.wantTS) {
				t.Errorf("timestamps held: got %v, want %v", got, tt.wantTS)
			}
			for reason, want := range tt.wantCounts {
				if got := testutil.ToFloat64(h.m.PointsAdjusted.WithLabelValues(Name, reason)); got != want {
					t.Errorf("points_adjusted{%s}: got %v, want %v", reason, got, want)
				}
			}
		})
	}
}

// TestAuthFailure: a wrong key is logged loudly once per period, retried
// slowly, never logged itself, and delivery resumes when the key is fixed.
func TestAuthFailure(t *testing.T) {
	now := t0
	h := newHarness(t, Config{AuthRetryInterval: time.Minute, Now: func() time.Time { return now }}, naming.Config{})
	h.fake.Do(func() { h.fake.Key = "another-key" })
	points := []flowmetrics.Point{pt("F", "M", 0, 1)}

	steps := []struct {
		advance      time.Duration
		wantRequests int
		wantLogLines int
	}{
		{0, 1, 1},                // refused, logged
		{10 * time.Second, 1, 1}, // within the retry interval: no request
		{time.Minute, 2, 1},      // retried; not logged again within 5 minutes
		{5 * time.Minute, 3, 2},  // retried and logged again
	}
	for i, st := range steps {
		now = now.Add(st.advance)
		err := h.sink.Send(ctx(t), points)
		if err == nil || flowmetrics.IsPermanent(err) {
			t.Fatalf("step %d: got %v, want a retryable error", i, err)
		}
		var reqs int
		h.fake.Do(func() { reqs = h.fake.Requests })
		if reqs != st.wantRequests {
			t.Errorf("step %d requests: got %d, want %d", i, reqs, st.wantRequests)
		}
		if got := strings.Count(h.logs.String(), "DATADOG REJECTED THE API KEY"); got != st.wantLogLines {
			t.Errorf("step %d loud log lines: got %d, want %d", i, got, st.wantLogLines)
		}
	}
	if strings.Contains(h.logs.String(), testKey) {
		t.Error("the API key appears in the logs")
	}
	h.fake.Do(func() { h.fake.Key = testKey })
	now = now.Add(time.Minute)
	if err := h.sink.Send(ctx(t), points); err != nil {
		t.Fatalf("after the key is fixed: got %v, want nil", err)
	}
	if got := h.fake.Total(); got != 1 {
		t.Errorf("total held by Datadog: got %v, want 1", got)
	}
	if got := testutil.ToFloat64(h.m.SinkFailures.WithLabelValues(Name, "forbidden")); got != 3 {
		t.Errorf("failures forbidden: got %v, want 3", got)
	}
}

// TestDeadlineShorterThanRateLimit: Send does not sleep past its context.
func TestDeadlineShorterThanRateLimit(t *testing.T) {
	h := newHarness(t, Config{MaxRetries: 3}, naming.Config{})
	h.fake.Do(func() {
		h.fake.Script = []datadogtest.Response{{Status: http.StatusTooManyRequests, Header: http.Header{"X-Ratelimit-Reset": {"60"}}}}
	})
	c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := h.sink.Send(c, []flowmetrics.Point{pt("F", "M", 0, 1)})
	if err == nil || flowmetrics.IsPermanent(err) {
		t.Fatalf("got %v, want a retryable error", err)
	}
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Errorf("Send took %v, want it to give up at once", d)
	}
}

func TestCloseWakesWaitingSend(t *testing.T) {
	h := newHarness(t, Config{MaxRetries: 3}, naming.Config{})
	h.fake.Do(func() {
		h.fake.Script = []datadogtest.Response{{Status: http.StatusTooManyRequests, Header: http.Header{"X-Ratelimit-Reset": {"30"}}}}
	})
	done := make(chan error, 1)
	go func() { done <- h.sink.Send(ctx(t), []flowmetrics.Point{pt("F", "M", 0, 1)}) }()
	time.Sleep(100 * time.Millisecond)
	if err := h.sink.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := h.sink.Close(context.Background()); err != nil {
		t.Fatalf("second Close: got %v, want nil", err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("Send after Close woke it: got nil, want an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Send still waiting after Close")
	}
}

func TestNewNeedsKey(t *testing.T) {
	t.Setenv("FLOWMETRICS_TEST_EMPTY", "")
	_, err := New(Config{APIKeyEnv: "FLOWMETRICS_TEST_EMPTY"}, sink.Deps{})
	if err == nil || !strings.Contains(err.Error(), "FLOWMETRICS_TEST_EMPTY") {
		t.Errorf("got %v, want an error naming the variable", err)
	}
}

// TestResumeAfterClockMoved: a clamped point is accepted in the first
// payload, the second payload fails, and the pipeline retries 30 s later,
// when the clamp target has moved. The accepted point must not be sent again
// at its new clamped second.
func TestResumeAfterClockMoved(t *testing.T) {
	now := t0
	h := newHarness(t, Config{MaxRetries: 1, MaxUncompressedBytes: 250, Now: func() time.Time { return now }}, naming.Config{})
	h.fake.Do(func() {
		h.fake.Script = []datadogtest.Response{{Status: http.StatusAccepted}, {Status: http.StatusServiceUnavailable}, {Status: http.StatusServiceUnavailable}}
	})
	points := []flowmetrics.Point{pt("A", "Old", 2*time.Hour, 5), pt("B", "Old", 2*time.Hour, 7), pt("C", "Fresh", 0, 1)}
	if err := h.sink.Send(ctx(t), points); err == nil {
		t.Fatal("first Send: got nil, want a retryable error")
	}
	now = now.Add(30 * time.Second)
	if err := h.sink.Send(ctx(t), points); err != nil {
		t.Fatalf("second Send: got %v, want nil", err)
	}
	h.fake.CheckClean()
	if got, want := h.fake.Total(), sum(points); got != want {
		t.Errorf("total held by Datadog: got %v, want %v", got, want)
	}
	if got := testutil.ToFloat64(h.m.PointsAdjusted.WithLabelValues(Name, ReasonClampedLate)); got != 2 {
		t.Errorf("points_adjusted{clamped_late}: got %v, want 2 (each clamped point counted once)", got)
	}
}
