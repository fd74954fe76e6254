package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/httpapi"
)

// TestOversizedHeaderRefused sends the real serve a request whose header is
// past httpapi.MaxHeaderBytes (Go's own default would take 1 MiB): it gets
// 431, and serve goes on answering, a request just under the bound
// included.
func TestOversizedHeaderRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts serve")
	}
	s := startServe(t, "-listen", freeAddr(t), "-data-dir", t.TempDir())
	defer func() { s.cmd.Process.Kill(); s.cmd.Wait() }()
	tests := []struct {
		name  string
		bytes int
		want  int
	}{
		{"twice the bound", 2 * httpapi.MaxHeaderBytes, http.StatusRequestHeaderFieldsTooLarge},
		{"just past the bound and its slack", httpapi.MaxHeaderBytes + 4096 + 1024, http.StatusRequestHeaderFieldsTooLarge},
		{"Go's default of 1 MiB", 1 << 20, http.StatusRequestHeaderFieldsTooLarge},
		{"under the bound", httpapi.MaxHeaderBytes - 1024, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rawGet(t, s.addr, tt.bytes); got != tt.want {
				t.Errorf("a %d-byte header: got %d, want %d", tt.bytes, got, tt.want)
			}
			resp, err := http.Get("http://" + s.addr + "/healthz")
			if err != nil {
				t.Fatalf("serve stopped answering: %v\n%s", err, s.log())
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("/healthz after it: got %s, want 200", resp.Status)
			}
		})
	}
}

// rawGet sends GET /healthz with a header of about n bytes, written by
// hand so nothing on the client's side cuts it, and returns the status.
func rawGet(t *testing.T, addr string, n int) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	pad := strings.Repeat("a", n)
	go fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nX-Pad: %s\r\nConnection: close\r\n\r\n", addr, pad)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestConnectionsBounded: serve holds at most http.max_connections
// connections at once, so that clients that open connections and never
// finish a request cannot make its memory grow with their number. A
// connection beyond the bound waits, unanswered, until one of the others
// closes, and is then served.
func TestConnectionsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts serve")
	}
	const limit = 4
	cfg := filepath.Join(t.TempDir(), "flowmetrics.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("http:\n  max_connections: %d\n", limit)), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, "-config", cfg, "-listen", freeAddr(t), "-data-dir", t.TempDir())
	defer func() { s.cmd.Process.Kill(); s.cmd.Wait() }()
	http.DefaultClient.CloseIdleConnections() // startServe's probe held one
	time.Sleep(200 * time.Millisecond)        // for serve to see it close

	// limit connections, each inside a request header that never ends.
	var held []net.Conn
	for range limit {
		c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: %s\r\nX-Pad: ", s.addr); err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(200 * time.Millisecond) // for serve to accept them

	extra, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if _, err := fmt.Fprintf(extra, "GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", s.addr); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(extra)
	extra.SetReadDeadline(time.Now().Add(time.Second))
	if resp, err := http.ReadResponse(r, nil); err == nil {
		resp.Body.Close()
		t.Fatalf("connection %d of %d allowed was served at once (%s)", limit+1, limit, resp.Status)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("connection %d: want no answer yet, got %v", limit+1, err)
	}

	held[0].Close()
	extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("connection %d was not served after another closed: %v\n%s", limit+1, err, s.log())
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("connection %d: got %s, want 200", limit+1, resp.Status)
	}
}
