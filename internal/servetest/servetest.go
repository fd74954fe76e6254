// Package servetest runs the real flowmetrics binary for tests: it builds
// it, starts `serve` on a free loopback port, stops it with SIGTERM, and
// builds and posts Genesys events the way EventBridge delivers them. The
// dashboard's restart tests and the browser tests in integration/browser
// share it.
package servetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// Proc is a running `flowmetrics serve`.
type Proc struct {
	Cmd    *exec.Cmd
	Addr   string
	Stderr *LockedBuffer
}

// LockedBuffer is a bytes.Buffer safe for the process writing it and the
// test reading it.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Build builds the flowmetrics binary into dir, in the product's module
// (the repository root, found from this file), as the product builds it,
// whichever module the calling test belongs to.
func Build(t *testing.T, dir string) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("servetest: cannot locate the repository")
	}
	bin := filepath.Join(dir, "flowmetrics")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/flowmetrics")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build flowmetrics: %v\n%s", err, out)
	}
	return bin
}

// Start starts bin serve on a free loopback port with the data dir, and
// waits until /healthz answers.
func Start(t *testing.T, bin, dataDir string, extra ...string) *Proc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &Proc{Addr: addr, Stderr: &LockedBuffer{}}
	s.Cmd = exec.Command(bin, append([]string{"serve", "-listen", addr, "-data-dir", dataDir}, extra...)...)
	s.Cmd.Stderr = s.Stderr
	if err := s.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			return s
		}
	}
	s.Cmd.Process.Kill()
	s.Cmd.Wait()
	t.Fatalf("serve did not come up: %s", s.Stderr)
	return nil
}

// Stop sends SIGTERM and fails the test unless serve exits cleanly within
// 20 s.
func (s *Proc) Stop(t *testing.T) {
	t.Helper()
	s.Cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- s.Cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve exited: %v\n%s", err, s.Stderr)
		}
	case <-time.After(20 * time.Second):
		s.Cmd.Process.Kill()
		<-done
		t.Errorf("serve did not stop within 20 s of SIGTERM\n%s", s.Stderr)
	}
}

// GetJSON decodes the JSON answer of GET url into v; anything but a 200 with
// valid JSON fails the test.
func GetJSON(t *testing.T, url string, v any) {
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

// Event is one Genesys attributes event as EventBridge delivers it: a
// conversation's whole attribute map.
func Event(conv string, at time.Time, attrs map[string]string) string {
	return string(genesys.Envelope{
		Conversation: conv, Participant: "p-" + conv[:min(8, len(conv))], Time: at, Attributes: attrs,
		ID: "ev-" + conv + "-" + fmt.Sprint(at.UnixNano()), Source: "aws.partner/genesys.com/cloud/org/flow-metrics",
	}.JSON())
}

// Attr is a flow metric attribute name as a flow writes it.
func Attr(flow, metric string, at time.Time) string {
	return genesys.AttributeName(flow, metric, at)
}

// Post sends events to serve's /v1/events as NDJSON, 500 a request; any
// answer but a 2xx fails the test.
func Post(t *testing.T, addr string, events []string) {
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
