package otlp

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var t0 = time.Date(2026, 11, 20, 9, 31, 40, 0, time.UTC)

func pt(flow, metric string, at time.Time, n int64) flowmetrics.Point {
	return flowmetrics.Point{Flow: flow, Metric: metric, Bucket: at, Width: 10 * time.Second, Count: n}
}

var samplePoints = []flowmetrics.Point{
	pt("CustomerRouting", "Unknown", t0, 3),
	pt("CustomerRouting", "Unknown", t0, 2), // same series and bucket: summed
	pt("CustomerRouting", "Unknown", t0.Add(10*time.Second), 1),
	pt("Customer Routing", "Transfer.To-Agent", t0, 1),
	pt("Kundenzufriedenheit", "Größe", t0, 2),
}

// collector is a fake OTLP/HTTP receiver: it enforces the request contract
// (POST, protobuf content type, decodable body, optional gzip) and answers
// with the scripted statuses in turn, 200 when the script is over.
type collector struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	script []reply
	reqs   []*colmetricpb.ExportMetricsServiceRequest
	hdrs   []http.Header
	paths  []string
	times  []time.Time
	delay  time.Duration
	// maxPoints, when set, answers 413 to requests with more data points.
	maxPoints int
}

type reply struct {
	status     int
	rejected   int64  // for a 200: partial success
	retryAfter string // Retry-After header of a failure
}

func newCollector(t *testing.T, script ...reply) *collector {
	c := &collector{t: t, script: script}
	c.srv = httptest.NewServer(http.HandlerFunc(c.handle))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *collector) handle(w http.ResponseWriter, r *http.Request) {
	if c.delay > 0 {
		time.Sleep(c.delay)
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "want POST application/x-protobuf", http.StatusUnsupportedMediaType)
		return
	}
	var rd io.Reader = r.Body
	switch r.Header.Get("Content-Encoding") {
	case "":
	case "gzip":
		gz, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rd = gz
	default:
		http.Error(w, "unsupported encoding", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(rd)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req colmetricpb.ExportMetricsServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, "bad protobuf: "+err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.times = append(c.times, time.Now())
	if c.maxPoints > 0 && countPoints(&req) > c.maxPoints {
		c.mu.Unlock()
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
		return
	}
	c.reqs = append(c.reqs, &req)
	c.hdrs = append(c.hdrs, r.Header.Clone())
	c.paths = append(c.paths, r.URL.Path)
	rep := reply{status: 200}
	if len(c.script) > 0 {
		rep, c.script = c.script[0], c.script[1:]
	}
	c.mu.Unlock()
	if rep.status != 200 {
		if rep.retryAfter != "" {
			w.Header().Set("Retry-After", rep.retryAfter)
		}
		http.Error(w, "scripted failure", rep.status)
		return
	}
	resp := &colmetricpb.ExportMetricsServiceResponse{}
	if rep.rejected > 0 {
		resp.PartialSuccess = &colmetricpb.ExportMetricsPartialSuccess{RejectedDataPoints: rep.rejected, ErrorMessage: "out of order"}
	}
	out, _ := proto.Marshal(resp)
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

func (c *collector) requests() []*colmetricpb.ExportMetricsServiceRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*colmetricpb.ExportMetricsServiceRequest(nil), c.reqs...)
}

// deliver plays the pipeline for one batch: Send, then the drainer's next
// turn (an empty Send), which sends the windows the first one closed.
func deliver(ctx context.Context, s *Sink, points []flowmetrics.Point) error {
	if err := s.Send(ctx, points); err != nil {
		return err
	}
	return s.Send(ctx, nil)
}

func newSink(t *testing.T, cfg Config, nc naming.Config) *Sink {
	t.Helper()
	s, err := New(cfg, sink.Deps{Namer: naming.New(nc), Metrics: telemetry.New(), Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func attrs(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		m[kv.Key] = kv.Value.GetStringValue()
	}
	return m
}

func TestExport(t *testing.T) {
	c := newCollector(t)
	s := newSink(t, Config{Endpoint: c.srv.URL, Headers: map[string]string{"X-Api-Key": "k"}, Compression: "gzip"},
		naming.Config{Tags: map[string]string{"env": "prod"}})
	if err := deliver(context.Background(), s, samplePoints); err != nil {
		t.Fatalf("Send: got %v, want nil", err)
	}
	reqs := c.requests()
	if len(reqs) != 1 {
		t.Fatalf("got %d requests, want 1", len(reqs))
	}
	if got := c.paths[0]; got != "/v1/metrics" {
		t.Errorf("got path %q, want /v1/metrics", got)
	}
	if got := c.hdrs[0].Get("X-Api-Key"); got != "k" {
		t.Errorf("got header X-Api-Key %q, want k", got)
	}
	rms := reqs[0].ResourceMetrics
	if len(rms) != 1 || len(rms[0].ScopeMetrics) != 1 || len(rms[0].ScopeMetrics[0].Metrics) != 1 {
		t.Fatalf("got %v, want one resource, scope and metric", reqs[0])
	}
	if got := attrs(rms[0].Resource.Attributes)["service.name"]; got != "flowmetrics" {
		t.Errorf("got service.name %q, want flowmetrics", got)
	}
	if got := rms[0].ScopeMetrics[0].Scope.Name; got != ScopeName {
		t.Errorf("got scope %q, want %q", got, ScopeName)
	}
	m := rms[0].ScopeMetrics[0].Metrics[0]
	if m.Name != "genesys.flow.metric" || m.Unit != Unit {
		t.Errorf("got metric %q unit %q, want genesys.flow.metric unit %s", m.Name, m.Unit, Unit)
	}
	sum := m.GetSum()
	if sum == nil {
		t.Fatalf("got %T, want a Sum", m.Data)
	}
	if sum.AggregationTemporality != metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA || !sum.IsMonotonic {
		t.Errorf("got temporality %v monotonic %v, want DELTA and monotonic", sum.AggregationTemporality, sum.IsMonotonic)
	}
	type dp struct {
		flow, metric, env string
		start, end        time.Time
		value             int64
	}
	var got []dp
	for _, p := range sum.DataPoints {
		a := attrs(p.Attributes)
		if len(a) != 3 {
			t.Errorf("got attributes %v, want flow, metric and env", a)
		}
		got = append(got, dp{a["flow"], a["metric"], a["env"],
			time.Unix(0, int64(p.StartTimeUnixNano)).UTC(), time.Unix(0, int64(p.TimeUnixNano)).UTC(), p.GetAsInt()})
	}
	want := []dp{ // streams by flow and metric, each one's windows in order
		{"Customer Routing", "Transfer.To-Agent", "prod", t0, t0.Add(10 * time.Second), 1},
		{"CustomerRouting", "Unknown", "prod", t0, t0.Add(10 * time.Second), 5},
		{"CustomerRouting", "Unknown", "prod", t0.Add(10 * time.Second), t0.Add(20 * time.Second), 1},
		{"Kundenzufriedenheit", "Größe", "prod", t0, t0.Add(10 * time.Second), 2},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d data points %v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("data point %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestGolden keeps the whole request, as canonical JSON, in testdata/.
func TestGolden(t *testing.T) {
	tests := []struct {
		name string
		nc   naming.Config
	}{
		{"default", naming.Config{Tags: map[string]string{"env": "prod"}}},
		{"template", naming.Config{Template: "genesys.{flow}.{metric}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "")
			t.Setenv("OTEL_SERVICE_NAME", "")
			c := newCollector(t)
			s := newSink(t, Config{Endpoint: c.srv.URL}, tt.nc)
			if err := deliver(context.Background(), s, samplePoints); err != nil {
				t.Fatal(err)
			}
			js, err := protojson.Marshal(c.requests()[0])
			if err != nil {
				t.Fatal(err)
			}
			var compact, out bytes.Buffer
			json.Compact(&compact, js) // protojson varies its spacing on purpose
			json.Indent(&out, compact.Bytes(), "", "  ")
			out.WriteByte('\n')
			golden.Check(t, filepath.Join("testdata", tt.name+".golden.json"), out.Bytes())
		})
	}
}

func TestConnectionRefused(t *testing.T) {
	c := newCollector(t)
	url := c.srv.URL
	c.srv.Close()
	s := newSink(t, Config{Endpoint: url}, naming.Config{})
	err := deliver(context.Background(), s, samplePoints)
	if err == nil || flowmetrics.IsPermanent(err) {
		t.Errorf("got %v, want a retryable error", err)
	}
}

func TestEnvironment(t *testing.T) {
	c := newCollector(t)
	tests := []struct {
		name     string
		env      map[string]string
		cfg      Config
		wantPath string
		wantHdr  string
	}{
		{"base endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": c.srv.URL + "/otlp"}, Config{}, "/otlp/v1/metrics", ""},
		{"metrics endpoint as is", map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT":         "http://127.0.0.1:1",
			"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": c.srv.URL + "/custom",
		}, Config{}, "/custom", ""},
		{"headers", map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": c.srv.URL,
			"OTEL_EXPORTER_OTLP_HEADERS":  "x-api-key=secret%20value,other=1",
		}, Config{}, "/v1/metrics", "secret value"},
		{"yaml overrides env", map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
			"OTEL_EXPORTER_OTLP_HEADERS":  "x-api-key=from-env",
		}, Config{Endpoint: c.srv.URL, Headers: map[string]string{"x-api-key": "from-yaml"}}, "/v1/metrics", "from-yaml"},
		{"yaml path kept", nil, Config{Endpoint: c.srv.URL + "/prefix/v1/metrics"}, "/prefix/v1/metrics", ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"} {
				t.Setenv(k, tt.env[k])
				if tt.env[k] == "" {
					os.Unsetenv(k)
				}
			}
			s := newSink(t, tt.cfg, naming.Config{})
			if err := deliver(context.Background(), s, samplePoints); err != nil {
				t.Fatalf("Send: got %v, want nil", err)
			}
			c.mu.Lock()
			defer c.mu.Unlock()
			if len(c.paths) != i+1 {
				t.Fatalf("got %d requests in all, want %d", len(c.paths), i+1)
			}
			if got := c.paths[i]; got != tt.wantPath {
				t.Errorf("got path %q, want %q", got, tt.wantPath)
			}
			if got := c.hdrs[i].Get("X-Api-Key"); got != tt.wantHdr {
				t.Errorf("got x-api-key %q, want %q", got, tt.wantHdr)
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	tests := []struct {
		name string
		env  string
		cfg  Config
	}{
		{"env", "50", Config{}},
		{"yaml", "", Config{Timeout: 50 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCollector(t)
			c.delay = 500 * time.Millisecond
			t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", tt.env)
			tt.cfg.Endpoint = c.srv.URL
			s := newSink(t, tt.cfg, naming.Config{})
			start := time.Now()
			err := deliver(context.Background(), s, samplePoints)
			if err == nil || flowmetrics.IsPermanent(err) {
				t.Errorf("got %v, want a retryable error", err)
			}
			if d := time.Since(start); d > 400*time.Millisecond {
				t.Errorf("Send took %v, want about 50ms", d)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"empty uses env", Config{}, ""},
		{"full", Config{Endpoint: "https://otlp.example.com:4318", Headers: map[string]string{"Authorization": "Bearer x"}, Compression: "gzip", Timeout: time.Second}, ""},
		{"insecure", Config{Insecure: true}, ""},
		{"no scheme", Config{Endpoint: "127.0.0.1:4318"}, `endpoint "127.0.0.1:4318"`},
		{"host only", Config{Endpoint: "localhost:4318"}, "http:// or https://"},
		{"grpc scheme", Config{Endpoint: "grpc://127.0.0.1:4317"}, "http:// or https://"},
		{"insecure https", Config{Endpoint: "https://x:4318", Insecure: true}, "contradicts"},
		{"bad header", Config{Headers: map[string]string{"a b": "c"}}, "header name"},
		{"bad compression", Config{Compression: "zstd"}, "compression"},
		{"negative timeout", Config{Timeout: -time.Second}, "timeout"},
		{"cumulative", Config{Temporality: "cumulative", Watermark: time.Minute}, ""},
		{"bad temporality", Config{Temporality: "gauge"}, "temporality"},
		{"negative watermark", Config{Watermark: -time.Second}, "watermark"},
		{"watermark over an hour", Config{Watermark: 2 * time.Hour}, "watermark"},
		{"negative max points", Config{MaxPointsPerRequest: -1}, "max_points_per_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("got %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewBadEnv(t *testing.T) {
	tests := []struct{ name, key, val, wantErr string }{
		{"timeout", "OTEL_EXPORTER_OTLP_TIMEOUT", "10s", "milliseconds"},
		{"ca file", "OTEL_EXPORTER_OTLP_CERTIFICATE", "/no/such/ca.pem", "CA certificate"},
		{"cert without key", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/no/such/cert.pem", "together"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tt.key, tt.val)
			_, err := New(Config{}, sink.Deps{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestEndpointURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/metrics"},
		{"http://127.0.0.1:4318/", "http://127.0.0.1:4318/v1/metrics"},
		{"https://otlp.example.com/v1/metrics", "https://otlp.example.com/v1/metrics"},
		{"https://otlp.example.com/otlp/v1/metrics", "https://otlp.example.com/otlp/v1/metrics"},
	}
	for _, tt := range tests {
		if got := endpointURL(tt.in); got != tt.want {
			t.Errorf("endpointURL(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMetricName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"genesys.flow.metric", "genesys.flow.metric"},
		{"genesys.Customer Routing.Größe", "genesys.Customer_Routing.Grosse"},
		{"1st", "m_1st"},
		{"", "m_"},
		{strings.Repeat("a", 300), strings.Repeat("a", 255)},
	}
	for _, tt := range tests {
		if got := metricName(tt.in); got != tt.want {
			t.Errorf("metricName(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCloseTwice(t *testing.T) {
	c := newCollector(t)
	s, err := New(Config{Endpoint: c.srv.URL}, sink.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("Close #%d: got %v, want nil", i+1, err)
		}
	}
	if err := s.Send(context.Background(), samplePoints); err == nil {
		t.Error("Send after Close: got nil, want error")
	}
	if err := s.Send(context.Background(), nil); err != nil {
		t.Errorf("empty Send: got %v, want nil", err)
	}
	if got := len(c.requests()); got != 0 {
		t.Errorf("got %d requests, want 0", got)
	}
}

func countPoints(req *colmetricpb.ExportMetricsServiceRequest) int {
	n := 0
	for _, rm := range req.ResourceMetrics {
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				n += len(m.GetSum().GetDataPoints())
			}
		}
	}
	return n
}

// win is one data point as the collector received it.
type win struct {
	flow, metric string
	start, end   time.Time
	value        int64
}

func (c *collector) windows() []win {
	var out []win
	for _, req := range c.requests() {
		for _, rm := range req.ResourceMetrics {
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					for _, p := range m.GetSum().GetDataPoints() {
						a := attrs(p.Attributes)
						out = append(out, win{a["flow"], a["metric"],
							time.Unix(0, int64(p.StartTimeUnixNano)).UTC(), time.Unix(0, int64(p.TimeUnixNano)).UTC(), p.GetAsInt()})
					}
				}
			}
		}
	}
	return out
}

// fakeClock is the sink's clock in tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Set(t time.Time)     { c.mu.Lock(); defer c.mu.Unlock(); c.now = t }
func (c *fakeClock) Add(d time.Duration) { c.Set(c.Now().Add(d)) }

// TestStatus checks what each answer does to the batch, as OTLP/HTTP says:
// only no answer, 429, 502, 503 and 504 are retried (Send returns an
// error and the next Send repeats the request); everything else is
// delivered or dropped with a counter (Send returns nil and nothing is
// sent again).
func TestStatus(t *testing.T) {
	tests := []struct {
		name         string
		reply        reply
		wantRetry    bool
		wantRejected float64 // partial success
		wantReason   string  // SinkFailures
		wantDropped  float64 // OutboxDropped{reason}
	}{
		{"ok", reply{status: 200}, false, 0, "", 0},
		{"partial success", reply{status: 200, rejected: 2}, false, 2, "", 0},
		{"bad request", reply{status: 400}, false, 0, "bad_request", 9},
		{"unauthorized", reply{status: 401}, false, 0, "unauthorized", 9},
		{"forbidden", reply{status: 403}, false, 0, "unauthorized", 9},
		{"not found", reply{status: 404}, false, 0, "not_found", 9},
		{"request timeout", reply{status: 408}, false, 0, "rejected", 9},
		{"internal", reply{status: 500}, false, 0, "rejected", 9},
		{"throttled", reply{status: 429}, true, 0, "throttled", 0},
		{"bad gateway", reply{status: 502}, true, 0, "unavailable", 0},
		{"unavailable", reply{status: 503}, true, 0, "unavailable", 0},
		{"gateway timeout", reply{status: 504}, true, 0, "unavailable", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCollector(t, tt.reply)
			s := newSink(t, Config{Endpoint: c.srv.URL}, naming.Config{})
			err := deliver(context.Background(), s, samplePoints)
			if (err != nil) != tt.wantRetry {
				t.Fatalf("got error %v, want error %v", err, tt.wantRetry)
			}
			if flowmetrics.IsPermanent(err) {
				t.Errorf("got a permanent error %v, want none", err)
			}
			// The pipeline sends a failed (empty) batch again; after a
			// nil, the next Send has nothing new.
			if err := s.Send(context.Background(), nil); err != nil {
				t.Fatalf("second Send: got %v, want nil", err)
			}
			wantReqs := 1
			if tt.wantRetry {
				wantReqs = 2 // the same request again
			}
			if got := len(c.requests()); got != wantReqs {
				t.Errorf("got %d requests, want %d", got, wantReqs)
			}
			if got := testutil.ToFloat64(s.m.PointsAdjusted.WithLabelValues(Name, ReasonRejected)); got != tt.wantRejected {
				t.Errorf("got %v rejected points counted, want %v", got, tt.wantRejected)
			}
			if tt.wantReason != "" {
				if got := testutil.ToFloat64(s.m.SinkFailures.WithLabelValues(Name, tt.wantReason)); got != 1 {
					t.Errorf("got %v failures with reason %q, want 1", got, tt.wantReason)
				}
				if got := testutil.ToFloat64(s.m.OutboxDropped.WithLabelValues(Name, tt.wantReason)); got != tt.wantDropped {
					t.Errorf("got %v occurrences dropped with reason %q, want %v", got, tt.wantReason, tt.wantDropped)
				}
			}
		})
	}
}

// TestDropLogNamesStatus: a refused request is logged with its status.
func TestDropLogNamesStatus(t *testing.T) {
	c := newCollector(t, reply{status: 401})
	var buf bytes.Buffer
	s, err := New(Config{Endpoint: c.srv.URL}, sink.Deps{Log: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := deliver(context.Background(), s, samplePoints); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"level=ERROR", "status=401", "401 Unauthorized", "occurrences=9", "check the otlp headers"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log %q: want it to contain %q", buf.String(), want)
		}
	}
}

// TestRetryNoDuplicate plays the pipeline: a batch fails twice (503, then
// 429) and is sent again; the collector accepts it once, and the points
// are counted once.
func TestRetryNoDuplicate(t *testing.T) {
	c := newCollector(t, reply{status: 503}, reply{status: 429})
	s := newSink(t, Config{Endpoint: c.srv.URL}, naming.Config{})
	var errs int
	for attempt := 0; attempt < 5; attempt++ {
		var err error
		if attempt == 0 {
			err = deliver(context.Background(), s, samplePoints)
		} else {
			err = s.Send(context.Background(), nil) // the failed batch again
		}
		if err == nil {
			break
		}
		errs++
	}
	if errs != 2 {
		t.Errorf("got %d failed sends, want 2", errs)
	}
	reqs := c.requests()
	if len(reqs) != 3 {
		t.Fatalf("got %d requests, want 3 (one per Send, no hidden retries)", len(reqs))
	}
	var total int64
	for _, p := range reqs[2].ResourceMetrics[0].ScopeMetrics[0].Metrics[0].GetSum().DataPoints {
		total += p.GetAsInt()
	}
	if total != 9 {
		t.Errorf("got %d occurrences accepted, want 9", total)
	}
	// The retried batch was not counted twice: nothing is left to send.
	if err := s.Send(context.Background(), nil); err != nil || len(c.requests()) != 3 {
		t.Errorf("after delivery: got %v and %d requests, want nil and 3", err, len(c.requests()))
	}
}

// TestRetryAfter: after a 503 with Retry-After: 1, the next request waits
// a second, however soon the pipeline sends the batch again.
func TestRetryAfter(t *testing.T) {
	c := newCollector(t, reply{status: 503, retryAfter: "1"})
	s := newSink(t, Config{Endpoint: c.srv.URL}, naming.Config{})
	if err := deliver(context.Background(), s, samplePoints); err == nil || !strings.Contains(err.Error(), "retry after 1s") {
		t.Fatalf("got %v, want an error naming the Retry-After", err)
	}
	if err := s.Send(context.Background(), nil); err != nil {
		t.Fatalf("second Send: got %v, want nil", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.times) != 2 {
		t.Fatalf("got %d requests, want 2", len(c.times))
	}
	if gap := c.times[1].Sub(c.times[0]); gap < time.Second {
		t.Errorf("second request %v after the first, want ≥ 1s (Retry-After: 1)", gap)
	}
}

// TestRetryAfterCancelled: waiting for Retry-After ends with the context.
func TestRetryAfterCancelled(t *testing.T) {
	c := newCollector(t, reply{status: 429, retryAfter: "30"})
	s := newSink(t, Config{Endpoint: c.srv.URL}, naming.Config{})
	deliver(context.Background(), s, samplePoints)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := s.Send(ctx, nil); err == nil {
		t.Fatal("got nil, want the context's error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Send took %v, want about 50ms", d)
	}
	if got := len(c.requests()); got != 1 {
		t.Errorf("got %d requests, want 1 (none before Retry-After)", got)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"10", 10 * time.Second},
		{" 3 ", 3 * time.Second},
		{"0", 0},
		{"-5", 0},
		{"soon", 0},
		{"Tue, 01 Dec 2026 12:00:30 GMT", 30 * time.Second},
		{"Tue, 01 Dec 2026 11:00:00 GMT", 0},
		{"86400", maxRetryAfter},
	}
	for _, tt := range tests {
		if got := retryAfter(tt.in, now); got != tt.want {
			t.Errorf("retryAfter(%q): got %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestSplitOn413: a collector refusing requests over 2 data points gets
// every window once, in order, in requests it accepts.
func TestSplitOn413(t *testing.T) {
	c := newCollector(t)
	c.maxPoints = 2
	s := newSink(t, Config{Endpoint: c.srv.URL}, naming.Config{})
	var points []flowmetrics.Point
	for i := 0; i < 7; i++ {
		points = append(points, pt("F", "M", t0.Add(time.Duration(i)*10*time.Second), int64(i+1)))
	}
	if err := deliver(context.Background(), s, points); err != nil {
		t.Fatalf("Send: got %v, want nil", err)
	}
	ws := c.windows()
	if len(ws) != 7 {
		t.Fatalf("got %d windows, want 7: %v", len(ws), ws)
	}
	for i, w := range ws {
		if !w.start.Equal(t0.Add(time.Duration(i)*10*time.Second)) || w.value != int64(i+1) {
			t.Errorf("window %d: got %+v, want start %v value %d", i, w, t0.Add(time.Duration(i)*10*time.Second), i+1)
		}
	}
	if got := testutil.ToFloat64(s.m.SinkFailures.WithLabelValues(Name, "too_large")); got == 0 {
		t.Error("got no 413 counted, want some")
	}
}

// TestSingle413Dropped: one data point over the limit cannot be split: it
// is dropped, counted and logged, and the rest goes on.
func TestSingle413Dropped(t *testing.T) {
	c := newCollector(t, reply{status: 413})
	s := newSink(t, Config{Endpoint: c.srv.URL}, naming.Config{})
	if err := deliver(context.Background(), s, []flowmetrics.Point{pt("F", "M", t0, 4)}); err != nil {
		t.Fatalf("got %v, want nil (dropped)", err)
	}
	if got := testutil.ToFloat64(s.m.OutboxDropped.WithLabelValues(Name, "too_large")); got != 4 {
		t.Errorf("got %v occurrences dropped as too_large, want 4", got)
	}
}
