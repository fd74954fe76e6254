package otlp_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// holdProxy forwards to the receiver; while hold is set it forwards a
// request, gets the receiver's 200, and keeps the answer until released:
// the collector has the windows, the sink has not heard so.
type holdProxy struct {
	*proxy
	hmu      sync.Mutex
	hold     bool
	holding  chan struct{} // closed when a request is held
	release  chan struct{}
	heldKeys map[string]bool
}

// buildBinary builds flowmetrics from the repository root.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "flowmetrics")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/flowmetrics")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func serve(t *testing.T, bin, config string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "serve", "-config", config, "-log-level", "warn")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func waitHealthy(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("serve did not become healthy in 20s")
}

// post sends n events, one occurrence each, stamped now, spread over the
// series; it returns what it sent per series.
func post(t *testing.T, url string, from, n int, want map[string]int64) {
	t.Helper()
	var body bytes.Buffer
	for i := from; i < from+n; i++ {
		s := series[i%len(series)]
		conv := fmt.Sprintf("kill-%06d", i)
		name := genesys.AttributeName(s[0], s[1], time.Now())
		body.Write(genesys.Envelope{Conversation: conv, Attributes: map[string]string{name: "x"}}.DetailJSON())
		body.WriteByte('\n')
		want["genesys.flow.metric|"+s[0]+"|"+s[1]]++
	}
	resp, err := http.Post(url+"/v1/events", "application/x-ndjson", &body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST /v1/events: got %d, want 2xx", resp.StatusCode)
	}
}

// TestSIGKILLAfterCollectorAccepted kills serve while the collector holds
// a request it accepted but the sink has not heard back from: the one
// duplicate window. The restarted serve resends exactly those windows
// (same start, end and value), which deltatocumulative drops and a
// last-value backend overwrites with the same value, and delivers the
// windows that were open at the kill from the Pebble state: both end with
// the occurrences per series.
func TestSIGKILLAfterCollectorAccepted(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("SIGKILL")
	}
	if testing.Short() {
		t.Skip("builds the binary (about 20 s); not with -short")
	}
	bin := buildBinary(t)
	be := startBackend(t)
	hp := &holdProxy{proxy: startProxy(t, be.url, 1<<30), holding: make(chan struct{}), release: make(chan struct{}), heldKeys: map[string]bool{}}
	hp.proxy.onForwarded = func(keys []string) bool {
		hp.hmu.Lock()
		if !hp.hold {
			hp.hmu.Unlock()
			return false
		}
		hp.hold = false
		for _, k := range keys {
			hp.heldKeys[k] = true
		}
		hp.hmu.Unlock()
		close(hp.holding)
		<-hp.release
		return true // hang up: no answer
	}

	dir := t.TempDir()
	listen := freePort(t)
	cfg := filepath.Join(dir, "flowmetrics.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`data_dir: %s
http: {listen: "%s"}
pipeline: {bucket: 1s, flush_interval: 50ms, retry_min: 50ms, retry_max: 500ms}
sinks:
  prometheus: {enabled: false}
  otlp: {endpoint: "%s", watermark: 1s, timeout: 5s}
`, filepath.Join(dir, "data"), listen, hp.url)), 0o644)
	url := "http://" + listen
	want := map[string]int64{}

	first := serve(t, bin, cfg)
	waitHealthy(t, url)
	for i := 0; i < 10; i++ {
		post(t, url, i*20, 20, want)
		time.Sleep(150 * time.Millisecond)
	}
	hp.hmu.Lock()
	hp.hold = true
	hp.hmu.Unlock()
	post(t, url, 200, 20, want) // open windows at the kill, and the held one
	select {
	case <-hp.holding:
	case <-time.After(20 * time.Second):
		t.Fatal("no request reached the collector in 20s")
	}
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	close(hp.release)

	serve(t, bin, cfg)
	waitHealthy(t, url)
	for i := 0; i < 5; i++ {
		post(t, url, 220+i*20, 20, want)
		time.Sleep(150 * time.Millisecond)
	}
	deadline := time.Now().Add(30 * time.Second)
	for sum(be.lastValueTotals(false)) < sum(want) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}

	be.mu.Lock()
	points := append([]point(nil), be.points...)
	be.mu.Unlock()
	seen, lastEnd, repeats := map[string]bool{}, map[string]uint64{}, 0
	for _, p := range points {
		k := fmt.Sprintf("%s@%d-%d=%d", p.series, p.start, p.time, p.value)
		if seen[k] {
			repeats++
			if !hp.heldKeys[k] {
				t.Errorf("window %s sent twice, though it was not in the request held at the kill", k)
			}
			continue
		}
		seen[k] = true
		if p.start < lastEnd[p.series] {
			t.Errorf("%s: window [%d, %d) overlaps the last one, ending %d", p.series, p.start, p.time, lastEnd[p.series])
		}
		lastEnd[p.series] = p.time
	}
	if repeats == 0 {
		t.Error("got no repeated window, want the held request's windows sent again after the restart")
	}
	d2c, _ := be.d2cTotals()
	lv := be.lastValueTotals(false)
	for s, n := range want {
		if d2c[s] != n || lv[s] != n {
			t.Errorf("%s: deltatocumulative %d, last value %d, want %d", s, d2c[s], lv[s], n)
		}
	}
	t.Logf("SIGKILL: %d occurrences, %d points, %d repeated after the kill (held: %d); deltatocumulative %d, last value %d",
		sum(want), len(points), repeats, len(hp.heldKeys), sum(d2c), sum(lv))
}
