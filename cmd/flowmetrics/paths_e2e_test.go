package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/dashboard"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/servetest"
)

// The paths corpus: conversations through two flows with known drop-outs,
// an A/B offer and long-tailed agent waits. Its truth is computed while it is
// generated, from the generator's own model (which step follows which, at
// what time), not by the code under test.

var pathsBase = time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)

const pathsConfig = `paths:
  grace: %s
  idle_timeout: %s
  timings:
    - {name: ivr_to_agent, from: IVR/Start, to: Agent/Connected}
  funnels:
    - name: main
      steps: [IVR/Start, IVR/Menu, IVR/Option, Agent/Queued, Agent/Connected]
  experiments:
    - name: offer
      variants:
        - {name: A, steps: [IVR/OfferA, IVR/AcceptA]}
        - {name: B, steps: [IVR/OfferB, IVR/AcceptB]}
`

type pstep struct {
	flow, metric string
	at           time.Time
}

type pconv struct {
	id    string
	steps []pstep
	ended bool
	// endFirst: its customer.end is delivered before its last attributes.
	endFirst bool
}

// pathTruth is what the derived series must be, per series.
type pathTruth struct {
	exits   map[string]int       // "flow/metric"
	steps   map[string][]float64 // "flow/metric" -> seconds, sorted
	timings map[string][]float64
	funnels map[string]int // "funnel/step"
	exps    map[string]int // "experiment/variant/step"
}

func newTruth() *pathTruth {
	return &pathTruth{exits: map[string]int{}, steps: map[string][]float64{}, timings: map[string][]float64{}, funnels: map[string]int{}, exps: map[string]int{}}
}

func (t *pathTruth) sort() {
	for _, m := range []map[string][]float64{t.steps, t.timings} {
		for _, v := range m {
			sort.Float64s(v)
		}
	}
}

// genPaths generates n conversations and their truth. Durations are whole
// milliseconds, so seconds compare exactly after the round trip through
// attribute names.
func genPaths(n int, seed uint64) ([]pconv, *pathTruth) { return genPathsEnding(n, seed, 0.85) }

// genPathsEnding is genPaths with a share of the conversations ending
// with a customer.end (genPaths: 0.85).
func genPathsEnding(n int, seed uint64, ends float64) ([]pconv, *pathTruth) {
	r := rand.New(rand.NewPCG(seed, 7))
	truth := newTruth()
	ms := func(lo, hi float64) time.Duration {
		return time.Duration(lo*1000+r.Float64()*(hi-lo)*1000) * time.Millisecond
	}
	var convs []pconv
	for i := 0; i < n; i++ {
		c := pconv{id: fmt.Sprintf("9a7b0000-0000-4000-8000-%012d", i), ended: r.Float64() < ends}
		c.endFirst = c.ended && r.Float64() < 0.3
		at := pathsBase.Add(time.Duration(i) * 7 * time.Second)
		flowStart := map[string]time.Time{}
		seen := map[string]bool{}
		last := map[string]string{}
		funnelNext := 0 // the next funnel step this conversation can reach
		funnel := []string{"IVR/Start", "IVR/Menu", "IVR/Option", "Agent/Queued", "Agent/Connected"}
		var ivrStart time.Time
		add := func(flow, metric string, d time.Duration) {
			at = at.Add(d)
			c.steps = append(c.steps, pstep{flow, metric, at})
			key := flow + "/" + metric
			if _, ok := flowStart[flow]; !ok {
				flowStart[flow] = at
			} else if !seen[key] {
				truth.steps[key] = append(truth.steps[key], at.Sub(flowStart[flow]).Seconds())
			}
			seen[key] = true
			last[flow] = metric
			if funnelNext < len(funnel) && funnel[funnelNext] == key {
				truth.funnels["main/"+key]++
				funnelNext++
			}
			switch key {
			case "IVR/Start":
				ivrStart = at
			case "Agent/Connected":
				truth.timings["ivr_to_agent"] = append(truth.timings["ivr_to_agent"], at.Sub(ivrStart).Seconds())
			}
		}
		add("IVR", "Start", 0)
		if r.Float64() < 0.85 {
			add("IVR", "Menu", ms(2, 20))
			if r.Float64() < 0.1 {
				add("IVR", "Menu", ms(5, 15)) // heard the menu again
			}
			if r.Float64() < 0.8 {
				add("IVR", "Option", ms(1, 30))
				v := "A"
				if r.Float64() < 0.5 {
					v = "B"
				}
				add("IVR", "Offer"+v, ms(1, 5))
				truth.exps["offer/"+v+"/IVR/Offer"+v]++
				if p := map[string]float64{"A": 0.3, "B": 0.5}[v]; r.Float64() < p {
					add("IVR", "Accept"+v, ms(1, 10))
					truth.exps["offer/"+v+"/IVR/Accept"+v]++
				}
				if r.Float64() < 0.7 {
					add("Agent", "Queued", ms(1, 5))
					if r.Float64() < 0.75 {
						// A long tail: mostly seconds, sometimes most of an hour.
						wait := ms(5, 60)
						if r.Float64() < 0.2 {
							wait = ms(300, 3000)
						}
						add("Agent", "Connected", wait)
					}
				}
			}
		}
		for flow, metric := range last {
			truth.exits[flow+"/"+metric]++
		}
		convs = append(convs, c)
	}
	truth.sort()
	return convs, truth
}

// attrName writes a step as its attribute name.
func attrName(s pstep) string {
	return genesys.AttributeName(s.flow, s.metric, s.at)
}

func pathEvent(e genesys.Envelope) string {
	e.ID, e.Source, e.Participant = "x", "aws.partner/genesys.com/cloud/org/x", "p1"
	return string(e.JSON())
}

// attrEvent is the attributes event after the first k steps: like
// Genesys's, it carries every attribute the participant has so far.
func attrEvent(c pconv, k int) string {
	attrs := map[string]string{"Language": "en-GB"}
	for _, s := range c.steps[:k] {
		attrs[attrName(s)] = "1"
	}
	return pathEvent(genesys.Envelope{Conversation: c.id, Time: c.steps[k-1].at, Attributes: attrs})
}

func endEventOf(c pconv) string {
	return pathEvent(genesys.Envelope{Topic: genesys.TopicCustomerEnd, Conversation: c.id, Time: c.steps[len(c.steps)-1].at.Add(time.Second)})
}

// deliveries orders a corpus's events as EventBridge might deliver them:
// each conversation's events near its neighbours' (jittered, so reordered
// within and across conversations), a fifth of them twice, and the
// customer.end of the endFirst conversations before their last attributes.
func deliveries(convs []pconv, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, 11))
	type ev struct {
		key  float64
		line string
	}
	var evs []ev
	for i, c := range convs {
		for k := 1; k <= len(c.steps); k++ {
			key := float64(i) + float64(k)/10 + r.Float64()*3
			evs = append(evs, ev{key, attrEvent(c, k)})
			if r.Float64() < 0.2 {
				evs = append(evs, ev{key + r.Float64()*5, attrEvent(c, k)})
			}
		}
		if c.ended {
			key := float64(i) + 4 // after its attributes
			if c.endFirst {
				key = float64(i) - 1
			}
			evs = append(evs, ev{key, endEventOf(c)})
			if r.Float64() < 0.2 {
				evs = append(evs, ev{key + r.Float64()*5, endEventOf(c)})
			}
		}
	}
	sort.SliceStable(evs, func(a, b int) bool { return evs[a].key < evs[b].key })
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.line
	}
	return out
}

// readPaths reads the path lines of a JSON-lines output into the same shape
// as the truth, and returns the conversations they came from and the
// total of the count lines.
func readPaths(t *testing.T, r io.Reader) (*pathTruth, map[string]int, int64) {
	t.Helper()
	got := newTruth()
	convs := map[string]int{}
	var counts int64
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct {
			Path, Flow, Metric, Timing, Funnel, Experiment, Variant, Step, Conversation string
			Seconds                                                                     *float64
			Count                                                                       int64
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("bad line %q: %v", sc.Text(), err)
		}
		switch l.Path {
		case "":
			counts += l.Count
		case "exit":
			got.exits[l.Flow+"/"+l.Metric]++
			convs[l.Conversation]++
		case "step":
			got.steps[l.Flow+"/"+l.Metric] = append(got.steps[l.Flow+"/"+l.Metric], *l.Seconds)
		case "timing":
			got.timings[l.Timing] = append(got.timings[l.Timing], *l.Seconds)
		case "funnel":
			got.funnels[l.Funnel+"/"+l.Step]++
		case "experiment":
			got.exps[l.Experiment+"/"+l.Variant+"/"+l.Step]++
		default:
			t.Fatalf("unknown path kind in %q", sc.Text())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	got.sort()
	return got, convs, counts
}

// compareTruth reports every series that differs.
func compareTruth(t *testing.T, got, want *pathTruth) {
	t.Helper()
	cmpCounts := func(kind string, g, w map[string]int) {
		for k := range union(g, w) {
			if g[k] != w[k] {
				t.Errorf("%s %s: got %d, want %d", kind, k, g[k], w[k])
			}
		}
	}
	cmpDur := func(kind string, g, w map[string][]float64) {
		for k := range union(g, w) {
			if !slices.EqualFunc(g[k], w[k], func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }) {
				t.Errorf("%s %s: got %d durations %v…, want %d %v…", kind, k, len(g[k]), head(g[k]), len(w[k]), head(w[k]))
			}
		}
	}
	cmpCounts("exits", got.exits, want.exits)
	cmpDur("step timings", got.steps, want.steps)
	cmpDur("timings", got.timings, want.timings)
	cmpCounts("funnel", got.funnels, want.funnels)
	cmpCounts("experiment", got.exps, want.exps)
}

func union[V any](a, b map[string]V) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

func head(v []float64) []float64 { return v[:min(len(v), 5)] }

func occurrencesOf(convs []pconv) int64 {
	var n int64
	for _, c := range convs {
		seen := map[string]bool{}
		for _, s := range c.steps {
			seen[attrName(s)] = true
		}
		n += int64(len(seen))
	}
	return n
}

// TestPathsReplay replays the corpus, reordered, with duplicates and end
// events before and after the attributes, and checks every derived series
// against the truth; a second replay into the same data directory with late
// attributes counts them and derives nothing again.
func TestPathsReplay(t *testing.T) {
	convs, truth := genPaths(400, 1)
	dir := t.TempDir()
	in := filepath.Join(dir, "events.ndjson")
	os.WriteFile(in, []byte(strings.Join(deliveries(convs, 2), "\n")+"\n"), 0o644)
	cfg := filepath.Join(dir, "flowmetrics.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(pathsConfig, "2m", "4h")), 0o644)

	// In memory: every path closes at the end of the input.
	out, err := exec.Command(binary, "replay", "-config", cfg, "-o", filepath.Join(dir, "mem.jsonl"), in).CombinedOutput()
	if err != nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	f, _ := os.Open(filepath.Join(dir, "mem.jsonl"))
	got, closed, counts := readPaths(t, f)
	f.Close()
	compareTruth(t, got, truth)
	if len(closed) != len(convs) || counts != occurrencesOf(convs) {
		t.Errorf("memory: %d conversations closed and %d occurrences counted, want %d and %d", len(closed), counts, len(convs), occurrencesOf(convs))
	}

	// Into a data directory: only the ended conversations close.
	data := filepath.Join(dir, "data")
	out, err = exec.Command(binary, "replay", "-config", cfg, "-data-dir", data, "-o", filepath.Join(dir, "dir.jsonl"), in).CombinedOutput()
	if err != nil {
		t.Fatalf("replay -data-dir: %v\n%s", err, out)
	}
	f, _ = os.Open(filepath.Join(dir, "dir.jsonl"))
	_, closed, _ = readPaths(t, f)
	f.Close()
	ended := 0
	for _, c := range convs {
		if c.ended {
			ended++
			if closed[c.id] == 0 {
				t.Errorf("%s ended, but its path did not close", c.id)
			}
		} else if closed[c.id] != 0 {
			t.Errorf("%s has no end, but its path closed in a data directory", c.id)
		}
	}
	// Late attributes of closed conversations: occurrences, no path again.
	var late []string
	for _, c := range convs[:50] {
		if c.ended {
			s := pstep{"IVR", "Late", c.steps[len(c.steps)-1].at.Add(time.Minute)}
			late = append(late, pathEvent(genesys.Envelope{Conversation: c.id, Attributes: map[string]string{attrName(s): "1"}}))
		}
	}
	lateIn := filepath.Join(dir, "late.ndjson")
	os.WriteFile(lateIn, []byte(strings.Join(late, "\n")+"\n"), 0o644)
	out, err = exec.Command(binary, "replay", "-config", cfg, "-data-dir", data, "-o", filepath.Join(dir, "late.jsonl"), lateIn).CombinedOutput()
	if err != nil {
		t.Fatalf("late replay: %v\n%s", err, out)
	}
	f, _ = os.Open(filepath.Join(dir, "late.jsonl"))
	_, closed, counts = readPaths(t, f)
	f.Close()
	if len(closed) != 0 || counts != int64(len(late)) {
		t.Errorf("late attributes: %d paths derived again and %d occurrences counted, want 0 and %d", len(closed), counts, len(late))
	}
	t.Logf("%d conversations (%d ended, %d with the end first), %d occurrences, %d late", len(convs), ended, countIf(convs, func(c pconv) bool { return c.endFirst }), occurrencesOf(convs), len(late))
}

func countIf(convs []pconv, f func(pconv) bool) int {
	n := 0
	for _, c := range convs {
		if f(c) {
			n++
		}
	}
	return n
}

// TestPathsServeSIGKILL posts the corpus to serve (two clients, duplicates,
// reordering, end events before and after the attributes) while serve is
// killed with SIGKILL and restarted, resending what was not acknowledged;
// once every path has closed, late attributes of closed conversations are
// posted. The JSON-lines file must then hold every derived series exactly
// as the truth says, each conversation's path once, and every occurrence
// (late ones included) once.
func TestPathsServeSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	const kills = 6
	convs, truth := genPaths(300, 3)
	lines := deliveries(convs, 4)
	dir := t.TempDir()
	outPath := filepath.Join(dir, "out.jsonl")
	cfg := filepath.Join(dir, "flowmetrics.yaml")
	// Grace and idle timeout short enough for a test, long enough that a
	// restart never makes an attribute late.
	os.WriteFile(cfg, []byte(fmt.Sprintf(pathsConfig, "6s", "9s")+fmt.Sprintf("pipeline: {flush_interval: 20ms, batch_entries: 8}\nsinks:\n  prometheus: {enabled: false}\n  jsonl: {path: %q}\n", outPath)), 0o644)
	addr := freeAddr(t)
	args := []string{"-config", cfg, "-data-dir", filepath.Join(dir, "data"), "-listen", addr}
	srv := startServe(t, args...)
	defer func() { srv.cmd.Process.Kill(); srv.cmd.Wait() }()

	post := func(body string) {
		client := &http.Client{Timeout: 5 * time.Second}
		deadline := time.Now().Add(40 * time.Second)
		for time.Now().Before(deadline) {
			resp, err := client.Post("http://"+addr+"/v1/events", "application/x-ndjson", strings.NewReader(body))
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusAccepted {
					return
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("a request was never acknowledged")
	}
	var chunks []string
	for i := 0; i < len(lines); i += 25 {
		chunks = append(chunks, strings.Join(lines[i:min(i+25, len(lines))], "\n"))
	}
	next := make(chan string)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for body := range next {
				post(body)
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		for _, c := range chunks {
			next <- c
		}
		close(next)
		wg.Wait()
		close(done)
	}()
	// The storm: kills at random moments while the clients post; the
	// later ones fall while paths close.
	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(100+rand.IntN(900)) * time.Millisecond)
		srv.cmd.Process.Signal(syscall.SIGKILL)
		srv.cmd.Wait()
		srv = startServe(t, args...)
	}
	<-done

	// Wait for every path to close (the idle timeout of those without an
	// end), reading the file as it grows.
	deadline := time.Now().Add(40 * time.Second)
	for {
		b, _ := os.ReadFile(outPath)
		_, closed, _ := readPaths(t, strings.NewReader(string(b[:strings.LastIndexByte(string(b), '\n')+1])))
		if len(closed) == len(convs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d paths closed in time", len(closed), len(convs))
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Late attributes, and one more kill.
	var late []string
	for _, c := range convs[:60] {
		s := pstep{"IVR", "Late", c.steps[len(c.steps)-1].at.Add(time.Minute)}
		late = append(late, pathEvent(genesys.Envelope{Conversation: c.id, Attributes: map[string]string{attrName(s): "1"}}))
	}
	post(strings.Join(late, "\n"))
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("flowmetrics_path_late_occurrences_total %d\n", len(late)); !strings.Contains(string(metrics), want) {
		t.Errorf("/metrics lacks %q", want)
	}
	srv.cmd.Process.Signal(syscall.SIGKILL)
	srv.cmd.Wait()
	srv = startServe(t, args...)
	// The dashboard's paths view survived the kills: every exit of the
	// truth, each conversation once.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var view dashboard.Paths
		servetest.GetJSON(t, "http://"+addr+dashboard.PathsPath, &view)
		exits := map[string]int{}
		for _, f := range view.Flows {
			for _, e := range f.Exits {
				exits[f.Flow+"/"+e.Metric] = int(e.Count)
			}
		}
		if maps.Equal(exits, truth.exits) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("dashboard exits after the last restart: got %v, want %v", exits, truth.exits)
			break
		}
	}
	srv.cmd.Process.Signal(syscall.SIGTERM)
	if err := srv.cmd.Wait(); err != nil {
		t.Fatalf("serve: %v\n%s", err, srv.log())
	}

	f, err := os.Open(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, closed, counts := readPaths(t, f)
	compareTruth(t, got, truth)
	for id, n := range closed {
		if n != map[bool]int{true: 2, false: 1}[hasAgent(convs, id)] {
			t.Errorf("%s: %d exit lines, want one per flow it entered", id, n)
		}
	}
	if want := occurrencesOf(convs) + int64(len(late)); counts != want {
		t.Errorf("occurrences in the file: got %d, want %d (every one once, the late ones too)", counts, want)
	}
	t.Logf("%d conversations, %d events delivered in %d requests, %d SIGKILLs, %d late attributes", len(convs), len(lines), len(chunks), kills+1, len(late))
}

func hasAgent(convs []pconv, id string) bool {
	for _, c := range convs {
		if c.id == id {
			for _, s := range c.steps {
				if s.flow == "Agent" {
					return true
				}
			}
		}
	}
	return false
}
