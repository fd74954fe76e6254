package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"
)

// replayPaths replays the paths corpus (reordered, with duplicates and end
// events before and after the attributes) with the given sinks section,
// and returns the corpus's truth and occurrence count.
func replayPaths(t *testing.T, sinks string) (*pathTruth, int64) {
	t.Helper()
	convs, truth := genPaths(400, 3)
	dir := t.TempDir()
	in := filepath.Join(dir, "events.ndjson")
	os.WriteFile(in, []byte(strings.Join(deliveries(convs, 4), "\n")+"\n"), 0o644)
	cfg := filepath.Join(dir, "flowmetrics.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(pathsConfig, "2m", "4h")+sinks), 0o644)
	out, err := exec.Command(binary, "replay", "-config", cfg, in).CombinedOutput()
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	return truth, occurrencesOf(convs)
}

// TestPathsReplayEMF: replay -config with the emf sink backfills paths.
// The lines are read as CloudWatch adds them up (a count is a sample, an
// array is one sample per value), per metric and dimensions, and compared
// with the corpus's truth.
func TestPathsReplayEMF(t *testing.T) {
	file := filepath.Join(t.TempDir(), "emf.log")
	truth, occurrences := replayPaths(t, "sinks:\n  emf:\n    path: "+file+"\n")
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := newTruth()
	var counts int64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var root map[string]json.RawMessage
		if err := json.Unmarshal(sc.Bytes(), &root); err != nil {
			t.Fatalf("bad line %q: %v", sc.Text(), err)
		}
		var aws struct {
			CloudWatchMetrics []struct {
				Dimensions [][]string
				Metrics    []struct{ Name string }
			}
		}
		json.Unmarshal(root["_aws"], &aws)
		dim := func(k string) string {
			var v string
			json.Unmarshal(root[k], &v)
			return v
		}
		for _, d := range aws.CloudWatchMetrics {
			for _, m := range d.Metrics {
				var values []float64
				var one float64
				if json.Unmarshal(root[m.Name], &one) == nil {
					values = []float64{one}
				} else if err := json.Unmarshal(root[m.Name], &values); err != nil {
					t.Fatalf("metric %s: %s is neither a number nor an array", m.Name, root[m.Name])
				}
				sum := 0
				for _, v := range values {
					sum += int(v)
				}
				switch m.Name {
				case "genesys.flow.metric":
					counts += int64(sum)
				case "genesys.flow.exit":
					got.exits[dim("flow")+"/"+dim("metric")] += sum
				case "genesys.flow.step":
					k := dim("flow") + "/" + dim("metric")
					got.steps[k] = append(got.steps[k], values...)
				case "genesys.flow.timing":
					got.timings[dim("timing")] = append(got.timings[dim("timing")], values...)
				case "genesys.flow.funnel":
					got.funnels[dim("funnel")+"/"+dim("step")] += sum
				case "genesys.flow.experiment":
					got.exps[dim("experiment")+"/"+dim("variant")+"/"+dim("step")] += sum
				default:
					t.Errorf("unexpected metric %q", m.Name)
				}
			}
		}
	}
	got.sort()
	compareTruth(t, got, truth)
	if counts != occurrences {
		t.Errorf("occurrences: got %d, want %d", counts, occurrences)
	}
}

// TestPathsReplayOTLP: replay -config with the otlp sink backfills paths.
// A collector on loopback decodes every request; the delta windows are
// added up per series, as a deltatocumulative collector does (its real
// processor is in integration/otlp), and compared with the corpus's truth:
// the conversations of each sum, and each histogram's count, buckets and
// sum.
func TestPathsReplayOTLP(t *testing.T) {
	var mu sync.Mutex
	sums := map[string]int64{}
	type hist struct {
		count   uint64
		sum     float64
		buckets []uint64
		bounds  []float64
	}
	hists := map[string]*hist{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req colmetricpb.ExportMetricsServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, rm := range req.ResourceMetrics {
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					key := func(kvs []*commonpb.KeyValue) string {
						a := map[string]string{}
						for _, kv := range kvs {
							a[kv.Key] = kv.Value.GetStringValue()
						}
						switch m.Name {
						case "genesys.flow.metric", "genesys.flow.exit", "genesys.flow.step":
							return m.Name + " " + a["flow"] + "/" + a["metric"]
						case "genesys.flow.timing":
							return m.Name + " " + a["timing"]
						case "genesys.flow.funnel":
							return m.Name + " " + a["funnel"] + "/" + a["step"]
						}
						return m.Name + " " + a["experiment"] + "/" + a["variant"] + "/" + a["step"]
					}
					for _, dp := range m.GetSum().GetDataPoints() {
						sums[key(dp.Attributes)] += dp.GetAsInt()
					}
					for _, dp := range m.GetHistogram().GetDataPoints() {
						k := key(dp.Attributes)
						h := hists[k]
						if h == nil {
							h = &hist{buckets: make([]uint64, len(dp.BucketCounts)), bounds: dp.ExplicitBounds}
							hists[k] = h
						}
						h.count += dp.Count
						h.sum += dp.GetSum()
						for i, c := range dp.BucketCounts {
							h.buckets[i] += c
						}
					}
				}
			}
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(nil)
	}))
	defer srv.Close()
	truth, occurrences := replayPaths(t, "sinks:\n  otlp:\n    endpoint: "+srv.URL+"\n")
	mu.Lock()
	defer mu.Unlock()
	got := newTruth()
	for k, n := range sums {
		name, series, _ := strings.Cut(k, " ")
		switch name {
		case "genesys.flow.exit":
			got.exits[series] = int(n)
		case "genesys.flow.funnel":
			got.funnels[series] = int(n)
		case "genesys.flow.experiment":
			got.exps[series] = int(n)
		}
	}
	cmpCounts := func(kind string, g, w map[string]int) {
		for k := range union(g, w) {
			if g[k] != w[k] {
				t.Errorf("%s %s: got %d, want %d", kind, k, g[k], w[k])
			}
		}
	}
	cmpCounts("exits", got.exits, truth.exits)
	cmpCounts("funnel", got.funnels, truth.funnels)
	cmpCounts("experiment", got.exps, truth.exps)
	var counted int64
	for k, n := range sums {
		if strings.HasPrefix(k, "genesys.flow.metric ") {
			counted += n
		}
	}
	if counted != occurrences {
		t.Errorf("occurrences: got %d, want %d", counted, occurrences)
	}
	for kind, want := range map[string]map[string][]float64{"genesys.flow.step": truth.steps, "genesys.flow.timing": truth.timings} {
		for series, values := range want {
			h := hists[kind+" "+series]
			if h == nil {
				t.Errorf("%s %s: no histogram", kind, series)
				continue
			}
			buckets := make([]uint64, len(h.bounds)+1)
			var sum float64
			for _, v := range values {
				buckets[sort.SearchFloat64s(h.bounds, v)]++
				sum += v
			}
			if h.count != uint64(len(values)) || !slices.Equal(h.buckets, buckets) || math.Abs(h.sum-sum) > 1e-6 {
				t.Errorf("%s %s: got count %d, buckets %v, sum %v; want %d, %v, %v", kind, series, h.count, h.buckets, h.sum, len(values), buckets, sum)
			}
		}
	}
	if n := len(hists); n != len(truth.steps)+len(truth.timings) {
		t.Errorf("got %d histogram series, want %d", n, len(truth.steps)+len(truth.timings))
	}
}
