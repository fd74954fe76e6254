package httpapi

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestHostAllowed(t *testing.T) {
	allowed := hostNames([]string{"flowmetrics.example.com", "Proxy.Internal."})
	for _, tt := range []struct {
		host string
		want bool
	}{
		{"localhost", true},
		{"localhost:8080", true},
		{"LocalHost:8080", true},
		{"localhost.:8080", true},
		{"127.0.0.1", true},
		{"127.0.0.1:8080", true},
		{"[::1]", true},
		{"[::1]:8080", true},
		// An IP literal is never resolved, so it cannot be rebound.
		{"10.1.2.3:8080", true},
		{"[fd00::1]:8080", true},
		{"flowmetrics.example.com", true},
		{"FLOWMETRICS.example.com:443", true},
		{"flowmetrics.example.com.", true},
		{"proxy.internal", true},
		// No Host: HTTP/1.0 health checks; a browser always sends one.
		{"", true},
		{"attacker.example", false},
		{"attacker.example:8080", false},
		{"localhost.attacker.example", false},
		{"127.0.0.1.nip.io:8080", false},
		{"example.com", false},
		{"sub.flowmetrics.example.com", false},
	} {
		if got := hostAllowed(tt.host, allowed); got != tt.want {
			t.Errorf("hostAllowed(%q): got %v, want %v", tt.host, got, tt.want)
		}
	}
}

// A page on attacker.example rebound to 127.0.0.1 reaches serve with
// Host: attacker.example. Every endpoint refuses it with 421, and its
// events count nothing; the same request by a served name is answered.
func TestDNSRebindingRefused(t *testing.T) {
	dash := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "dashboard") })
	srv := newTestServer(t, nil, Options{Dashboard: dash, DashboardAPI: "/api/v1/", AllowedHosts: []string{"flowmetrics.example.com"}})
	body := read(t, "conversation.ndjson")
	do := func(method, path, host string) (int, string) {
		t.Helper()
		var rd io.Reader
		if method == "POST" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, srv.URL+path, rd)
		req.Host = host
		req.Header.Set("Content-Type", "application/x-ndjson")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	endpoints := []struct{ method, path string }{
		{"POST", "/v1/events"}, {"GET", "/"}, {"GET", "/api/v1/series"}, {"GET", "/metrics"}, {"GET", "/healthz"},
	}
	for _, e := range endpoints {
		for _, host := range []string{"attacker.example", "attacker.example:8080"} {
			if code, b := do(e.method, e.path, host); code != http.StatusMisdirectedRequest || !strings.Contains(b, "http.allowed_hosts") {
				t.Errorf("%s %s, Host %s: got %d %s, want 421 naming http.allowed_hosts", e.method, e.path, host, code, b)
			}
		}
	}
	if got := testutil.ToFloat64(srv.m.RecordsRead); got != 0 {
		t.Errorf("refused posts: got %v records read, want 0", got)
	}
	if got := testutil.ToFloat64(srv.m.HTTPRefused.WithLabelValues("host_not_allowed")); got != float64(2*len(endpoints)) {
		t.Errorf("got http_refused_total{reason=host_not_allowed} %v, want %d", got, 2*len(endpoints))
	}
	if code, b := do("POST", "/v1/events", "flowmetrics.example.com"); code != 202 || !strings.Contains(b, `"occurrences":3`) {
		t.Errorf("allowed host: got %d %s, want 202 with the 3 occurrences the refused posts did not claim", code, b)
	}
	for _, e := range endpoints[1:] {
		for _, host := range []string{"localhost:8080", "127.0.0.1", "[::1]:8080", "flowmetrics.example.com"} {
			if code, b := do(e.method, e.path, host); code != 200 {
				t.Errorf("%s %s, Host %s: got %d %.200s, want 200", e.method, e.path, host, code, b)
			}
		}
	}
}
