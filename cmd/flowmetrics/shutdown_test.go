package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMWithinShutdownTimeout: a sink whose backend accepts the
// connection and never answers cannot flush; SIGTERM must still end serve
// within http.shutdown_timeout, and what it could not deliver stays in the
// outbox for the next start.
func TestSIGTERMWithinShutdownTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hold := make(chan struct{})
	defer close(hold)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { <-hold; c.Close() }() // read nothing, answer nothing
		}
	}()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "flowmetrics.yaml")
	const shutdownTimeout = 2 * time.Second
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("http: {shutdown_timeout: %v}\npipeline: {flush_interval: 50ms}\nsinks:\n  otlp: {endpoint: %q, timeout: 60s}\n", shutdownTimeout, "http://"+ln.Addr().String())), 0o644)
	addr := freeAddr(t)
	srv := startServe(t, "-config", cfgPath, "-data-dir", filepath.Join(dir, "data"), "-listen", addr)
	resp, err := http.Post("http://"+addr+"/v1/events", "application/x-ndjson", strings.NewReader(occurrenceEvent(1)))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("post: %v %v", err, resp)
	}
	resp.Body.Close()
	time.Sleep(300 * time.Millisecond) // the OTLP send is under way, and stuck
	start := time.Now()
	srv.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- srv.cmd.Wait() }()
	select {
	case err := <-done:
		took := time.Since(start)
		t.Logf("SIGTERM: exit after %v (%v)", took.Round(time.Millisecond), err)
		if took > shutdownTimeout+time.Second {
			t.Errorf("SIGTERM took %v, want at most shutdown_timeout %v", took, shutdownTimeout)
		}
		// The stop was not clean: the status and the last line say so.
		log := srv.stderr.String()
		if err == nil || !(strings.Contains(log, "flowmetrics: flush") || strings.Contains(log, "flowmetrics: shutdown: not finished")) {
			t.Errorf("got %v, want a non-zero status and a last line naming the unfinished flush:\n%s", err, log)
		}
	case <-time.After(shutdownTimeout + 10*time.Second):
		srv.cmd.Process.Kill()
		<-done
		t.Fatalf("serve still running %v after SIGTERM with shutdown_timeout %v\n%s", time.Since(start), shutdownTimeout, srv.stderr)
	}
}
