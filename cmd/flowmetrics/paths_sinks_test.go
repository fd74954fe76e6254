package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
