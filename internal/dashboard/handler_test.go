package dashboard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

var numbers = regexp.MustCompile(`\[[\d,\s]+\]`)

// sample fills a Recorder and telemetry as a small serve would after a few
// batches: two flows, typos in one of them and in a flow with no good
// metric, a datadog sink failing, jsonl fine.
func sample(t *testing.T) (*Recorder, *telemetry.Metrics, *clock) {
	t.Helper()
	c := &clock{t: t0}
	rec := NewRecorder(c.Now)
	dd := rec.Watch(&statefulSink{fail: errors.New("datadog: 503 Service Unavailable")})
	js := rec.Watch(plainSink{})
	js.Send(context.Background(), nil)
	c.Set(t0.Add(-time.Minute))
	dd.Send(context.Background(), nil)
	c.Set(t0)
	rec.Send(context.Background(), []flowmetrics.Point{
		pt("CustomerRouting", "Unknown", t0.Add(-10*time.Second), 3),
		pt("CustomerRouting", "Unknown", t0.Add(-20*time.Minute), 2),
		pt("CustomerRouting", "Transferred", t0.Add(-2*time.Hour), 1), // not in 1 h
		pt("Billing Main", "PaymentTaken", t0.Add(-40*time.Second), 1),
	})
	rec.Malformed("CustomerRouting", "CustomerRoutingMetric_Unknown(2026-03-05 08:59:00Z)", "time has a space where RFC 3339 wants T")
	rec.Malformed("CustomerRouting", "CustomerRoutingMetric_Unknown(2026-03-05 09:00:00Z)", "time has a space where RFC 3339 wants T")
	rec.Malformed("", "Metric_Orphan(2026-03-05T09:00:00Z)", "empty flow name")
	m := telemetry.New()
	m.RecordsRead.Add(12)
	m.RecordsAccepted.Add(9)
	m.RecordsSkipped.WithLabelValues("other_topic").Add(2)
	m.RecordsRejected.WithLabelValues("not_json").Add(1)
	m.RecordsRejected.WithLabelValues("no_conversation_id")
	m.Occurrences.WithLabelValues("CustomerRouting", "Unknown").Add(5)
	m.Occurrences.WithLabelValues("CustomerRouting", "Transferred").Add(1)
	m.Occurrences.WithLabelValues("Billing Main", "PaymentTaken").Add(1)
	m.Malformed.WithLabelValues("CustomerRouting").Add(2)
	m.Malformed.WithLabelValues("").Add(1)
	m.OutboxDepth.WithLabelValues("datadog").Set(4)
	m.OutboxDepth.WithLabelValues("jsonl").Set(0)
	m.OutboxDepth.WithLabelValues("dashboard").Set(0)
	m.SinkPoints.WithLabelValues("jsonl").Add(7)
	m.SinkPoints.WithLabelValues("dashboard").Add(4)
	m.SinkBatchFailures.WithLabelValues("datadog", "error").Add(3)
	m.SinkBatchFailures.WithLabelValues("datadog", "permanent").Add(1)
	m.OutboxDropped.WithLabelValues("datadog", "outbox_full").Add(0)
	return rec, m, c
}

func get(t *testing.T, h http.Handler, path string) (*http.Response, []byte) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
	res := w.Result()
	body, _ := io.ReadAll(res.Body)
	return res, body
}

func TestAPIGolden(t *testing.T) {
	for _, tc := range []struct {
		name, path, golden string
		setup              func(t *testing.T) (*Recorder, *telemetry.Metrics)
	}{
		{"series 1h", "/api/v1/series?range=1h", "series-1h.json", nil},
		{"series 15m", "/api/v1/series?range=15m", "series-15m.json", nil},
		{"series default", "/api/v1/series", "series-1h.json", nil},
		{"series 24h", "/api/v1/series?range=24h", "series-24h.json", nil},
		{"flows", "/api/v1/flows", "flows.json", nil},
		{"malformed", "/api/v1/malformed", "malformed.json", nil},
		{"health", "/api/v1/health", "health.json", nil},
		{"empty series", "/api/v1/series?range=6h", "empty-series.json", func(t *testing.T) (*Recorder, *telemetry.Metrics) {
			return NewRecorder(func() time.Time { return t0 }), nil
		}},
		{"empty health", "/api/v1/health", "empty-health.json", func(t *testing.T) (*Recorder, *telemetry.Metrics) {
			return NewRecorder(func() time.Time { return t0 }), nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rec *Recorder
			var m *telemetry.Metrics
			if tc.setup != nil {
				rec, m = tc.setup(t)
			} else {
				rec, m, _ = sample(t)
			}
			res, body := get(t, New(rec, m), tc.path)
			if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("got %d %q, want 200 application/json", res.StatusCode, res.Header.Get("Content-Type"))
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, body, "", "  "); err != nil {
				t.Fatalf("body is not JSON: %v\n%s", err, body)
			}
			// One line per counts array keeps the golden file readable.
			got := numbers.ReplaceAllFunc(pretty.Bytes(), func(b []byte) []byte {
				return bytes.Join(bytes.Fields(b), nil)
			})
			golden.Check(t, filepath.Join("testdata", tc.golden), got)
		})
	}
}

func TestHealthRate(t *testing.T) {
	rec, m, c := sample(t)
	h := New(rec, m)
	var b HealthBody
	_, body := get(t, h, "/api/v1/health")
	json.Unmarshal(body, &b)
	if b.EventsPerSecond != nil {
		t.Errorf("first request: got %v events/s, want null", *b.EventsPerSecond)
	}
	c.Set(t0.Add(2 * time.Second))
	m.RecordsRead.Add(30)
	_, body = get(t, h, "/api/v1/health")
	json.Unmarshal(body, &b)
	if b.EventsPerSecond == nil || *b.EventsPerSecond != 15 {
		t.Errorf("after 30 records in 2 s: got %v, want 15", b.EventsPerSecond)
	}
}

func TestBadRange(t *testing.T) {
	res, body := get(t, New(NewRecorder(nil), nil), "/api/v1/series?range=2h")
	if res.StatusCode != 400 || !strings.Contains(string(body), `range \"2h\": want one of 15m, 1h, 6h, 24h`) {
		t.Errorf("got %d %s, want 400 naming the ranges", res.StatusCode, body)
	}
}

// TestPage: the page and every file it loads, from this server only, with
// no inline script or style, a policy that forbids inline code and framing,
// and names written as text.
func TestPage(t *testing.T) {
	h := New(NewRecorder(nil), nil)
	res, body := get(t, h, "/")
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: got %d %q, want 200 text/html", res.StatusCode, res.Header.Get("Content-Type"))
	}
	for _, s := range []string{"<title>flowmetrics</title>", "no data yet — post events to /v1/events", `data-range="15m"`, `data-range="24h"`, `<script type="module" src="assets/app.js"></script>`, `<link rel="stylesheet" href="assets/dashboard.css">`} {
		if !bytes.Contains(body, []byte(s)) {
			t.Errorf("page lacks %q", s)
		}
	}
	// No inline code: every <script> has a src, no <style>, no on* handler
	// or style attribute.
	for _, re := range []string{`<script(?:\s[^>]*)?>[^<]`, `<script(?:(?:\s(?:type|async|defer)(?:="[^"]*")?)*)>`, `<style`, `\son\w+=`, `\sstyle=`, `javascript:`} {
		if m := regexp.MustCompile(re).Find(body); m != nil {
			t.Errorf("page has inline code: %q", m)
		}
	}
	policy := map[string]string{}
	for _, d := range strings.Split(res.Header.Get("Content-Security-Policy"), ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
		policy[name] = value
	}
	for name, want := range map[string]string{"default-src": "'none'", "script-src": "'self'", "style-src": "'self'", "connect-src": "'self'", "frame-ancestors": "'none'", "base-uri": "'none'"} {
		if got := policy[name]; got != want {
			t.Errorf("Content-Security-Policy %s: got %q, want %q (all: %q)", name, got, want, res.Header.Get("Content-Security-Policy"))
		}
	}
	if got := res.Header.Get("X-Frame-Options"); got != "DENY" {
		t.Errorf("X-Frame-Options: got %q, want DENY", got)
	}

	// The files the page loads, and the modules they import, all served
	// with their type; nothing from elsewhere (the only URL is the SVG
	// namespace, which is a name, not a fetch); names reach the page only
	// as text.
	refs := regexp.MustCompile(`(?:src|href)="(assets/[^"]+)"|from "(\.{1,2}/[^"]+)"`)
	seen := map[string]bool{}
	var load func(from, ref string)
	load = func(from, ref string) {
		p := path.Join(path.Dir(from), ref)
		if seen[p] {
			return
		}
		seen[p] = true
		res, body := get(t, h, p)
		want := map[string]string{".js": "text/javascript", ".css": "text/css"}[path.Ext(p)]
		if res.StatusCode != 200 || want == "" || !strings.HasPrefix(res.Header.Get("Content-Type"), want) || res.Header.Get("ETag") == "" {
			t.Errorf("GET %s: got %d %q ETag %q, want 200 %s with an ETag", p, res.StatusCode, res.Header.Get("Content-Type"), res.Header.Get("ETag"), want)
			return
		}
		for _, u := range regexp.MustCompile(`(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s"')]*`).FindAll(body, -1) {
			if string(u) != "http://www.w3.org/2000/svg" {
				t.Errorf("%s refers to an external URL: %s", p, u)
			}
		}
		for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
			if bytes.Contains(body, []byte(bad)) {
				t.Errorf("%s uses %s", p, bad)
			}
		}
		for _, m := range refs.FindAllSubmatch(body, -1) {
			load(p, string(m[2]))
		}
	}
	for _, m := range refs.FindAllSubmatch(body, -1) {
		load("/", string(m[1]))
	}
	if len(seen) != len(assets)-1 {
		t.Errorf("the page loads %d files, web/ has %d besides index.html: %v", len(seen), len(assets)-1, seen)
	}
	r304 := httptest.NewRequest("GET", "/assets/app.js", nil)
	r304.Header.Set("If-None-Match", assets["app.js"].etag)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r304)
	if w.Code != http.StatusNotModified {
		t.Errorf("GET /assets/app.js with its ETag: got %d, want 304", w.Code)
	}

	for _, p := range []string{"/index.html", "/assets/index.html", "/assets/", "/assets/nope.js", "/assets/web/app.js", "/api/v1/dashboard", "/api/v1/series/x", "/v1/events"} {
		if res, _ := get(t, h, p); res.StatusCode != 404 {
			t.Errorf("GET %s: got %d, want 404", p, res.StatusCode)
		}
	}
}

// TestStream: the event stream announces each change, refuses streams
// beyond its bound, and ends on CloseStreams.
func TestStream(t *testing.T) {
	rec := NewRecorder(nil)
	h := New(rec, nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+StreamPath, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type: got %q, want text/event-stream", ct)
	}
	lines := bufio.NewScanner(res.Body)
	next := func() string {
		t.Helper()
		for lines.Scan() {
			if l := lines.Text(); strings.HasPrefix(l, "data: ") {
				return l
			}
		}
		t.Fatalf("stream ended: %v", lines.Err())
		return ""
	}
	if got := next(); got != `data: {"version":0}` {
		t.Errorf("first event: got %q, want version 0", got)
	}
	rec.Send(ctx, []flowmetrics.Point{pt("A", "x", time.Now(), 1)})
	rec.Send(ctx, []flowmetrics.Point{pt("A", "x", time.Now(), 1)}) // coalesced
	if got := next(); got != `data: {"version":2}` {
		t.Errorf("after two sends: got %q, want version 2", got)
	}
	rec.Malformed("A", "AMetric_x(bad)", "why")
	if got := next(); got != `data: {"version":3}` {
		t.Errorf("after a malformed name: got %q, want version 3", got)
	}

	// Fill the other slots (as other clients); one more is refused.
	for i := range MaxStreams - 1 {
		if ok, why := h.acquire(fmt.Sprintf("192.0.2.%d", i)); !ok {
			t.Fatalf("slot %d: %s", i, why)
		}
	}
	if res, body := get(t, h, StreamPath); res.StatusCode != 503 || res.Header.Get("Retry-After") == "" {
		t.Errorf("stream beyond %d: got %d %s, want 503 with Retry-After", MaxStreams, res.StatusCode, body)
	}
	for i := range MaxStreams - 1 {
		h.release(fmt.Sprintf("192.0.2.%d", i))
	}

	h.CloseStreams()
	for lines.Scan() {
	}
	if ctx.Err() != nil {
		t.Error("the stream did not end on CloseStreams")
	}
}

// TestStreamSlotsPerClient: one client (remote address) holds at most
// MaxStreamsPerClient streams, and others still get theirs; a stream ends
// after its lifetime, and its slot is free again.
func TestStreamSlotsPerClient(t *testing.T) {
	h := New(NewRecorder(nil), nil)
	h.SetStreamLifetime(2 * time.Second)
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer h.CloseStreams()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// Clients told apart by their address: 127.0.0.1 and 127.0.0.2 (both
	// loopback on Linux).
	client := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, MaxConnsPerHost: 0}}
	}
	open := func(c *http.Client) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+StreamPath, nil)
		return c.Do(req)
	}
	one, two := client("127.0.0.1"), client("127.0.0.2")
	var held []*http.Response
	start := time.Now()
	for i := range MaxStreamsPerClient {
		res, err := open(one)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("stream %d of one client: %v %v, want 200", i, res, err)
		}
		held = append(held, res)
	}
	res, err := open(one)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 503 || !strings.Contains(string(body), "the most one client may hold") {
		t.Errorf("stream %d of one client: got %d %s, want 503", MaxStreamsPerClient+1, res.StatusCode, body)
	}
	res, err = open(two)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("another client's stream: %v %v, want 200", res, err)
	}
	held = append(held, res)
	// Each stream ends by itself after its lifetime.
	for i, res := range held {
		io.Copy(io.Discard, res.Body) // until the server ends it
		res.Body.Close()
		if ctx.Err() != nil {
			t.Fatalf("stream %d did not end within its lifetime", i)
		}
	}
	t.Logf("%d streams ended after %v", len(held), time.Since(start).Round(time.Millisecond))
	if d := time.Since(start); d < h.streamLife {
		t.Errorf("streams ended after %v, before their lifetime %v", d, h.streamLife)
	}
	// Their slots are free again.
	for range 50 {
		h.slotMu.Lock()
		n := h.open
		h.slotMu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if res, err := open(one); err != nil || res.StatusCode != 200 {
		t.Errorf("after the streams ended: %v %v, want 200", res, err)
	} else {
		res.Body.Close()
	}
}
