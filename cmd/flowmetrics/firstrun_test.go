package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/diskguard"
	"github.com/flowmetrics/flowmetrics/internal/golden"
)

// TestHelp: every command's -h exits 0 and lists its flags with their
// defaults on stdout.
func TestHelp(t *testing.T) {
	tests := []struct {
		args []string
		want []string
	}{
		{[]string{"-h"}, []string{"serve", "replay", "demo", "boards", "lambda", "version"}},
		{[]string{"help"}, []string{"serve", "replay", "demo", "boards"}},
		{[]string{"serve", "-h"}, []string{"Usage: flowmetrics serve", "-config", "-listen", "(default 127.0.0.1:8080)", "-data-dir", "(default ./data)", "-insecure", "-check-config", "-log-level", `(default "info")`, "-demo",
			"POST /v1/events", "GET  /metrics", "GET  /healthz", "GET  /", "flush_interval"}},
		{[]string{"help", "serve"}, []string{"Usage: flowmetrics serve", "POST /v1/events"}},
		{[]string{"replay", "-h"}, []string{"Usage: flowmetrics replay [flags] FILE…", "-config", "-data-dir", "-o", "-bucket", "-progress", "(default true)", "-log-level", `(default "warn")`, "Exit status"}},
		{[]string{"demo", "-h"}, []string{"Usage: flowmetrics demo", "-url", `(default "http://127.0.0.1:8080")`, "-seed", "-rate", "(default 2)", "-incident-every", "(default 10m0s)", "-backfill", "(default 55m0s)", "-split-a", "(default 0.5)", "-duplicates", "-late", "-for"}},
		{[]string{"boards", "-h"}, []string{"Usage: flowmetrics boards", "-config", "-out", `(default "boards")`}},
		{[]string{"lambda", "-h"}, []string{"Usage: flowmetrics lambda", "FLOWMETRICS_"}},
		{[]string{"version", "-h"}, []string{"Usage: flowmetrics version"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(binary, tt.args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("got %v (stderr %q), want exit status 0", err, stderr.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
		})
	}
}

// TestBadFlagExitsTwo: a flag error is a usage error, with the usage on
// stderr.
func TestBadFlagExitsTwo(t *testing.T) {
	for _, c := range []string{"serve", "replay", "demo", "boards", "lambda", "version"} {
		var stderr bytes.Buffer
		err := run(context.Background(), []string{c, "-no-such-flag"}, strings.NewReader(""), io.Discard, &stderr)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 2 || errors.Is(err, flag.ErrHelp) {
			t.Errorf("%s -no-such-flag: got %v, want a usage error (exit 2)", c, err)
		}
		if !strings.Contains(stderr.String(), "Usage: flowmetrics "+c) {
			t.Errorf("%s -no-such-flag: stderr lacks the usage: %q", c, stderr.String())
		}
	}
}

func TestVersionOf(t *testing.T) {
	tests := []struct {
		name string
		bi   debug.BuildInfo
		want string
	}{
		{"go install @version", debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, "v1.4.0"},
		{"pseudo-version from VCS", debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261201151752-c887f83b23a9+dirty"}}, "v0.0.0-20261201151752-c887f83b23a9+dirty"},
		{"revision only", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "c887f83b23a974b87e3b739c298f5717d75333e0"}, {Key: "vcs.modified", Value: "true"}}}, "devel-c887f83b23a9-dirty"},
		{"nothing known", debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
	}
	for _, tt := range tests {
		if got := versionOf(&tt.bi); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.want)
		}
	}
}

// waitMetrics polls /metrics until every pattern matches or the deadline.
func waitMetrics(t *testing.T, addr, secret string, within time.Duration, patterns ...string) string {
	t.Helper()
	var last string
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
		// With a secret, /metrics needs it too (http.protect_reads).
		req.Header.Set("X-Flowmetrics-Secret", secret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = string(b)
		ok := true
		for _, p := range patterns {
			if !regexp.MustCompile(p).MatchString(last) {
				ok = false
				break
			}
		}
		if ok {
			return last
		}
	}
	t.Fatalf("/metrics never matched %q within %v; last:\n%s", patterns, within, last)
	return ""
}

// demoShows is what the demo's traffic must make visible at once: every
// flow, the malformed attribute, and nothing rejected.
var demoShows = []string{
	`genesys_flow_metric_total\{flow="CustomerRouting",metric="Transferred"\} [1-9]`,
	`genesys_flow_metric_total\{flow="Billing Main",metric="PaymentTaken"\} [1-9]`,
	`genesys_flow_metric_total\{flow="Bot.Intent-Router",metric="Start"\} [1-9]`,
	`genesys_flow_metric_total\{flow="Callback Offer",metric="OfferedA"\} [1-9]`,
	`genesys_flow_metric_total\{flow="Callback Offer",metric="OfferedB"\} [1-9]`,
	`flowmetrics_malformed_attributes_total\{flow="Après Vente"\} [1-9]`,
	`flowmetrics_records_accepted_total [1-9]`,
}

// TestServeDemo: serve --demo, on an empty data directory, any listen
// address and with a shared secret, shows demo traffic within seconds.
func TestServeDemo(t *testing.T) {
	addr := freeAddr(t)
	dir := t.TempDir()
	s := &server{stderr: &bytes.Buffer{}, addr: addr}
	s.cmd = exec.Command(binary, "serve", "--demo", "-data-dir", dir, "-listen", addr)
	s.cmd.Env = append(os.Environ(), "FLOWMETRICS_SECRET=demo-secret")
	s.cmd.Stderr = &syncWriter{w: s.stderr}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		if err := s.cmd.Wait(); err != nil {
			t.Errorf("serve --demo did not stop cleanly: %v\n%s", err, s.stderr)
		}
	}()
	text := waitMetrics(t, addr, "demo-secret", 20*time.Second, demoShows...)
	if regexp.MustCompile(`flowmetrics_records_rejected_total\{[^}]*\} [1-9]`).MatchString(text) {
		t.Errorf("demo records were rejected:\n%s", text)
	}
	if _, err := os.Stat(filepath.Join(dir, "demo", "state")); err != nil {
		t.Errorf("serve --demo keeps its store in <data_dir>/demo: %v", err)
	}
	for _, b := range []string{filepath.Join(dir, diskguard.BallastName), filepath.Join(dir, "demo", diskguard.BallastName)} {
		if _, err := os.Stat(b); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("serve --demo wrote an emergency ballast (%s): %v", b, err)
		}
	}
}

// diskUse is the space the files under dir take on the disk.
func diskUse(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFirstRunIsLight: a start that cannot listen writes nothing, and a
// fresh data directory gets the smallest emergency ballast, not one sized
// from the disk.
func TestFirstRunIsLight(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	for _, args := range [][]string{
		{"serve", "-data-dir", filepath.Join(dir, "data"), "-listen", taken.Addr().String()},
		{"serve", "--demo", "-data-dir", filepath.Join(dir, "data"), "-listen", taken.Addr().String()},
	} {
		out, err := exec.Command(binary, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "address already in use") {
			t.Errorf("%v on a port in use: got %v %s, want a failure naming the address", args, err, out)
		}
		if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%v on a port in use: the data directory was created (%v), want nothing written", args, err)
		}
	}

	data := filepath.Join(dir, "fresh")
	srv := startServe(t, "-data-dir", data, "-listen", freeAddr(t))
	srv.cmd.Process.Signal(syscall.SIGTERM)
	if err := srv.cmd.Wait(); err != nil {
		t.Fatalf("serve: %v\n%s", err, srv.stderr)
	}
	fi, err := os.Stat(filepath.Join(data, diskguard.BallastName))
	if err != nil || fi.Size() != diskguard.MinAutoBallast {
		t.Errorf("fresh data directory: got ballast %v %v, want %d bytes", fi, err, diskguard.MinAutoBallast)
	}
	use := diskUse(t, data)
	t.Logf("a fresh data directory after a start and a stop: %.1f MiB on disk", float64(use)/(1<<20))
	if use > 16<<20 {
		t.Errorf("fresh data directory: %.1f MiB on disk, want a few MiB", float64(use)/(1<<20))
	}
}

// TestDemoCommand: flowmetrics demo posts to a running serve with its
// secret, and stops by itself on a wrong one, without retrying.
func TestDemoCommand(t *testing.T) {
	addr := freeAddr(t)
	s := &server{stderr: &bytes.Buffer{}, addr: addr}
	s.cmd = exec.Command(binary, "serve", "-data-dir", t.TempDir(), "-listen", addr)
	s.cmd.Env = append(os.Environ(), "FLOWMETRICS_SECRET=right")
	s.cmd.Stderr = &syncWriter{w: s.stderr}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		s.cmd.Wait()
	}()

	out := runDemoPastBackfill(t, "FLOWMETRICS_SECRET=right", "-url", "http://"+addr, "-backfill", "10m", "-seed", "42")
	if !regexp.MustCompile(`demo: posted [1-9][0-9]* events in [1-9][0-9]* requests: [1-9][0-9]* occurrences, 0 rejected`).MatchString(out) {
		t.Errorf("demo's summary: %s", out)
	}
	waitMetrics(t, addr, "right", 10*time.Second, demoShows...)

	// No -for: a demo that kept retrying the 401 would run until the
	// deadline kills it. How fast it gives up is the machine's business.
	ctx, cancel := context.WithTimeout(context.Background(), demoDeadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "demo", "-url", "http://"+addr, "-backfill", "10m", "-seed", "42")
	cmd.Env = append(os.Environ(), "FLOWMETRICS_SECRET=wrong")
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(b), "401") {
		t.Errorf("demo with a wrong secret: got %v, want it to stop by itself with exit status 1 naming the 401:\n%s", err, b)
	}
}

// demoDeadline bounds a demo run in the tests; they wait for what they
// need, not a fixed time, so it only matters when something is wrong.
const demoDeadline = 60 * time.Second

// runDemoPastBackfill runs flowmetrics demo with args (and env added to its
// environment) until it logs that its backfill is posted, then interrupts
// it and returns its output. It fails the test unless the demo ends cleanly
// within demoDeadline.
func runDemoPastBackfill(t *testing.T, env string, args ...string) string {
	t.Helper()
	out := &syncWriter{w: &bytes.Buffer{}}
	cmd := exec.Command(binary, append([]string{"demo"}, args...)...)
	if env != "" {
		cmd.Env = append(os.Environ(), env)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	text := func() string {
		out.mu.Lock()
		defer out.mu.Unlock()
		return out.w.(*bytes.Buffer).String()
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(demoDeadline)
	for interrupted := false; ; {
		select {
		case err := <-done:
			if err != nil || !interrupted {
				t.Fatalf("demo %q: ended with %v before it was interrupted:\n%s", args, err, text())
			}
			return text()
		case <-deadline:
			cmd.Process.Kill()
			<-done
			t.Fatalf("demo %q: not done within %v:\n%s", args, demoDeadline, text())
		case <-time.After(50 * time.Millisecond):
			if !interrupted && strings.Contains(text(), "demo: backfill posted") {
				cmd.Process.Signal(os.Interrupt)
				interrupted = true
			}
		}
	}
}

// TestDemoRestartCountsNothingTwice: flowmetrics demo run twice against one
// serve, with its default seed, backfills the same ten minutes twice; the
// second run's conversations are the first's, so serve counts only what is
// new since.
func TestDemoRestartCountsNothingTwice(t *testing.T) {
	addr := freeAddr(t)
	srv := startServe(t, "-data-dir", t.TempDir(), "-listen", addr)
	defer func() {
		srv.cmd.Process.Signal(syscall.SIGTERM)
		srv.cmd.Wait()
	}()
	summary := regexp.MustCompile(`demo: posted ([0-9]+) events in [0-9]+ requests: ([0-9]+) occurrences, 0 rejected`)
	var events, occurrences [2]int
	for i := range 2 {
		// Each run posts its whole backfill before it is stopped, however
		// slow the machine: a run stopped halfway would leave the second
		// one conversations that are new to serve.
		out := runDemoPastBackfill(t, "", "-url", "http://"+addr, "-backfill", "10m")
		m := summary.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("demo run %d: no summary:\n%s", i+1, out)
		}
		events[i], _ = strconv.Atoi(m[1])
		occurrences[i], _ = strconv.Atoi(m[2])
	}
	t.Logf("first run: %d events, %d occurrences; second: %d events, %d occurrences", events[0], occurrences[0], events[1], occurrences[1])
	// The second run posts as much, but only the few seconds after the
	// first run's end are new.
	if occurrences[0] == 0 || events[1] < events[0]/2 || occurrences[1] > occurrences[0]/10 {
		t.Errorf("restarted demo: got %d of its %d events' occurrences counted again after %d, want only the seconds since the first run", occurrences[1], events[1], occurrences[0])
	}
}

// boardExamples are the boards committed under deploy/boards, with the
// arguments that made them (also in each flowmetrics.yaml).
var boardExamples = map[string][]string{
	"default": nil,
	"per-metric": {"-spike", "Billing Main/PaymentFailed",
		"-metric", "Billing Main/PaymentFailed", "-metric", "Billing Main/PaymentTaken",
		"-metric", "CustomerRouting/Transferred", "-metric", "CustomerRouting/Unknown",
		"-metric", "Callback Offer/AcceptedA", "-metric", "Callback Offer/AcceptedB"},
}

// TestBoardsExamples: the boards under deploy/boards are what flowmetrics
// boards writes for their configs (go test -update rewrites them).
func TestBoardsExamples(t *testing.T) {
	for name, extra := range boardExamples {
		dir := filepath.Join("..", "..", "deploy", "boards", name)
		out := t.TempDir()
		args := append([]string{"boards", "-config", filepath.Join(dir, "flowmetrics.yaml"), "-out", out}, extra...)
		if b, err := exec.Command(binary, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, b)
		}
		entries, err := os.ReadDir(out)
		if err != nil || len(entries) != 5 {
			t.Fatalf("%s: wrote %d files (%v), want 5", name, len(entries), err)
		}
		for _, e := range entries {
			got, err := os.ReadFile(filepath.Join(out, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			golden.Check(t, filepath.Join(dir, e.Name()), got)
		}
	}
}
