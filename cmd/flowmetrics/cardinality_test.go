package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/cardinality"
	"github.com/flowmetrics/flowmetrics/internal/servetest"
)

// TestCardinalityLimitSurvivesRestarts restarts serve (with the Prometheus
// sink, which restores every series it ever exposed) four times on one
// data directory, each run bringing 1,000 flow/metric pairs never seen
// before, and ends runs by SIGTERM, by SIGKILL right after the last
// request was acknowledged, and by SIGKILL in the middle of the requests
// (those not acknowledged are sent again after the restart, as EventBridge
// does). After every start /metrics shows at most the limit's 1,000 pairs
// plus the overflow series, and at the end exactly the first run's pairs,
// each counted once, and the overflow series holding every later
// occurrence: the guard's admitted pairs are the store's, not the
// process's.
func TestCardinalityLimitSurvivesRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "flowmetrics.yaml")
	cfg := "sinks:\n  prometheus: {enabled: true}\npipeline: {flush_interval: 200ms}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	const limit, perRun = cardinality.DefaultLimit, 1000
	at := time.Date(2026, 11, 20, 9, 31, 48, 0, time.UTC)
	runEvents := func(run int) []string {
		evs := make([]string, perRun)
		for i := range evs {
			conv := fmt.Sprintf("c0ffee00-0000-4000-8000-%06d%06d", run, i)
			evs[i] = servetest.Event(conv, at, map[string]string{servetest.Attr(fmt.Sprintf("Run%d", run), fmt.Sprintf("M%d", i), at): "1"})
		}
		return evs
	}
	ends := []string{"sigterm", "sigkill after the last ack", "sigkill mid-requests", "sigterm"}
	var unacked [][]string // requests a killed run left unacknowledged
	for run, end := range ends {
		s := startServe(t, "-config", cfgPath, "-listen", freeAddr(t), "-data-dir", filepath.Join(dir, "data"))
		if got := len(promSeries(t, s.addr)); got > limit+1 {
			t.Fatalf("run %d after the restart: %d series, want at most %d", run, got, limit+1)
		}
		reqs := unacked
		unacked = nil
		evs := runEvents(run)
		for len(evs) > 0 {
			k := min(len(evs), 100)
			reqs = append(reqs, evs[:k])
			evs = evs[k:]
		}
		killAfter := len(reqs)
		if end == "sigkill mid-requests" {
			killAfter = len(reqs) / 2
		}
		for i, r := range reqs {
			if i == killAfter {
				// Kill while the next request is on its way.
				go func() {
					time.Sleep(2 * time.Millisecond)
					s.cmd.Process.Signal(syscall.SIGKILL)
				}()
			}
			if !postNDJSON(s.addr, r) {
				if i < killAfter {
					t.Fatalf("run %d: request %d refused before any kill\n%s", run, i, s.log())
				}
				unacked = append(unacked, reqs[i:]...)
				break
			}
		}
		switch end {
		case "sigterm":
			s.cmd.Process.Signal(syscall.SIGTERM)
		default:
			s.cmd.Process.Signal(syscall.SIGKILL)
		}
		s.cmd.Wait()
		t.Logf("run %d ended by %s; %d requests to send again", run, end, len(unacked))
	}
	s := startServe(t, "-config", cfgPath, "-listen", freeAddr(t), "-data-dir", filepath.Join(dir, "data"))
	defer func() { s.cmd.Process.Signal(syscall.SIGTERM); s.cmd.Wait() }()
	for _, r := range unacked {
		if !postNDJSON(s.addr, r) {
			t.Fatalf("resend refused\n%s", s.log())
		}
	}
	total := len(ends) * perRun
	var series map[string]int64
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		series = promSeries(t, s.addr)
		var sum int64
		for _, v := range series {
			sum += v
		}
		if sum >= int64(total) || time.Now().After(deadline) {
			break
		}
	}
	if len(series) != limit+1 {
		t.Errorf("series: got %d, want %d (the first run's pairs and the overflow series)", len(series), limit+1)
	}
	for i := 0; i < perRun; i++ {
		k := fmt.Sprintf("Run0/M%d", i)
		if series[k] != 1 {
			t.Errorf("%s: got %d, want 1", k, series[k])
		}
	}
	ov := cardinality.OverflowFlow + "/" + cardinality.OverflowMetric
	if want := int64(total - perRun); series[ov] != want {
		t.Errorf("overflow series: got %d, want %d (every occurrence after the first run)", series[ov], want)
	}
}

// postNDJSON posts events as one request and reports whether serve
// acknowledged it (a 2xx); a connection cut by a kill is not.
func postNDJSON(addr string, events []string) bool {
	body := strings.Join(events, "\n") + "\n"
	resp, err := http.Post("http://"+addr+"/v1/events", "application/x-ndjson", bytes.NewReader([]byte(body)))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode/100 == 2
}

var promLine = regexp.MustCompile(`^genesys_flow_metric_total\{flow="([^"]*)",metric="([^"]*)"\} (\S+)$`)

// promSeries returns the flow metric series /metrics exposes, as
// "flow/metric" and value.
func promSeries(t *testing.T, addr string) map[string]int64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		m := promLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("/metrics: %q: %v", sc.Text(), err)
		}
		out[m[1]+"/"+m[2]] = int64(v)
	}
	return out
}
