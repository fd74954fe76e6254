package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
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

func freeAddr(t testing.TB) string {
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
	out    *syncWriter // writes stderr
	addr   string
}

func startServe(t *testing.T, args ...string) *server {
	t.Helper()
	s := &server{stderr: &bytes.Buffer{}}
	s.out = &syncWriter{w: s.stderr}
	for i, a := range args {
		if a == "-listen" {
			s.addr = args[i+1]
		}
	}
	s.cmd = exec.Command(binary, append([]string{"serve"}, args...)...)
	s.cmd.Stderr = s.out
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

// log returns what serve has written to stderr so far.
func (s *server) log() string {
	s.out.mu.Lock()
	defer s.out.mu.Unlock()
	return s.stderr.String()
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
	return string(genesys.Envelope{
		Conversation: conv, Participant: "p1", Time: at, ID: fmt.Sprintf("id-%d", i), Source: "aws.partner/genesys.com/cloud/org/x",
		Attributes: map[string]string{
			"CrashTestMetric_Reached(" + at.Format(time.RFC3339Nano) + ")": "",
			"Language": "en-US",
		},
	}.JSON())
}

// TestSIGKILLLosesNothing is a kill storm: four clients post events to
// serve while it is killed with SIGKILL at least stormKills times, at random
// moments (mid-request, mid-claim, mid-write of the JSON-lines file), and
// restarted on the same data directory each time. The clients resend every
// request that was not acknowledged, as EventBridge does, and every request
// also repeats earlier events. At the end the JSON-lines file must hold every
// occurrence exactly once: the sink promises no duplicates (it cuts its file
// back to the offset committed with its cursor), so one duplicate fails.
// A StatsD sink to a UDP daemon in the test also gets every occurrence; its
// documented duplicate window is at most the batch in flight at each kill.
func TestSIGKILLLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	const (
		stormKills  = 24
		perRequest  = 40
		clients     = 4
		minRequests = 200
		// Small batches: more sends for the kills to hit, and a small
		// StatsD duplicate window (one batch per kill).
		batchEntries = 4
	)
	dir := t.TempDir()
	out := filepath.Join(dir, "points.jsonl")
	cfgPath := filepath.Join(dir, "flowmetrics.yaml")
	statsdAddr, statsdSum := statsdDaemon(t)
	// A short flush interval makes the sinks write often, so kills land
	// inside their writes.
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("http: {shutdown_timeout: 10s}\npipeline: {flush_interval: 10ms, batch_entries: %d}\nsinks:\n  jsonl: {path: %q}\n  statsd: {addr: %q}\n", batchEntries, out, statsdAddr)), 0o644)
	addr := freeAddr(t)
	args := []string{"-config", cfgPath, "-data-dir", filepath.Join(dir, "data"), "-listen", addr}
	// Bounded: 55 s for the storm and the clients, 15 s for the last
	// start and 15 s for the graceful stop.
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	started := time.Now()

	// Requests are made until the storm is over (and at least
	// minRequests): request r carries conversations r*perRequest… and
	// repeats of the 7 conversations before them.
	stormOver := make(chan struct{})
	next := make(chan string)
	var made atomic.Int64
	go func() {
		defer close(next)
		for r := 0; ; r++ {
			if r >= minRequests {
				select {
				case <-stormOver:
					return
				default:
				}
			}
			var lines []string
			for i := r * perRequest; i < (r+1)*perRequest; i++ {
				lines = append(lines, occurrenceEvent(i))
				if i >= 7 {
					lines = append(lines, occurrenceEvent(i-7))
				}
			}
			select {
			case next <- strings.Join(lines, "\n"):
				made.Add(1)
			case <-ctx.Done():
				return
			}
		}
	}()

	srv := startServe(t, args...)
	var acked, retries atomic.Int64
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
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}

	// The storm: SIGKILL at a random moment 20–220 ms after the server
	// answers, restart, repeat.
	torn, cut := 0, 0
	for k := 0; k < stormKills && ctx.Err() == nil; k++ {
		time.Sleep(time.Duration(20+rand.IntN(200)) * time.Millisecond)
		if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		srv.cmd.Wait()
		if b, err := os.ReadFile(out); err == nil && len(b) > 0 && b[len(b)-1] != '\n' {
			torn++ // killed mid-line
		}
		srv = startServe(t, args...)
		if strings.Contains(srv.log(), "cut the unacknowledged end") {
			cut++ // killed between writing a batch and committing its cursor
		}
	}
	close(stormOver)
	wg.Wait()
	if ctx.Err() != nil {
		srv.cmd.Process.Kill()
		t.Fatalf("clients did not finish within the bound: %d of %d requests acknowledged", acked.Load(), made.Load())
	}
	// A graceful stop flushes what is pending, within its 10 s
	// shutdown_timeout.
	srv.cmd.Process.Signal(syscall.SIGTERM)
	stopped := make(chan error, 1)
	go func() { stopped <- srv.cmd.Wait() }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("serve after SIGTERM: %v\n%s", err, srv.log())
		}
	case <-time.After(15 * time.Second):
		srv.cmd.Process.Kill()
		t.Fatalf("serve did not stop within 15 s of SIGTERM:\n%s", srv.log())
	}

	counts, lines := readJSONLCounts(t, out)
	conversations := int(made.Load()) * perRequest
	missing, dups := 0, int64(0)
	for i := 0; i < conversations; i++ {
		switch n := counts[bucketOf(i)]; {
		case n == 0:
			missing++
		case n > 1:
			dups += n - 1
		}
	}
	t.Logf("%d SIGKILLs (%d mid-line, %d after a batch was written and before its cursor) in %v; %d occurrences in %d requests (%d resent), %d lines delivered: %d missing, %d duplicates",
		stormKills, torn, cut, time.Since(started).Round(time.Millisecond), conversations, made.Load(), retries.Load(), lines, missing, dups)
	if missing != 0 {
		t.Errorf("lost %d acknowledged occurrences", missing)
	}
	if dups != 0 {
		t.Errorf("got %d duplicate occurrences in the JSON-lines file, want 0", dups)
	}
	if len(counts) != conversations {
		t.Errorf("got %d distinct buckets, want %d", len(counts), conversations)
	}
	// StatsD adds up: the daemon's sum is every occurrence plus the batches
	// in flight at the kills. An entry holds the new occurrences of one
	// claim, which the requests in the store at once share (one per
	// client): at most clients × (perRequest+7).
	sum := statsdSum()
	window := int64(stormKills * batchEntries * clients * (perRequest + 7))
	t.Logf("statsd: the daemon added up %d for %d occurrences (%+d; the documented window allows up to %d)", sum, conversations, sum-int64(conversations), window)
	if sum < int64(conversations) {
		t.Errorf("statsd: lost %d occurrences", int64(conversations)-sum)
	}
	if sum-int64(conversations) > window {
		t.Errorf("statsd: %d duplicates, beyond one batch per kill (%d)", sum-int64(conversations), window)
	}
}

// statsdDaemon listens for StatsD counters on a UDP port of 127.0.0.1 and
// returns its address and a function that waits until nothing has come for
// a moment and returns the sum of the counts received.
func statsdDaemon(t *testing.T) (string, func() int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var sum, datagrams atomic.Int64
	go func() {
		buf := make([]byte, 70000)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			datagrams.Add(1)
			for _, l := range strings.Split(string(buf[:n]), "\n") {
				_, rest, _ := strings.Cut(l, ":")
				v, _, _ := strings.Cut(rest, "|")
				k, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Errorf("statsd daemon: bad line %q", l)
				}
				sum.Add(k)
			}
		}
	}()
	return pc.LocalAddr().String(), func() int64 {
		for last := int64(-1); last != datagrams.Load(); time.Sleep(100 * time.Millisecond) {
			last = datagrams.Load()
		}
		return sum.Load()
	}
}

// bucketOf is the bucket (timestamp) of occurrenceEvent(i)'s occurrence.
func bucketOf(i int) string {
	return time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 10 * time.Second).Format(time.RFC3339)
}

// readJSONLCounts sums a JSON-lines sink file's counts per bucket; every
// line must be whole and valid.
func readJSONLCounts(t *testing.T, path string) (map[string]int64, int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	counts := map[string]int64{}
	n := 0
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
		n++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return counts, n
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
	td := "../../examples/"
	tests := []struct {
		name    string
		args    []string
		code    int
		summary string
		lines   int
	}{
		// 3 count lines; 3 path lines of the conversation its customer.end
		// closed (a step timing and two exits).
		{"sample conversation", []string{td + "conversation.ndjson"}, 0, "replay: read 5, accepted 5, skipped 0, rejected 0, occurrences 3", 6},
		// One more path line: the exit of bad.ndjson's conversation, which
		// has no customer.end and closes at the end of the replay.
		{"a rejected record", []string{td + "conversation.ndjson", "testdata/bad.ndjson"}, 1, "replay: read 8, accepted 6, skipped 0, rejected 2, occurrences 4", 7},
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
		out, err := exec.Command(binary, "replay", "-data-dir", dir, "../../examples/conversation.ndjson").CombinedOutput()
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

	out, err := exec.Command(binary, "replay", "-data-dir", data, "../../examples/conversation.ndjson").Output()
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	// The sample's 3 counts and the 3 points of its path (its customer.end
	// closes it); serve's conversations have no end and stay open.
	if n := strings.Count(string(out), "\n"); n != 6 {
		t.Errorf("replay output: got %d lines, want the sample's 3 and its path's 3 (and none of serve's):\n%s", n, out)
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
	body, _ := os.ReadFile("../../examples/conversation.ndjson")
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
	// serve routes the page's script too (it is not inline).
	if js, err := http.Get("http://" + addr + "/assets/app.js"); err != nil || js.StatusCode != 200 {
		t.Fatalf("GET /assets/app.js: got %v %v, want 200", js, err)
	} else {
		js.Body.Close()
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

// TestServeWarnsOfAnInterruptedReplay: serve, started on a data directory
// where a replay stopped before delivering everything it counted to its
// sinks, names each such sink and how many points it will never get; a
// replay that delivered everything leaves nothing to warn of.
func TestServeWarnsOfAnInterruptedReplay(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	occ := func(name string) flowmetrics.Occurrence {
		return flowmetrics.Occurrence{Key: "CrashTestMetric_" + name + "(" + at.Format(time.RFC3339Nano) + ")", Flow: "CrashTest", Metric: name, Time: at}
	}
	// What a replay into a fresh data directory leaves when it is killed
	// after its claims and before its deliveries (delivered: the cursor
	// moved past them, as a replay that ran to its end does).
	replayed := func(delivered bool) string {
		data := t.TempDir()
		st, err := pebblestore.Open(filepath.Join(data, "state"), store.Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Register(ctx, []string{replayCursorPrefix + "jsonl"}); err != nil {
			t.Fatal(err)
		}
		if got, err := st.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c0ffee00-0000-4000-8000-000000000001", Occurrences: []flowmetrics.Occurrence{occ("Reached"), occ("Left")}}}); err != nil || len(got) != 2 {
			t.Fatalf("claim: %v %v", got, err)
		}
		if delivered {
			entries, err := st.ReadOutbox(ctx, 0, 10)
			if err != nil || len(entries) != 1 {
				t.Fatalf("outbox: %v %v", entries, err)
			}
			if err := st.AckState(ctx, replayCursorPrefix+"jsonl", entries[0].Seq, nil); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		return data
	}
	for _, delivered := range []bool{false, true} {
		addr := freeAddr(t)
		srv := startServe(t, "-data-dir", replayed(delivered), "-listen", addr)
		srv.cmd.Process.Signal(syscall.SIGTERM)
		if err := srv.cmd.Wait(); err != nil {
			t.Fatalf("serve: %v\n%s", err, srv.log())
		}
		warned := strings.Contains(srv.log(), "stopped before its end")
		switch {
		case !delivered && !strings.Contains(srv.log(), "sink=jsonl points=2"):
			t.Errorf("a replay's two undelivered points: serve did not name them:\n%s", srv.log())
		case delivered && warned:
			t.Errorf("a replay that delivered everything: serve warned:\n%s", srv.log())
		}
	}
}
