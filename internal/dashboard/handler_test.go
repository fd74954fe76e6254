package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"

	"github.com/flowmetrics/flowmetrics/internal/golden"
)

var numbers = regexp.MustCompile(`\[[\d,\s]+\]`)

// sample fills a Recorder and telemetry as a small serve would after a few
// batches: two flows, one with a typo, a datadog sink behind, jsonl fine.
func sample(t *testing.T) (*Recorder, *telemetry.Metrics, *clock) {
	t.Helper()
	c := &clock{t: t0}
	rec := NewRecorder(time.Hour, c.Now)
	rec.Send(context.Background(), []flowmetrics.Point{
		pt("CustomerRouting", "Unknown", t0.Add(-10*time.Second), 3),
		pt("CustomerRouting", "Unknown", t0.Add(-20*time.Minute), 2),
		pt("CustomerRouting", "Transferred", t0.Add(-2*time.Hour), 1), // total only
		pt("Billing Main", "PaymentTaken", t0.Add(-40*time.Second), 1),
	})
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
	m.Malformed.WithLabelValues("Sales Inbound").Add(1) // no good metric at all
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
		name   string
		golden string
		setup  func(t *testing.T) (*Recorder, *telemetry.Metrics)
	}{
		{"sample", "dashboard.json", func(t *testing.T) (*Recorder, *telemetry.Metrics) {
			rec, m, _ := sample(t)
			return rec, m
		}},
		{"empty, no telemetry", "empty.json", func(t *testing.T) (*Recorder, *telemetry.Metrics) {
			return NewRecorder(0, func() time.Time { return t0 }), nil
		}},
		{"overflow", "other.json", func(t *testing.T) (*Recorder, *telemetry.Metrics) {
			rec := NewRecorder(10*time.Minute, func() time.Time { return t0 })
			rec.maxSeries = 1
			rec.Send(context.Background(), []flowmetrics.Point{pt("A", "1", t0, 1), pt("A", "2", t0, 2), pt("B", "1", t0.Add(-time.Hour), 3)})
			return rec, nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, m := tc.setup(t)
			res, body := get(t, Handler(rec, m), "/api/v1/dashboard")
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

func TestPage(t *testing.T) {
	h := Handler(NewRecorder(0, nil), nil)
	res, body := get(t, h, "/")
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: got %d %q, want 200 text/html", res.StatusCode, res.Header.Get("Content-Type"))
	}
	for _, s := range []string{"<title>flowmetrics</title>", "no data yet — post events to /v1/events", `"api/v1/dashboard"`} {
		if !bytes.Contains(body, []byte(s)) {
			t.Errorf("page lacks %q", s)
		}
	}
	// Nothing may load from elsewhere: the only URL is the SVG namespace,
	// which is a name, not a fetch.
	for _, u := range regexp.MustCompile(`(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s"')]*`).FindAll(body, -1) {
		if string(u) != "http://www.w3.org/2000/svg" {
			t.Errorf("page refers to an external URL: %s", u)
		}
	}
	if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy: got %q, want default-src 'none'", csp)
	}
	for _, p := range []string{"/index.html", "/api/v1/dashboard/x", "/v1/events"} {
		if res, _ := get(t, h, p); res.StatusCode != 404 {
			t.Errorf("GET %s: got %d, want 404", p, res.StatusCode)
		}
	}
}
