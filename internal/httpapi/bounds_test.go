package httpapi

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// peak runs fn and describes the memory it took: the highest live heap
// seen while it ran (sampled every millisecond, above what was live
// before) and the process's peak RSS, reset before fn where Linux allows
// (/proc/self/clear_refs). It is reported, never asserted: the bounds
// under test are counts, not bytes.
func peak(fn func()) string {
	reset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	heap := peakHeap(fn)
	rss := "unknown"
	if b, err := os.ReadFile("/proc/self/status"); err == nil && reset {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				rss = strings.TrimSpace(v)
			}
		}
	}
	return fmt.Sprintf("peak heap +%s, peak RSS %s (whole test process)", mib(heap), rss)
}

func peakHeap(fn func()) uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > base && ms.HeapAlloc-base > peak.Load() {
				peak.Store(ms.HeapAlloc - base)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	fn()
	close(done)
	wg.Wait()
	return peak.Load()
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

type testServer struct {
	*httptest.Server
	m *telemetry.Metrics
}

func newTestServer(t *testing.T, st flowmetrics.Store, opts Options) testServer {
	t.Helper()
	m := telemetry.New()
	if st == nil {
		st = memstore.New(store.Options{})
	}
	p := pipeline.New(st, nil, pipeline.Config{}, m, nil)
	srv := httptest.NewServer(New(p, m, opts, nil))
	t.Cleanup(srv.Close)
	return testServer{srv, m}
}

// event returns one attributes event of conversation conv on one line.
func event(conv string, attrs map[string]string) string {
	return string(genesys.Envelope{Conversation: conv, Attributes: attrs}.DetailJSON())
}

func metricAttrs(n, from int) map[string]string {
	attrs := make(map[string]string, n)
	for i := from; i < from+n; i++ {
		attrs[fmt.Sprintf("FlowMetric_M%06d(2023-03-05T08:18:04Z)", i)] = ""
	}
	return attrs
}

func TestContentType(t *testing.T) {
	srv := newServer(t, Options{})
	body := read(t, "attributes-eventbridge.json")
	for _, tt := range []struct {
		ct     string
		status int
	}{
		{"application/json", 202},
		// What an EventBridge API destination sends by default.
		{"application/json; charset=utf-8", 202},
		{"Application/JSON", 202},
		{"application/x-ndjson", 202},
		{"application/ndjson", 202},
		{"application/jsonl", 202},
		{"application/x-jsonlines", 202},
		{"application/cloudevents+json", 202},
		// What a web page can post cross-site without a preflight.
		{"", 415},
		{"text/plain", 415},
		{"text/plain; charset=utf-8", 415},
		{"application/x-www-form-urlencoded", 415},
		{"multipart/form-data; boundary=x", 415},
		{"application/xml", 415},
		{"json", 415},
	} {
		status, _, raw := post(t, srv.URL, body, map[string]string{"Content-Type": tt.ct})
		if status != tt.status {
			t.Errorf("Content-Type %q: got %d %s, want %d", tt.ct, status, raw, tt.status)
		}
	}
}

func gz(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	return buf.Bytes()
}

func postRaw(t *testing.T, url string, body []byte, header map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/v1/events", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/x-ndjson")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

func TestContentEncoding(t *testing.T) {
	plain := []byte(read(t, "conversation.ndjson"))
	srv := newTestServer(t, nil, Options{MaxBodyBytes: 1 << 20})
	for _, tt := range []struct {
		name   string
		body   []byte
		enc    string
		status int
		want   string
	}{
		{"gzip", gz(t, plain), "gzip", 202, `"accepted":5`},
		{"x-gzip", gz(t, plain), "x-gzip", 202, `"accepted":5`},
		{"identity", plain, "identity", 202, `"accepted":5`},
		{"corrupt gzip", gz(t, plain)[:20], "gzip", 400, "gzip"},
		{"not gzip at all", plain, "gzip", 400, "gzip"},
		{"brotli", plain, "br", 415, "Content-Encoding"},
		{"deflate", plain, "deflate", 415, "Content-Encoding"},
		{"two encodings", gz(t, gz(t, plain)), "gzip, gzip", 415, "Content-Encoding"},
		{"gzip without the header", gz(t, plain), "", 400, "send Content-Encoding: gzip"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{}
			if tt.enc != "" {
				h["Content-Encoding"] = tt.enc
			}
			status, raw := postRaw(t, srv.URL, tt.body, h)
			if status != tt.status || !strings.Contains(raw, tt.want) {
				t.Errorf("got %d %s, want %d with %q", status, raw, tt.status, tt.want)
			}
		})
	}
}

// A few KiB that inflate to 64 MiB get 413 once the decompressed size
// passes the limit, holding no more than the limit.
func TestGzipBomb(t *testing.T) {
	const limit = 1 << 20
	srv := newTestServer(t, nil, Options{MaxBodyBytes: limit})
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zero := make([]byte, 1<<20)
	for range 64 {
		zw.Write(zero)
	}
	zw.Close()
	bomb := buf.Bytes()
	var status int
	var raw string
	mem := peak(func() { status, raw = postRaw(t, srv.URL, bomb, map[string]string{"Content-Encoding": "gzip"}) })
	if status != 413 || !strings.Contains(raw, "decompressed body larger than") {
		t.Errorf("got %d %s, want 413", status, raw)
	}
	if got := testutil.ToFloat64(srv.m.Limits.WithLabelValues("decompressed_too_large")); got != 1 {
		t.Errorf("got input_limits_total{reason=decompressed_too_large} %v, want 1", got)
	}
	// Exactly the limit, decompressed, is still read.
	ev := read(t, "attributes-eventbridge.json")
	exact := []byte(strings.TrimSpace(ev) + "\n")
	exact = append(exact, bytes.Repeat([]byte(" "), limit-len(exact))...)
	if status, raw := postRaw(t, srv.URL, gz(t, exact), map[string]string{"Content-Encoding": "gzip"}); status != 202 {
		t.Errorf("body of exactly the limit: got %d %s, want 202", status, raw)
	}
	t.Logf("%d KiB of gzip inflating to 64 MiB: 413, %s (limit %s)", len(bomb)>>10, mem, mib(limit))
}

// A 10 MB body of 5 M bad records once got a 542 MB answer and took 3.3 GiB.
// The answer names the first MaxErrors and counts the rest.
func TestErrorsCapped(t *testing.T) {
	srv := newTestServer(t, nil, Options{})
	const n = 5_000_000
	body := bytes.Repeat([]byte("1\n"), n)
	var status int
	var raw string
	mem := peak(func() { status, raw = postRaw(t, srv.URL, body, nil) })
	var r Response
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		t.Fatalf("got %d %.200s: %v", status, raw, err)
	}
	if status != 400 || r.Rejected != n || r.ErrorsTotal != n || len(r.Errors) != MaxErrors {
		t.Errorf("got %d, rejected %d, errors_total %d, %d errors; want 400, %d, %d, %d", status, r.Rejected, r.ErrorsTotal, len(r.Errors), n, n, MaxErrors)
	}
	if len(r.Errors) > 0 && (r.Errors[0].Index != 0 || r.Errors[len(r.Errors)-1].Index != MaxErrors-1) {
		t.Errorf("got errors for records %d…%d, want the first %d", r.Errors[0].Index, r.Errors[len(r.Errors)-1].Index, MaxErrors)
	}
	if got := testutil.ToFloat64(srv.m.Limits.WithLabelValues("errors_truncated")); got != n-MaxErrors {
		t.Errorf("got input_limits_total{reason=errors_truncated} %v, want %d", got, n-MaxErrors)
	}
	if got := testutil.ToFloat64(srv.m.RecordsRejected.WithLabelValues("not_an_event")); got != n {
		t.Errorf("got %v rejected records counted, want %d", got, n)
	}
	t.Logf("%d bad records in a %s body: answer %d bytes, %s", n, mib(uint64(len(body))), len(raw), mem)
}

// One event's distinct keys cost O(n log n): 100,000 took 33 s, past the
// write timeout. Up to the keys one conversation may hold are counted
// exactly once, against each store's claim path; an event that would take
// its conversation past them (up to MaxAttributes keys) is rejected
// quickly, and one with more attributes than that too.
func TestManyKeysInOneEvent(t *testing.T) {
	n := flowmetrics.MaxConversationKeys
	for _, tt := range []struct {
		name string
		st   func(t *testing.T) flowmetrics.Store
	}{
		{"memstore", func(t *testing.T) flowmetrics.Store { return memstore.New(store.Options{}) }},
		{"pebblestore", func(t *testing.T) flowmetrics.Store {
			s, err := pebblestore.Open(t.TempDir(), store.Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := newTestServer(t, tt.st(t), Options{})
			first := event("c1", metricAttrs(n/2, 0))
			// The same conversation again: half known, half new, so the
			// store looks up n keys among n/2.
			second := event("c1", metricAttrs(n, 0))
			var times []time.Duration
			var results []Response
			mem := peak(func() {
				for _, body := range []string{first, second, second} {
					start := time.Now()
					status, r, raw := post(t, srv.URL, body, nil)
					times = append(times, time.Since(start))
					if status != 202 {
						t.Fatalf("got %d %.300s, want 202", status, raw)
					}
					results = append(results, r)
				}
			})
			if got := []int{results[0].Occurrences, results[1].Occurrences, results[2].Occurrences}; got[0] != n/2 || got[1] != n/2 || got[2] != 0 {
				t.Errorf("got occurrences %v, want [%d %d 0]", got, n/2, n/2)
			}
			t.Logf("%d keys in one event: posts took %v; %s", n, times, mem)
			m := genesys.MaxAttributes
			start := time.Now()
			status, r, raw := post(t, srv.URL, event("c3", metricAttrs(m, 0)), nil)
			took := time.Since(start)
			if status != 400 || r.Rejected != 1 || len(r.Errors) != 1 || !strings.Contains(r.Errors[0].Error, "metric attributes (max") {
				t.Errorf("%d new keys in one event: got %d %.300s, want 400 rejected: the conversation would hold too many", m, status, raw)
			}
			if got := testutil.ToFloat64(srv.m.RecordsRejected.WithLabelValues(flowmetrics.RefusedConversation)); got != 1 {
				t.Errorf("got records_rejected_total{reason=%s} %v, want 1", flowmetrics.RefusedConversation, got)
			}
			t.Logf("%d keys in one event: refused in %v", m, took)
		})
	}
	srv := newTestServer(t, nil, Options{})
	status, r, raw := post(t, srv.URL, event("c2", metricAttrs(genesys.MaxAttributes+1, 0)), nil)
	if status != 400 || r.Rejected != 1 || len(r.Errors) != 1 || !strings.Contains(r.Errors[0].Error, "too many attributes") {
		t.Errorf("%d attributes: got %d %.300s, want 400 rejected: too many attributes", genesys.MaxAttributes+1, status, raw)
	}
	if got := testutil.ToFloat64(srv.m.RecordsRejected.WithLabelValues("too_many_attributes")); got != 1 {
		t.Errorf("got records_rejected_total{reason=too_many_attributes} %v, want 1", got)
	}
}

func getMetrics(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Names of 5 MiB once made a 210 MB /metrics. A name past the length limits
// is malformed, counted under its flow cut to MaxFlowLen bytes.
func TestLongNames(t *testing.T) {
	srv := newTestServer(t, nil, Options{})
	huge := strings.Repeat("F", 5<<20)
	attrs := map[string]string{
		huge + "Metric_A(2023-03-05T08:18:04Z)":                                                "",
		"FlowMetric_" + strings.Repeat("m", genesys.MaxMetricLen+1) + "(2023-03-05T08:18:04Z)": "",
		"FlowMetric_Fine(2023-03-05T08:18:04Z)":                                                "",
	}
	var status int
	var r Response
	mem := peak(func() { status, r, _ = post(t, srv.URL, event("c", attrs), nil) })
	if status != 202 || r.Occurrences != 1 {
		t.Errorf("got %d with %d occurrences, want 202 with 1", status, r.Occurrences)
	}
	if got := testutil.ToFloat64(srv.m.Limits.WithLabelValues("name_too_long")); got != 2 {
		t.Errorf("got input_limits_total{reason=name_too_long} %v, want 2", got)
	}
	metrics := getMetrics(t, srv.URL)
	want := `flowmetrics_malformed_attributes_total{flow="` + huge[:genesys.MaxFlowLen] + `"} 1`
	if !strings.Contains(metrics, want) || !strings.Contains(metrics, `flowmetrics_malformed_attributes_total{flow="Flow"} 1`) {
		t.Errorf("/metrics: want the long flow cut to %d bytes and the long metric under its flow", genesys.MaxFlowLen)
	}
	t.Logf("a 5 MiB flow name and a %d-byte metric: /metrics %d bytes, %s", genesys.MaxMetricLen+1, len(metrics), mem)
}

// Malformed names of distinct flows once made 1.35 M series; beyond the
// limit they share one.
func TestMalformedFlowsFolded(t *testing.T) {
	srv := newTestServer(t, nil, Options{})
	const flows = 3 * telemetry.MalformedFlowLimit
	var body strings.Builder
	for i := range flows {
		body.WriteString(event(fmt.Sprint("c", i), map[string]string{fmt.Sprintf("Flow%dMetric_Oops(yesterday)", i): ""}))
		body.WriteByte('\n')
	}
	var metrics string
	mem := peak(func() {
		if status, _, raw := post(t, srv.URL, body.String(), nil); status != 202 {
			t.Fatalf("got %d %.200s", status, raw)
		}
		metrics = getMetrics(t, srv.URL)
	})
	if got := strings.Count(metrics, "\nflowmetrics_malformed_attributes_total{"); got != telemetry.MalformedFlowLimit+1 {
		t.Errorf("got %d malformed series, want %d", got, telemetry.MalformedFlowLimit+1)
	}
	want := fmt.Sprintf(`flowmetrics_malformed_attributes_total{flow="overflow"} %d`, flows-telemetry.MalformedFlowLimit)
	if !strings.Contains(metrics, want) {
		t.Errorf("/metrics: missing %q", want)
	}
	t.Logf("%d distinct malformed flows: /metrics %d bytes, %s", flows, len(metrics), mem)
}

// "[1,2,3]" as a first line is one rejected record; the events after it
// are counted (EventBridge does not retry a 4xx, so a 400 would lose them).
func TestArrayAsFirstLine(t *testing.T) {
	srv := newServer(t, Options{})
	ev := event("c", map[string]string{"FlowMetric_A(2023-03-05T08:18:04Z)": ""})
	ev2 := event("d", map[string]string{"FlowMetric_A(2023-03-05T08:18:04Z)": ""})
	status, r, raw := post(t, srv.URL, "[1,2,3]\n"+ev+"\n"+ev2+"\n", nil)
	if status != 202 || r.Accepted != 2 || r.Rejected != 1 || r.Occurrences != 2 {
		t.Errorf("got %d %s, want 202 with 2 accepted, 1 rejected, 2 occurrences", status, raw)
	}
	status, r, raw = post(t, srv.URL, "["+ev+",\n"+ev2+"]", nil)
	if status != 202 || r.Accepted != 2 || r.Rejected != 0 {
		t.Errorf("whole body one array: got %d %s, want 202 with 2 accepted", status, raw)
	}
}

func TestProtectReads(t *testing.T) {
	dash := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "dashboard") })
	get := func(url string, h map[string]string, user, pass string) *http.Response {
		req, _ := http.NewRequest("GET", url, nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		if user != "" || pass != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	opts := Options{AuthHeader: "X-Api-Key", Secret: "s3cret", ProtectReads: true, Dashboard: dash, DashboardAPI: "/api/v1/dashboard"}
	srv := newServer(t, opts)
	for _, path := range []string{"/metrics", "/", "/api/v1/dashboard"} {
		for _, tt := range []struct {
			name       string
			h          map[string]string
			user, pass string
			status     int
		}{
			{"nothing", nil, "", "", 401},
			{"wrong header", map[string]string{"X-Api-Key": "nope"}, "", "", 401},
			{"header", map[string]string{"X-Api-Key": "s3cret"}, "", "", 200},
			{"bearer", map[string]string{"Authorization": "Bearer s3cret"}, "", "", 200},
			// RFC 6750: the scheme is case-insensitive.
			{"bearer, lower case", map[string]string{"Authorization": "bearer s3cret"}, "", "", 200},
			{"bearer, upper case", map[string]string{"Authorization": "BEARER s3cret"}, "", "", 200},
			{"wrong bearer", map[string]string{"Authorization": "Bearer s3cre"}, "", "", 401},
			{"basic", nil, "anyone", "s3cret", 200},
			{"basic, wrong password", nil, "s3cret", "x", 401},
		} {
			resp := get(srv.URL+path, tt.h, tt.user, tt.pass)
			if resp.StatusCode != tt.status {
				t.Errorf("%s, %s: got %d, want %d", path, tt.name, resp.StatusCode, tt.status)
			}
			if tt.status == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
				t.Errorf("%s, %s: got WWW-Authenticate %q, want Basic so a browser asks", path, tt.name, resp.Header.Get("WWW-Authenticate"))
			}
		}
	}
	if resp := get(srv.URL+"/healthz", nil, "", ""); resp.StatusCode != 200 {
		t.Errorf("/healthz: got %d, want 200 without the secret", resp.StatusCode)
	}
	opts.ProtectReads = false
	open := newServer(t, opts)
	if resp := get(open.URL+"/metrics", nil, "", ""); resp.StatusCode != 200 {
		t.Errorf("unprotected /metrics: got %d, want 200", resp.StatusCode)
	}
}

// heldIngester holds every Ingest call until release is closed, so the
// requests it serves keep their bytes in flight.
type heldIngester struct {
	Ingester
	entered chan struct{}
	release chan struct{}
}

func (h heldIngester) Ingest(ctx context.Context, recs []genesys.Record) (pipeline.Result, error) {
	h.entered <- struct{}{}
	<-h.release
	return h.Ingester.Ingest(ctx, recs)
}

// Requests reserve their body's bytes before reading it; one that does not
// fit under MaxBytesInFlight is refused at once with 503 and Retry-After,
// never queued, and nothing of it is claimed. Once the others are
// answered it gets through.
func TestBytesInFlightBound(t *testing.T) {
	const limit = 1 << 20
	m := telemetry.New()
	p := pipeline.New(memstore.New(store.Options{}), nil, pipeline.Config{}, m, nil)
	held := heldIngester{Ingester: p, entered: make(chan struct{}, 8), release: make(chan struct{})}
	srv := httptest.NewServer(New(held, m, Options{MaxBodyBytes: limit, MaxBytesInFlight: 2 * limit, RetryAfter: time.Second}, nil))
	t.Cleanup(srv.Close)

	// Two bodies of 700 KiB each: 1.4 MiB of the 2 MiB in flight.
	body := func(conv string) []byte {
		ev := event(conv, map[string]string{"FlowMetric_A(2023-03-05T08:18:04Z)": ""}) + "\n"
		return append([]byte(ev), bytes.Repeat([]byte(" "), 700<<10-len(ev))...)
	}
	answers := make(chan int, 2)
	for _, conv := range []string{"c1", "c2"} {
		go func() {
			resp, err := http.Post(srv.URL+"/v1/events", "application/x-ndjson", bytes.NewReader(body(conv)))
			if err != nil {
				answers <- 0
				return
			}
			resp.Body.Close()
			answers <- resp.StatusCode
		}()
		<-held.entered
	}
	// A third 700 KiB body does not fit; nor does one without a length
	// (chunked), which reserves the whole limit.
	third := body("c3")
	if status, raw := postRaw(t, srv.URL, third, nil); status != 503 || !strings.Contains(raw, "max_bytes_in_flight") {
		t.Errorf("third body: got %d %s, want 503 naming http.max_bytes_in_flight", status, raw)
	}
	if resp := postChunked(t, srv.URL, third); resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("chunked body: got %d Retry-After %q, want 503 and 1", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if got := testutil.ToFloat64(m.HTTPRefused.WithLabelValues("bytes_in_flight")); got != 2 {
		t.Errorf("got http_refused_total{reason=bytes_in_flight} %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.RecordsRead); got != 0 {
		t.Errorf("got %v records read while held, want 0: the refused bodies were read", got)
	}
	close(held.release)
	for range 2 {
		if code := <-answers; code != 202 {
			t.Errorf("held request: got %d, want 202", code)
		}
	}
	// The bytes are released with the answers: the third gets through.
	go func() {
		for range held.entered {
		}
	}()
	status, raw := postRaw(t, srv.URL, third, nil)
	if status != 202 || !strings.Contains(raw, `"occurrences":1`) {
		t.Errorf("third body, resent: got %d %s, want 202 with its occurrence", status, raw)
	}
	close(held.entered)
}

func TestBodyReservation(t *testing.T) {
	const limit = 10 << 20
	for _, tt := range []struct {
		name   string
		length int64
		gzip   bool
		want   int64
	}{
		{"declared", 3 << 20, false, 3 << 20},
		{"small", 200, false, minRequestBytes},
		{"empty", 0, false, minRequestBytes},
		{"no length", -1, false, limit},
		{"gzip", 1 << 20, true, limit},
		{"limit", limit, false, limit},
	} {
		if got := bodyReservation(tt.length, tt.gzip, limit); got != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, got, tt.want)
		}
	}
	if got := bodyReservation(-1, false, 1024); got != 1024 {
		t.Errorf("a limit under the minimum: got %d, want the limit, 1024", got)
	}
}

// A name with an invisible format character is malformed and counted under
// its flow, never as an occurrence: "Billing\u202eMain" would otherwise be
// a flow that looks like another.
func TestInvisibleCharactersAreMalformed(t *testing.T) {
	srv := newTestServer(t, nil, Options{})
	attrs := map[string]string{
		"Billing\u202eMainMetric_Paid(2023-03-05T08:18:04Z)": "",
		"BillingMetric_Pa\u200bid(2023-03-05T08:18:04Z)":     "",
		"BillingMetric_Paid(2023-03-05T08:18:04Z)":           "",
	}
	status, r, raw := post(t, srv.URL, event("c", attrs), nil)
	if status != 202 || r.Occurrences != 1 {
		t.Errorf("got %d %s, want 202 with the 1 visible name counted", status, raw)
	}
	if got := testutil.ToFloat64(srv.m.Malformed.WithLabelValues("Billing\u202eMain")); got != 1 {
		t.Errorf("got malformed{flow=Billing<RLO>Main} %v, want 1", got)
	}
	if got := testutil.ToFloat64(srv.m.Malformed.WithLabelValues("Billing")); got != 1 {
		t.Errorf("got malformed{flow=Billing} %v, want 1", got)
	}
}

// keepingIngester keeps every record it is handed.
type keepingIngester struct {
	mu   sync.Mutex
	recs []genesys.Record
}

func (k *keepingIngester) Ingest(_ context.Context, recs []genesys.Record) (pipeline.Result, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.recs = append(k.recs, recs...)
	return pipeline.Result{Read: len(recs), Accepted: len(recs)}, nil
}

// Body buffers are reused from one request to the next: what a request's
// records hold must not change when later bodies are read into the buffer
// its body was read into.
func TestRecordsOutliveTheirBody(t *testing.T) {
	keep := &keepingIngester{}
	srv := httptest.NewServer(New(keep, telemetry.New(), Options{}, nil))
	t.Cleanup(srv.Close)
	body := func(i int) (string, []byte) {
		conv := fmt.Sprintf("conv-%04d", i)
		return conv, []byte(event(conv, map[string]string{fmt.Sprintf("FlowMetric_M%04d(2023-03-05T08:18:04Z)", i): ""}) + "\n")
	}
	const n = 50
	for i := range n {
		_, b := body(i)
		if status, msg := postRaw(t, srv.URL, b, nil); status != http.StatusAccepted {
			t.Fatalf("request %d: got %d (%s), want 202", i, status, msg)
		}
	}
	if len(keep.recs) != n {
		t.Fatalf("got %d records, want %d", len(keep.recs), n)
	}
	for i, r := range keep.recs {
		conv, _ := body(i)
		occs, _ := genesys.Extract(r.Event)
		want := fmt.Sprintf("FlowMetric_M%04d(2023-03-05T08:18:04Z)", i)
		if r.Event.ConversationID != conv || len(occs) != 1 || occs[0].Key != want {
			t.Errorf("record %d: got conversation %q, occurrences %v; want %q, one of %q", i, r.Event.ConversationID, occs, conv, want)
		}
	}
}

// At most maxDecoding ingest requests are decoded and claimed at once; the
// others wait as bodies, and are served in turn.
func TestDecodingBounded(t *testing.T) {
	m := telemetry.New()
	p := pipeline.New(memstore.New(store.Options{}), nil, pipeline.Config{}, m, nil)
	n := maxDecoding()
	extra := 3
	held := heldIngester{Ingester: p, entered: make(chan struct{}, n+extra), release: make(chan struct{})}
	srv := httptest.NewServer(New(held, m, Options{MaxBytesInFlight: int64(n+extra) * (1 << 20)}, nil))
	t.Cleanup(srv.Close)
	statuses := make(chan int, n+extra)
	for i := range n + extra {
		go func() {
			body := event(fmt.Sprintf("conv-%d", i), map[string]string{fmt.Sprintf("FlowMetric_M%d(2023-03-05T08:18:04Z)", i): ""}) + "\n"
			status, _ := postRaw(t, srv.URL, []byte(body), nil)
			statuses <- status
		}()
	}
	for range n {
		<-held.entered
	}
	// The bound holds: no further request gets to the pipeline while n
	// are in it.
	select {
	case <-held.entered:
		close(held.release)
		t.Fatalf("a request beyond the %d being served reached the pipeline", n)
	case <-time.After(300 * time.Millisecond):
	}
	close(held.release)
	for range extra {
		<-held.entered
	}
	for range n + extra {
		if status := <-statuses; status != http.StatusAccepted {
			t.Errorf("got %d, want 202", status)
		}
	}
}
