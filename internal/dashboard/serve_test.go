package dashboard

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/servetest"
)

// promTotals reads serve's /metrics: genesys_flow_metric_total by labels.
func promTotals(t *testing.T, base string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(l, "genesys_flow_metric_total{") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		var v float64
		fmt.Sscan(l[i+1:], &v)
		out[l[:i]] = v
	}
	return out
}

// byTime keys a series body's counts by bucket start, so two reads a few
// seconds apart compare bucket for bucket.
func byTime(s SeriesBody) map[string]int64 {
	out := map[string]int64{}
	step := time.Duration(s.StepSeconds) * time.Second
	for _, f := range s.Flows {
		for _, m := range f.Metrics {
			out[f.Flow+"/"+m.Metric+"/total"] = m.Total
			for i, c := range m.Counts {
				if c != 0 {
					out[f.Flow+"/"+m.Metric+"/"+s.Start.Add(time.Duration(i)*step).Format(time.TimeOnly)] = c
				}
			}
		}
	}
	return out
}

// TestRestartKeepsHistory kills serve with SIGKILL and starts it again on
// the same data directory: the dashboard's buckets, its malformed names and
// the Prometheus counters are what they were, before any new event.
func TestRestartKeepsHistory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs serve; skipped with -short")
	}
	dir := t.TempDir()
	bin := servetest.Build(t, dir)
	data := filepath.Join(dir, "data")
	srv := servetest.Start(t, bin, data)
	base := "http://" + srv.Addr
	servetest.Post(t, srv.Addr, traffic(time.Now(), 2*time.Hour, 10, 2))

	// Delivered everywhere: the dashboard and /metrics count what the
	// pipeline claimed.
	var before SeriesBody
	var health HealthBody
	var prom map[string]float64
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		servetest.GetJSON(t, base+"/api/v1/series?range=6h", &before)
		servetest.GetJSON(t, base+"/api/v1/health", &health)
		prom = promTotals(t, base)
		var sum float64
		for _, v := range prom {
			sum += v
		}
		if health.Occurrences > 0 && before.Total == health.Occurrences && int64(sum) == health.Occurrences {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not delivered within 15 s: dashboard %d, prometheus %v, claimed %d", before.Total, sum, health.Occurrences)
		}
	}
	time.Sleep(500 * time.Millisecond) // the commit follows each send
	var malBefore MalformedBody
	servetest.GetJSON(t, base+"/api/v1/malformed", &malBefore)
	srv.Cmd.Process.Signal(syscall.SIGKILL)
	srv.Cmd.Wait()

	srv = servetest.Start(t, bin, data)
	defer srv.Stop(t)
	base = "http://" + srv.Addr
	var after SeriesBody
	servetest.GetJSON(t, base+"/api/v1/series?range=6h", &after)
	if a, b := byTime(after), byTime(before); !mapsEqual(a, b) || after.Total != before.Total {
		t.Errorf("dashboard after SIGKILL and restart: total %d, want %d; buckets differ: %v", after.Total, before.Total, diff(a, b))
	}
	if got := promTotals(t, base); !mapsEqual(got, prom) {
		t.Errorf("/metrics after restart:\ngot  %v\nwant %v", got, prom)
	}
	var malAfter MalformedBody
	servetest.GetJSON(t, base+"/api/v1/malformed", &malAfter)
	if malAfter.Distinct != malBefore.Distinct || malAfter.Distinct == 0 {
		t.Errorf("malformed names after restart: got %d distinct, want %d", malAfter.Distinct, malBefore.Distinct)
	}
	t.Logf("after SIGKILL: %d occurrences in %d buckets, %d counters, %d malformed names restored", after.Total, len(byTime(after)), len(prom), malAfter.Distinct)
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func diff(a, b map[string]int64) []string {
	var out []string
	for k, v := range a {
		if b[k] != v {
			out = append(out, fmt.Sprintf("%s: %d≠%d", k, v, b[k]))
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			out = append(out, fmt.Sprintf("%s: missing (was %d)", k, v))
		}
	}
	if len(out) > 10 {
		out = append(out[:10], "…")
	}
	return out
}

// TestMetricsNeverGoDown scrapes /metrics while traffic flows, SIGKILLs
// serve, starts it again on the same data directory, and checks that no
// counter is below what the last scrape before the kill showed, and that
// after the redelivery every counter equals what was claimed.
func TestMetricsNeverGoDown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs serve; skipped with -short")
	}
	dir := t.TempDir()
	bin := servetest.Build(t, dir)
	data := filepath.Join(dir, "data")
	var acked atomic.Int64 // occurrences claimed by answered POSTs, all rounds
	for round := range 3 {
		srv := servetest.Start(t, bin, data)
		base := "http://" + srv.Addr
		evs := traffic(time.Now(), 20*time.Minute, 30, uint64(10+round))
		go func() {
			for len(evs) > 0 {
				k := min(len(evs), 40)
				resp, err := http.Post(base+"/v1/events", "application/x-ndjson", strings.NewReader(strings.Join(evs[:k], "\n")))
				if err != nil {
					return // killed
				}
				var r struct{ Occurrences int64 }
				json.NewDecoder(resp.Body).Decode(&r)
				resp.Body.Close()
				if resp.StatusCode == http.StatusAccepted {
					acked.Add(r.Occurrences)
				}
				evs = evs[k:]
			}
		}()
		var last map[string]float64
		for deadline := time.Now().Add(time.Duration(800+round*700) * time.Millisecond); time.Now().Before(deadline); {
			last = promTotals(t, base)
		}
		srv.Cmd.Process.Signal(syscall.SIGKILL)
		srv.Cmd.Wait()

		srv = servetest.Start(t, bin, data)
		base = "http://" + srv.Addr
		got := promTotals(t, base)
		for k, v := range last {
			if got[k] < v {
				t.Errorf("round %d: %s went down across SIGKILL: %v before, %v after", round, k, v, got[k])
			}
		}
		// Delivered again, the counters add up to what the dashboard (a
		// sink exact by its own state) counted, and to at least what the
		// answered POSTs claimed.
		var sum float64
		var dash SeriesBody
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			sum = 0
			for _, v := range promTotals(t, base) {
				sum += v
			}
			servetest.GetJSON(t, base+"/api/v1/series?range=1h", &dash)
			if int64(sum) == dash.Total && sum >= float64(acked.Load()) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: counters sum to %v, the dashboard counted %d, the answered POSTs claimed %d", round, sum, dash.Total, acked.Load())
			}
		}
		t.Logf("round %d: %d counters, none down; %v occurrences in all", round, len(got), sum)
		srv.Stop(t)
	}
}
