package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// -check-config refuses what serve refuses, with the same message and exit
// status, because both call config.Check.
func TestCheckConfigRefusesWhatServeRefuses(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		args []string
		env  []string
		want string
	}{
		{"datadog without its key", "sinks: {datadog: {}}\n", nil, []string{"DD_API_KEY="},
			"sinks.datadog.api_key_env: environment variable DD_API_KEY is not set: it must hold the API key"},
		{"cache outlives retention", "store: {retention: 30m}\n", nil, nil,
			"pipeline.cache_ttl (1h0m0s) must be shorter than store.retention (30m0s)"},
		{"misspelt key", "pipeline:\n  flush_intervall: 2s\n", nil, nil,
			"pipeline.flush_intervall: unknown key; did you mean flush_interval? (line 2)"},
		{"open listen without a secret", "", []string{"-listen", "0.0.0.0:0"}, []string{"FLOWMETRICS_SECRET="},
			"refusing to listen on 0.0.0.0:0 without a shared secret"},
		{"protect_reads without a secret", "http: {protect_reads: true}\n", nil, []string{"FLOWMETRICS_SECRET="},
			"http.protect_reads: needs the shared secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "flowmetrics.yaml")
			if err := os.WriteFile(cfg, []byte(tt.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			run := func(extra ...string) (int, string) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				args := append([]string{"serve", "-config", cfg, "-data-dir", filepath.Join(dir, "data"), "-listen", "127.0.0.1:0"}, tt.args...)
				cmd := exec.CommandContext(ctx, binary, append(args, extra...)...)
				cmd.Env = append(os.Environ(), tt.env...)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				err := cmd.Run()
				if ctx.Err() != nil {
					t.Fatalf("serve %v did not refuse the config: %s", extra, stderr.String())
				}
				var ee *exec.ExitError
				if !errors.As(err, &ee) {
					return 0, stderr.String()
				}
				return ee.ExitCode(), stderr.String()
			}
			checkCode, checkOut := run("-check-config")
			serveCode, serveOut := run()
			if checkCode != 2 || !strings.Contains(checkOut, tt.want) {
				t.Errorf("-check-config: got exit %d %q, want 2 with %q", checkCode, checkOut, tt.want)
			}
			if serveCode != checkCode || serveOut != checkOut {
				t.Errorf("serve: got exit %d %q, want what -check-config said: exit %d %q", serveCode, serveOut, checkCode, checkOut)
			}
		})
	}
}

// A first line "[1,2,3]" is one rejected record, not the whole file read
// as one JSON value (which counted 0 of a 2.7 M-event archive), and the
// file is streamed, not held whole.
func TestReplayArrayFirstLine(t *testing.T) {
	const n = 100_000
	path := filepath.Join(t.TempDir(), "archive.ndjson")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("[1,2,3]\n")
	for i := range n {
		fmt.Fprintln(f, occurrenceEvent(i))
	}
	fi, _ := f.Stat()
	f.Close()
	cmd := exec.Command(binary, "replay", "-o", os.DevNull, path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("got %v, want exit 1 for the rejected record", err)
	}
	out := stderr.String()
	want := fmt.Sprintf("replay: read %d, accepted %d, skipped 0, rejected 1, occurrences %d", n+1, n, n)
	if !strings.Contains(out, want) || !strings.Contains(out, "archive.ndjson:1: rejected: not an EventBridge event or detail object: got an array") {
		t.Errorf("got %q, want %q and line 1 named", out, want)
	}
	rss := "unknown"
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = fmt.Sprintf("%d MiB", ru.Maxrss>>10)
	}
	t.Logf("replay of %d MiB (%d events after a [1,2,3] line): peak RSS %s", fi.Size()>>20, n, rss)
}
