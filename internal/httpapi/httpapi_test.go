package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// examples holds the repository's sample events.
const examples = "../../examples/"

func newServer(t *testing.T, opts Options) *httptest.Server {
	t.Helper()
	m := telemetry.New()
	p := pipeline.New(memstore.New(store.Options{}), nil, pipeline.Config{}, m, nil)
	srv := httptest.NewServer(New(p, m, opts, nil))
	t.Cleanup(srv.Close)
	return srv
}

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(examples + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func post(t *testing.T, url, body string, header map[string]string) (int, Response, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/v1/events", strings.NewReader(body))
	// JSON unless the test says otherwise; an empty value sends none.
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		if v == "" {
			req.Header.Del(k)
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r Response
	json.Unmarshal(raw, &r)
	return resp.StatusCode, r, string(raw)
}

func TestEvents(t *testing.T) {
	srv := newServer(t, Options{})
	envelope := read(t, "attributes-eventbridge.json")
	tests := []struct {
		name         string
		body         string
		status       int
		acc, sk, rej int
		errContains  string
	}{
		{"envelope", envelope, 202, 1, 0, 0, ""},
		{"bare detail", read(t, "attributes-bare-detail.json"), 202, 1, 0, 0, ""},
		{"ndjson conversation", read(t, "conversation.ndjson"), 202, 5, 0, 0, ""},
		{"array with a bad element", "[" + strings.TrimSpace(envelope) + `, 42, {"detail":{"topicName":"v2.detail.events.conversation.x.customer.start","eventBody":{}}}]`, 202, 1, 1, 1, "record 1: "},
		{"customer.end", read(t, "customer-end-eventbridge.json"), 202, 1, 0, 0, ""},
		{"only another topic", `{"detail":{"topicName":"v2.detail.events.conversation.x.customer.start","eventBody":{}}}`, 202, 0, 1, 0, ""},
		{"nothing valid", `{"hello":"world"}`, 400, 0, 0, 1, "record 0: "},
		{"not json", `this is not json`, 400, 0, 0, 1, "record 0: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, r, raw := post(t, srv.URL, tt.body, nil)
			if status != tt.status || r.Accepted != tt.acc || r.Skipped != tt.sk || r.Rejected != tt.rej {
				t.Errorf("got %d %s, want %d accepted %d skipped %d rejected %d", status, raw, tt.status, tt.acc, tt.sk, tt.rej)
			}
			if tt.errContains != "" && (len(r.Errors) == 0 || !strings.Contains(r.Errors[0].Error, tt.errContains)) {
				t.Errorf("errors: got %+v, want one containing %q", r.Errors, tt.errContains)
			}
			if !strings.Contains(raw, `"errors":[`) {
				t.Errorf("body %s: want an errors array, even empty", raw)
			}
		})
	}
}

// TestEmptyBody: a body without a record answers 400 with the reason, not
// an empty list of errors.
func TestEmptyBody(t *testing.T) {
	srv := newServer(t, Options{})
	for _, tt := range []struct{ name, body, want string }{
		{"empty", "", `"error":"empty body: want one or more events`},
		{"blank lines", "\n \r\n\t\n", `"error":"empty body: `},
		{"empty array", "[]", `"error":"no events in the body: `},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, _, raw := post(t, srv.URL, tt.body, nil)
			if status != http.StatusBadRequest || !strings.Contains(raw, tt.want) {
				t.Errorf("got %d %s, want 400 containing %s", status, raw, tt.want)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	srv := newServer(t, Options{AuthHeader: "X-Api-Key", Secret: "s3cret"})
	body := read(t, "attributes-eventbridge.json")
	for _, tt := range []struct {
		name   string
		header map[string]string
		status int
	}{
		{"missing", nil, 401},
		{"wrong", map[string]string{"X-Api-Key": "s3cre"}, 401},
		{"other header", map[string]string{"Authorization": "s3cret"}, 401},
		{"right", map[string]string{"X-Api-Key": "s3cret"}, 202},
	} {
		if status, _, raw := post(t, srv.URL, body, tt.header); status != tt.status {
			t.Errorf("%s: got %d %s, want %d", tt.name, status, raw, tt.status)
		}
	}
}

func TestBodyLimit(t *testing.T) {
	srv := newServer(t, Options{MaxBodyBytes: 1024})
	big := "[" + strings.Repeat(`{"a":1},`, 200) + `{"a":1}]`
	if status, _, raw := post(t, srv.URL, big, nil); status != 413 {
		t.Errorf("got %d %s, want 413", status, raw)
	}
	// Without a Content-Length the limit still holds.
	if resp := postChunked(t, srv.URL, []byte(big)); resp.StatusCode != 413 {
		t.Errorf("chunked: got %d, want 413", resp.StatusCode)
	}
}

// postChunked posts body as NDJSON without a Content-Length (chunked).
func postChunked(t *testing.T, url string, body []byte) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/v1/events", io.MultiReader(bytes.NewReader(body)))
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

type failingIngester struct{}

func (failingIngester) Ingest(ctx context.Context, recs []genesys.Record) (pipeline.Result, error) {
	return pipeline.Result{}, errors.New("disk full")
}

func TestStoreFailureIsNotAcknowledged(t *testing.T) {
	srv := httptest.NewServer(New(failingIngester{}, telemetry.New(), Options{}, nil))
	defer srv.Close()
	if status, _, raw := post(t, srv.URL, read(t, "attributes-eventbridge.json"), nil); status != 503 {
		t.Errorf("got %d %s, want 503 so the sender retries", status, raw)
	}
}

func TestMetricsAndHealth(t *testing.T) {
	srv := newServer(t, Options{})
	post(t, srv.URL, read(t, "conversation.ndjson"), nil)
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		"flowmetrics_records_read_total 5",
		"flowmetrics_records_accepted_total 5", // the customer.end event too
		`flowmetrics_records_skipped_total{reason="other_topic"} 0`,
		"flowmetrics_path_end_events_total 1",
		`flowmetrics_malformed_attributes_total{flow="CustomerRouting"} 1`,
		`flowmetrics_occurrences_total{flow="Billing Main",metric="PaymentTaken"} 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics: missing %q", want)
		}
	}
	resp, err = http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/healthz: got %d, want 200", resp.StatusCode)
	}
}

func TestSecretMatcher(t *testing.T) {
	m := newSecretMatcher("s3cret")
	for _, tt := range []struct {
		got  string
		want bool
	}{
		{"s3cret", true},
		{"", false},
		{"s3cre", false},
		{"s3cret ", false},
		{"s3cret\x00", false},
		{"S3CRET", false},
		{strings.Repeat("s3cret", 1000), false},
	} {
		if got := m.match(tt.got); got != tt.want {
			t.Errorf("match(%.20q): got %v, want %v", tt.got, got, tt.want)
		}
	}
}

func TestBearerToken(t *testing.T) {
	for _, tt := range []struct {
		header, token string
		ok            bool
	}{
		{"Bearer s3cret", "s3cret", true},
		{"bearer s3cret", "s3cret", true},
		{"BEARER s3cret", "s3cret", true},
		{"Bearer   s3cret", "s3cret", true},
		{"Bearers3cret", "", false},
		{"Basic czNjcmV0", "", false},
		{"s3cret", "", false},
		{"", "", false},
	} {
		token, ok := bearerToken(tt.header)
		if token != tt.token || ok != tt.ok {
			t.Errorf("bearerToken(%q): got %q, %v; want %q, %v", tt.header, token, ok, tt.token, tt.ok)
		}
	}
}
