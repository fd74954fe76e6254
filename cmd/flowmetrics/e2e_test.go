package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flowmetrics-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "flowmetrics")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building flowmetrics: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type server struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	addr   string
}

func startServe(t *testing.T, args ...string) *server {
	t.Helper()
	s := &server{stderr: &bytes.Buffer{}}
	for i, a := range args {
		if a == "-listen" {
			s.addr = args[i+1]
		}
	}
	s.cmd = exec.Command(binary, append([]string{"serve"}, args...)...)
	s.cmd.Stderr = &syncWriter{w: s.stderr}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + s.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			return s
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.cmd.Process.Kill()
	t.Fatalf("serve did not come up: %s", s.stderr)
	return nil
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// occurrenceEvent builds the attributes event of conversation i: one metric
// attribute whose time puts it alone in its 10 s bucket, so every delivered
// line names exactly one occurrence.
func occurrenceEvent(i int) string {
	at := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 10 * time.Second)
	conv := fmt.Sprintf("c0ffee00-0000-4000-8000-%012d", i)
	ev := map[string]any{
		"version": "0", "id": fmt.Sprintf("id-%d", i),
		"detail-type": "v2.detail.events.conversation.{id}.attributes",
		"source":      "aws.partner/genesys.com/cloud/org/x",
		"detail": map[string]any{
			"topicName": "v2.detail.events.conversation." + conv + ".attributes",
			"version":   "2",
			"eventBody": map[string]any{
				"eventTime": at.UnixMilli(), "conversationId": conv, "participantId": "p1",
				"attributes": map[string]string{
					"CrashTestMetric_Reached(" + at.Format(time.RFC3339Nano) + ")": "",
					"Language": "en-US",
				},
			},
		},
	}
	b, _ := json.Marshal(ev)
	return string(b)
}

// TestSIGKILLLosesNothing kills serve with SIGKILL while a client is
// sending, restarts it on the same data directory, lets the client retry
// what was not acknowledged (as EventBridge does), and checks that the
// JSON-lines sink received every occurrence. It reports the duplicates the
// crash window produced.
func TestSIGKILLLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "points.jsonl")
	cfgPath := filepath.Join(dir, "flowmetrics.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("pipeline: {flush_interval: 50ms}\nsinks:\n  jsonl: {path: %q}\n", out)), 0o644)
	addr := freeAddr(t)
	args := []string{"-config", cfgPath, "-data-dir", filepath.Join(dir, "data"), "-listen", addr}

	const conversations, perRequest, clients = 4000, 40, 4
	srv := startServe(t, args...)

	// Each request carries new events and repeats of earlier ones, as
	// EventBridge's at-least-once delivery does.
	var requests []string
	for start := 0; start < conversations; start += perRequest {
		var lines []string
		for i := start; i < start+perRequest && i < conversations; i++ {
			lines = append(lines, occurrenceEvent(i))
			if i >= 7 {
				lines = append(lines, occurrenceEvent(i-7))
			}
		}
		requests = append(requests, strings.Join(lines, "\n"))
	}
	var acked atomic.Int64
	var retries atomic.Int64
	next := make(chan string)
	go func() {
		for _, r := range requests {
			next <- r
		}
		close(next)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for body := range next {
				for ctx.Err() == nil {
					resp, err := client.Post("http://"+addr+"/v1/events", "application/x-ndjson", strings.NewReader(body))
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode == http.StatusAccepted {
							acked.Add(1)
							break
						}
					}
					retries.Add(1)
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}

	// Kill twice mid-stream.
	for _, at := range []int64{int64(len(requests)) / 4, int64(len(requests)) / 2} {
		for acked.Load() < at && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		srv.cmd.Wait()
		t.Logf("SIGKILL after %d acknowledged requests", acked.Load())
		srv = startServe(t, args...)
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("client did not finish: %d of %d requests acknowledged", acked.Load(), len(requests))
	}
	// A graceful stop flushes what is pending.
	srv.cmd.Process.Signal(syscall.SIGTERM)
	if err := srv.cmd.Wait(); err != nil {
		t.Fatalf("serve after SIGTERM: %v\n%s", err, srv.stderr)
	}

	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	counts := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l struct {
			Flow, Metric, Timestamp string
			Count                   int64
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("bad line %q: %v", sc.Text(), err)
		}
		counts[l.Timestamp] += l.Count
	}
	missing, dups := 0, int64(0)
	for i := 0; i < conversations; i++ {
		ts := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 10 * time.Second).Format(time.RFC3339)
		switch n := counts[ts]; {
		case n == 0:
			missing++
		case n > 1:
			dups += n - 1
		}
	}
	t.Logf("%d occurrences sent in %d requests (%d retried sends); delivered: %d missing, %d duplicates from the crash windows", conversations, len(requests), retries.Load(), missing, dups)
	if missing != 0 {
		t.Errorf("lost %d acknowledged occurrences", missing)
	}
	if len(counts) != conversations {
		t.Errorf("got %d distinct buckets, want %d", len(counts), conversations)
	}
}

func TestServeRefusesOpenListenWithoutSecret(t *testing.T) {
	cmd := exec.Command(binary, "serve", "-listen", "0.0.0.0:0", "-data-dir", t.TempDir())
	cmd.Env = append(os.Environ(), "FLOWMETRICS_SECRET=")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "refusing to listen") {
		t.Errorf("got %v %s, want exit 2 refusing to listen", err, out)
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("pipeline: {bucket: 60s}\n"), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("pipelin: {bucket: 60s}\n"), 0o644)
	if out, err := exec.Command(binary, "serve", "-config", good, "-check-config").CombinedOutput(); err != nil {
		t.Errorf("good config: got %v %s, want success", err, out)
	}
	out, err := exec.Command(binary, "serve", "-config", bad, "-check-config").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "pipelin") {
		t.Errorf("bad config: got %v %s, want exit 2 naming the unknown key", err, out)
	}
}

func TestReplayExitStatusAndSummary(t *testing.T) {
	td := "../../../shared/testdata/"
	tests := []struct {
		name    string
		args    []string
		code    int
		summary string
		lines   int
	}{
		{"sample conversation", []string{td + "conversation.ndjson"}, 0, "replay: read 5, accepted 4, skipped 1, rejected 0, occurrences 3", 3},
		{"a rejected record", []string{td + "conversation.ndjson", "testdata/bad.ndjson"}, 1, "replay: read 8, accepted 5, skipped 1, rejected 2, occurrences 4", 3},
		{"missing file", []string{"nope.ndjson"}, 2, "", 0},
		{"no files", nil, 2, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(binary, append([]string{"replay"}, tt.args...)...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != tt.code {
				t.Errorf("exit status: got %d, want %d (stderr %s)", code, tt.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.summary) {
				t.Errorf("stderr: got %q, want it to contain %q", stderr.String(), tt.summary)
			}
			if n := strings.Count(stdout.String(), "\n"); n != tt.lines {
				t.Errorf("stdout: got %d lines, want %d", n, tt.lines)
			}
			if tt.code == 1 && !strings.Contains(stderr.String(), "testdata/bad.ndjson:2: rejected: ") {
				t.Errorf("stderr: got %q, want the rejected record named by file and line", stderr.String())
			}
		})
	}
}

// TestReplayIntoDataDirDoesNotRecount replays the same file twice against
// one data directory: the second run counts nothing.
func TestReplayIntoDataDirDoesNotRecount(t *testing.T) {
	dir := t.TempDir()
	for i, want := range []string{"occurrences 3", "occurrences 0"} {
		out, err := exec.Command(binary, "replay", "-data-dir", dir, "../../../shared/testdata/conversation.ndjson").CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("run %d: got %v %s, want %q", i+1, err, out, want)
		}
	}
}

// TestReplayLeavesServesBacklogAlone: serve's JSON-lines sink has points
// pending in the data directory; a replay into the same directory, also
// writing JSON lines, must not take them, and serve delivers them on its
// next start.
func TestReplayLeavesServesBacklogAlone(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	served := filepath.Join(dir, "served.jsonl")
	cfgPath := filepath.Join(dir, "flowmetrics.yaml")
	// A flush interval far beyond the test keeps serve's points pending
	// until SIGKILL, so they are in the outbox when replay runs.
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("pipeline: {flush_interval: 1h}\nsinks:\n  prometheus: {enabled: false}\n  jsonl: {path: %q}\n", served)), 0o644)
	addr := freeAddr(t)
	args := []string{"-config", cfgPath, "-data-dir", data, "-listen", addr}
	srv := startServe(t, args...)
	body := occurrenceEvent(1) + "\n" + occurrenceEvent(2)
	resp, err := http.Post("http://"+addr+"/v1/events", "application/x-ndjson", strings.NewReader(body))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("post: %v %v", err, resp)
	}
	resp.Body.Close()
	srv.cmd.Process.Signal(syscall.SIGKILL)
	srv.cmd.Wait()

	out, err := exec.Command(binary, "replay", "-data-dir", data, "../../../shared/testdata/conversation.ndjson").Output()
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	if n := strings.Count(string(out), "\n"); n != 3 {
		t.Errorf("replay output: got %d lines, want the sample's 3 (and none of serve's):\n%s", n, out)
	}

	srv = startServe(t, args...)
	srv.cmd.Process.Signal(syscall.SIGTERM)
	if err := srv.cmd.Wait(); err != nil {
		t.Fatalf("serve: %v\n%s", err, srv.stderr)
	}
	got, _ := os.ReadFile(served)
	for _, want := range []string{"2026-11-20T00:00:10Z", "2026-11-20T00:00:20Z", "CustomerRouting"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("serve's sink after restart: missing %q in\n%s", want, got)
		}
	}
}

// TestServeDashboard: serve shows what it counted on its dashboard.
func TestServeDashboard(t *testing.T) {
	addr := freeAddr(t)
	srv := startServe(t, "-data-dir", t.TempDir(), "-listen", addr)
	defer func() {
		srv.cmd.Process.Signal(syscall.SIGTERM)
		srv.cmd.Wait()
	}()
	body, _ := os.ReadFile("../../../shared/testdata/conversation.ndjson")
	resp, err := http.Post("http://"+addr+"/v1/events", "application/x-ndjson", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	page, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	html, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if page.StatusCode != 200 || !strings.Contains(string(html), "flowmetrics") {
		t.Fatalf("GET /: got %d, want the dashboard page", page.StatusCode)
	}
	var last string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/api/v1/flows")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = string(b)
		if strings.Contains(last, "Billing Main") && strings.Contains(last, "Transferred") {
			return
		}
	}
	t.Errorf("dashboard JSON never showed the sample's flows; last: %s", last)
}
