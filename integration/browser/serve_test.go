package browser_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The running serve and the events it is sent: the same helpers as
// internal/dashboard's serve tests (serve_test.go, traffic_test.go), which
// this module cannot import.

// serveProc is a running `flowmetrics serve`.
type serveProc struct {
	cmd    *exec.Cmd
	addr   string
	stderr *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// buildServe builds the flowmetrics binary into dir, in the product's
// module (the repository root), as the product builds it.
func buildServe(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "flowmetrics")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/flowmetrics")
	cmd.Dir = filepath.Join("..", "..")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build flowmetrics: %v\n%s", err, out)
	}
	return bin
}

// startServe starts bin serve on a free loopback port with the data dir.
func startServe(t *testing.T, bin, dataDir string, extra ...string) *serveProc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &serveProc{addr: addr, stderr: &lockedBuffer{}}
	s.cmd = exec.Command(bin, append([]string{"serve", "-listen", addr, "-data-dir", dataDir}, extra...)...)
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			return s
		}
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	t.Fatalf("serve did not come up: %s", s.stderr)
	return nil
}

func (s *serveProc) stop(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve exited: %v\n%s", err, s.stderr)
		}
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-done
		t.Errorf("serve did not stop within 20 s of SIGTERM\n%s", s.stderr)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", url, err, b)
	}
}

// event is one Genesys attributes event as EventBridge delivers it: a
// conversation's whole attribute map.
func event(conv string, at time.Time, attrs map[string]string) string {
	ev := map[string]any{
		"version": "0", "id": "ev-" + conv + "-" + fmt.Sprint(at.UnixNano()),
		"detail-type": "v2.detail.events.conversation.{id}.attributes",
		"source":      "aws.partner/genesys.com/cloud/org/flow-metrics",
		"time":        at.UTC().Format(time.RFC3339),
		"detail": map[string]any{
			"topicName": "v2.detail.events.conversation." + conv + ".attributes",
			"version":   "2",
			"eventBody": map[string]any{
				"eventTime": at.UnixMilli(), "conversationId": conv, "participantId": "p-" + conv[:8],
				"attributes": attrs,
			},
		},
	}
	b, _ := json.Marshal(ev)
	return string(b)
}

// attr is a flow metric attribute name as a flow writes it.
func attr(flow, metric string, at time.Time) string {
	return flow + "Metric_" + metric + "(" + at.UTC().Format("2006-01-02T15:04:05.000Z") + ")"
}

// post sends events to serve's /v1/events in batches.
func post(t *testing.T, addr string, events []string) {
	t.Helper()
	for len(events) > 0 {
		k := min(len(events), 500)
		body := strings.Join(events[:k], "\n") + "\n"
		events = events[k:]
		resp, err := http.Post("http://"+addr+"/v1/events", "application/x-ndjson", bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatalf("post events: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("post events: got %s, want 2xx", resp.Status)
		}
	}
}
