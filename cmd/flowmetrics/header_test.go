package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
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
