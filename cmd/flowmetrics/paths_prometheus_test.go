package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// prometheusBinary finds Debian's prometheus (apt-get install prometheus),
// or skips.
func prometheusBinary(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prometheus not found; .ci/run installs Debian's prometheus package")
		}
		t.Skip("prometheus not found (apt-get install prometheus)")
	}
	return path
}

// quantileOf is histogram_quantile's rule, written out: find the bucket
// holding rank q·count and interpolate linearly within it (from 0 for the
// first bucket); a rank in the +Inf bucket gives the highest finite bound.
func quantileOf(q float64, bounds []float64, values []float64) float64 {
	counts := make([]float64, len(bounds))
	for _, v := range values {
		for i, b := range bounds {
			if v <= b {
				counts[i]++
			}
		}
	}
	total := float64(len(values))
	rank := q * total
	for i, c := range counts {
		if c >= rank {
			lo, below := 0.0, 0.0
			if i > 0 {
				lo, below = bounds[i-1], counts[i-1]
			}
			if c == below {
				return bounds[i]
			}
			return lo + (bounds[i]-lo)*(rank-below)/(c-below)
		}
	}
	return bounds[len(bounds)-1]
}

// TestPathsInPrometheus: the corpus posted to serve, every path closed, and
// a real Prometheus (Debian's, on loopback) scraping /metrics: the exit and
// funnel counters read back exactly, and histogram_quantile over the step
// histograms gives what the same rule gives on the true durations.
func TestPathsInPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("starts serve and prometheus")
	}
	prom := prometheusBinary(t)
	convs, truth := genPaths(200, 5)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "flowmetrics.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(pathsConfig, "1s", "3s")), 0o644)
	addr := freeAddr(t)
	srv := startServe(t, "-config", cfg, "-data-dir", filepath.Join(dir, "data"), "-listen", addr)
	defer func() { srv.cmd.Process.Signal(syscall.SIGTERM); srv.cmd.Wait() }()
	lines := deliveries(convs, 6)
	for i := 0; i < len(lines); i += 200 {
		resp, err := http.Post("http://"+addr+"/v1/events", "application/x-ndjson", strings.NewReader(strings.Join(lines[i:min(i+200, len(lines))], "\n")))
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("post: %v %v", err, resp)
		}
		resp.Body.Close()
	}

	promAddr := freeAddr(t)
	promCfg := filepath.Join(dir, "prometheus.yml")
	os.WriteFile(promCfg, []byte(fmt.Sprintf("global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: flowmetrics\n    static_configs: [{targets: [%q]}]\n", addr)), 0o644)
	pcmd := exec.Command(prom, "--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"), "--web.listen-address="+promAddr, "--enable-feature=exemplar-storage")
	plog, _ := os.Create(filepath.Join(dir, "prometheus.log"))
	pcmd.Stdout, pcmd.Stderr = plog, plog
	if err := pcmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { pcmd.Process.Signal(syscall.SIGTERM); pcmd.Wait() }()

	query := func(q string) (map[string]float64, error) {
		resp, err := http.Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		var r struct {
			Status string
			Data   struct {
				Result []struct {
					Metric map[string]string
					Value  [2]any
				}
			}
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return nil, err
		}
		out := map[string]float64{}
		for _, s := range r.Data.Result {
			v, _ := strconv.ParseFloat(s.Value[1].(string), 64)
			// Keyed like the truth: "flow/metric", or the funnel step.
			var key []string
			for _, l := range []string{"flow", "metric", "step"} {
				if s.Metric[l] != "" {
					key = append(key, s.Metric[l])
				}
			}
			out[strings.Join(key, "/")] = v
		}
		return out, nil
	}
	// Every path closes within the idle timeout; wait until Prometheus has
	// scraped all their exits.
	var exits map[string]float64
	deadline := time.Now().Add(45 * time.Second)
	for {
		closed, err := query("sum(flowmetrics_paths_closed_total)")
		if err == nil && closed[""] == float64(len(convs)) {
			time.Sleep(2 * time.Second) // one more scrape after the last close was delivered
			if exits, err = query("genesys_flow_exit_total"); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
			t.Fatalf("paths not all closed and scraped in time (closed: %v, err %v)\n%s", closed, err, b)
		}
		time.Sleep(300 * time.Millisecond)
	}
	for k, want := range truth.exits {
		if exits[k] != float64(want) {
			t.Errorf("genesys_flow_exit_total %s: got %v, want %d", k, exits[k], want)
		}
	}
	funnels, err := query(`genesys_flow_funnel_total{funnel="main"}`)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range truth.funnels {
		if got := funnels[strings.TrimPrefix(k, "main/")]; got != float64(want) {
			t.Errorf("genesys_flow_funnel_total %s: got %v, want %d", k, got, want)
		}
	}
	bounds := []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400}
	var keys []string
	for k := range truth.steps {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		flow, metric, _ := strings.Cut(k, "/")
		for _, q := range []float64{0.5, 0.9, 0.99} {
			got, err := query(fmt.Sprintf(`histogram_quantile(%g, genesys_flow_step_seconds_bucket{flow=%q,metric=%q})`, q, flow, metric))
			if err != nil {
				t.Fatal(err)
			}
			want := quantileOf(q, bounds, truth.steps[k])
			if g := got[k]; math.Abs(g-want) > 1e-9*math.Max(1, want) {
				t.Errorf("histogram_quantile(%g) of %s: got %v, want %v (from %d true durations)", q, k, g, want, len(truth.steps[k]))
			}
		}
	}
	// The exemplar: a conversation id on the exit counters.
	resp, err := http.Get("http://" + promAddr + "/api/v1/query_exemplars?query=genesys_flow_exit_total&start=0&end=" + strconv.FormatInt(time.Now().Add(time.Minute).Unix(), 10))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"conversation_id":"9a7b0000-`) {
		t.Errorf("no conversation exemplar on genesys_flow_exit_total: %s", body)
	}
}
