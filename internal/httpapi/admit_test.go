package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestAdmitRefusesBeforeIngest: while Admit refuses (a low disk), a post is
// answered 503 with Retry-After and nothing of it is claimed; once Admit
// lets it through, the same body counts in full.
func TestAdmitRefusesBeforeIngest(t *testing.T) {
	var refuse atomic.Bool
	refuse.Store(true)
	srv := newServer(t, Options{RetryAfter: 3 * time.Second, Admit: func() error {
		if refuse.Load() {
			return errors.New("disk space low: 1.0 MiB free")
		}
		return nil
	}})
	body := read(t, "conversation.ndjson")
	req, _ := http.NewRequest("POST", srv.URL+"/v1/events", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "3" {
		t.Errorf("refused: got %d Retry-After %q, want 503 and 3", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	refuse.Store(false)
	code, r, raw := post(t, srv.URL, body, nil)
	if code != http.StatusAccepted || r.Occurrences != 3 {
		t.Errorf("admitted: got %d %s, want 202 with the 3 occurrences the refused post did not claim", code, raw)
	}
}

func TestHealthz(t *testing.T) {
	tests := []struct {
		name   string
		health func(context.Context) error
		code   int
		body   string
	}{
		{"healthy", func(context.Context) error { return nil }, 200, `"ok"`},
		{"disk low", func(context.Context) error { return errors.New("ingest refused: disk space low") }, 503, "disk space low"},
		{"store failed", func(context.Context) error { return errors.New("store failed: pebble: fatal commit error") }, 503, "store failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, Options{Health: tt.health})
			resp, err := http.Get(srv.URL + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b strings.Builder
			buf := make([]byte, 512)
			n, _ := resp.Body.Read(buf)
			b.Write(buf[:n])
			if resp.StatusCode != tt.code || !strings.Contains(b.String(), tt.body) {
				t.Errorf("got %d %s, want %d containing %q", resp.StatusCode, b.String(), tt.code, tt.body)
			}
		})
	}
}
