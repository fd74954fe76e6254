package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPathsReplayClosesDuringInput: a replay into a data directory closes
// the paths of ended conversations while it still reads its input, once
// its clock (event time) passed their end by the grace; killed with
// SIGKILL then, and run again on the whole input, it ends with every path
// derived once and exactly as the truth says (the input reordered, with
// duplicates and ends before the last attributes, as TestPathsReplay's),
// and every occurrence counted once.
func TestPathsReplayClosesDuringInput(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	convs, truth := genPathsEnding(8000, 9, 1)
	lines := deliveries(convs, 10)
	dir := t.TempDir()
	in := filepath.Join(dir, "events.ndjson")
	os.WriteFile(in, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	cfg := filepath.Join(dir, "flowmetrics.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(pathsConfig, "2m", "4h")), 0o644)
	data, out := filepath.Join(dir, "data"), filepath.Join(dir, "out.jsonl")
	args := []string{"replay", "-config", cfg, "-data-dir", data, "-o", out}

	// The input through a pipe, a few thousand records at a time, until
	// paths closed: the input is not complete then, so they closed during
	// it. Then SIGKILL.
	cmd := exec.Command(binary, append(args, "-")...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sent, closedEarly := 0, false
	for sent < len(lines)*9/10 && !closedEarly {
		n := min(2000, len(lines)-sent)
		if _, err := stdin.Write([]byte(strings.Join(lines[sent:sent+n], "\n") + "\n")); err != nil {
			t.Fatalf("writing the input: %v\n%s", err, stderr.String())
		}
		sent += n
		for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if b, _ := os.ReadFile(out); bytes.Contains(b, []byte(`"path":"exit"`)) {
				closedEarly = true
				break
			}
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	stdin.Close()
	if !closedEarly {
		t.Fatalf("no path closed while %d of %d records were read\n%s", sent, len(lines), stderr.String())
	}
	b, _ := os.ReadFile(out)
	_, early, _ := readPaths(t, bytes.NewReader(b[:bytes.LastIndexByte(b, '\n')+1])) // the lines written whole
	t.Logf("killed after %d of %d records, with %d paths closed", sent, len(lines), len(early))
	if len(early) == 0 {
		t.Fatal("no whole line of a closed path in the output")
	}

	// Again, the whole input, into the same directory and output.
	if o, err := exec.Command(binary, append(args, in)...).CombinedOutput(); err != nil {
		t.Fatalf("replay again: %v\n%s", err, o)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, closed, counts := readPaths(t, f)
	compareTruth(t, got, truth)
	for _, c := range convs {
		// One exit per flow it went through.
		flows := map[string]bool{}
		for _, s := range c.steps {
			flows[s.flow] = true
		}
		if closed[c.id] != len(flows) {
			t.Errorf("%s: %d exits, want %d (its path closed once)", c.id, closed[c.id], len(flows))
		}
	}
	if counts != occurrencesOf(convs) {
		t.Errorf("counted %d occurrences, want %d", counts, occurrencesOf(convs))
	}
}

// TestPathsServeClosesWhatAKilledReplayLeftOpen: a replay into the
// embedded store files no path in the store's deadline index while it
// claims (it names the paths it closes). Killed with SIGKILL once paths
// closed during its input, it leaves the index incomplete, with paths
// still open: ended ones within their grace, conversations that never
// end. serve on the same data directory, sent the records the replay did
// not read, must close every one of them: those it gets no record of are
// closed only through the index completed at Open. serve closes no path
// the replay delivered as closed, and none twice; then a replay of nothing
// finds no path left open.
func TestPathsServeClosesWhatAKilledReplayLeftOpen(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills processes")
	}
	convs, _ := genPathsEnding(6000, 11, 0.6)
	lines := deliveries(convs, 12)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	config := func(name, out string) string {
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(fmt.Sprintf(pathsConfig, "3s", "4s")+fmt.Sprintf("pipeline: {flush_interval: 20ms}\nsinks:\n  prometheus: {enabled: false}\n  jsonl: {path: %q}\n", out)), 0o644)
		return path
	}
	replayOut, serveOut := filepath.Join(dir, "replay.jsonl"), filepath.Join(dir, "serve.jsonl")
	replayArgs := []string{"replay", "-config", config("replay.yaml", replayOut), "-data-dir", data, "-o", replayOut}

	cmd := exec.Command(binary, append(replayArgs, "-")...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sent, closedEarly := 0, false
	for sent < len(lines) && !closedEarly {
		n := min(2000, len(lines)-sent)
		if _, err := stdin.Write([]byte(strings.Join(lines[sent:sent+n], "\n") + "\n")); err != nil {
			t.Fatalf("writing the input: %v\n%s", err, stderr.String())
		}
		sent += n
		for deadline := time.Now().Add(500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if b, _ := os.ReadFile(replayOut); bytes.Contains(b, []byte(`"path":"exit"`)) {
				closedEarly = true
				break
			}
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	stdin.Close()
	if !closedEarly {
		t.Fatalf("no path closed while %d of %d records were read\n%s", sent, len(lines), stderr.String())
	}
	b, _ := os.ReadFile(replayOut)
	_, early, _ := readPaths(t, bytes.NewReader(b[:bytes.LastIndexByte(b, '\n')+1]))
	t.Logf("killed after %d of %d records, with %d of %d conversations' paths closed", sent, len(lines), len(early), len(convs))

	addr := freeAddr(t)
	srv := startServe(t, "-config", config("serve.yaml", serveOut), "-data-dir", data, "-listen", addr)
	defer func() { srv.cmd.Process.Kill(); srv.cmd.Wait() }()
	client := &http.Client{Timeout: 10 * time.Second}
	for i := sent; i < len(lines); i += 500 {
		body := strings.Join(lines[i:min(i+500, len(lines))], "\n")
		status := ""
		// A busy server answers 503: the request is sent again.
		for deadline := time.Now().Add(30 * time.Second); status != "202 Accepted" && time.Now().Before(deadline); {
			resp, err := client.Post("http://"+addr+"/v1/events", "application/x-ndjson", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if status = resp.Status; resp.StatusCode == http.StatusServiceUnavailable {
				time.Sleep(50 * time.Millisecond)
			} else if resp.StatusCode != http.StatusAccepted {
				break
			}
		}
		if status != "202 Accepted" {
			t.Fatalf("posting the input again: %s\n%s", status, srv.stderr.String())
		}
	}
	// Until serve has closed no path for a while: every one is due within
	// the idle timeout (4 s) of the last post.
	quiet, last := time.Now(), -1
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && time.Since(quiet) < 8*time.Second; time.Sleep(200 * time.Millisecond) {
		b, _ := os.ReadFile(serveOut)
		if _, closed, _ := readPaths(t, bytes.NewReader(b[:bytes.LastIndexByte(b, '\n')+1])); len(closed) != last {
			quiet, last = time.Now(), len(closed)
		}
	}
	srv.cmd.Process.Signal(os.Interrupt)
	srv.cmd.Wait()

	rb, _ := os.ReadFile(replayOut)
	_, byReplay, _ := readPaths(t, bytes.NewReader(rb[:bytes.LastIndexByte(rb, '\n')+1]))
	sb, _ := os.ReadFile(serveOut)
	_, byServe, _ := readPaths(t, bytes.NewReader(sb))
	t.Logf("paths closed: %d delivered by the replay, %d by serve, of %d", len(byReplay), len(byServe), len(convs))
	for _, c := range convs {
		flows := map[string]bool{}
		for _, s := range c.steps {
			flows[s.flow] = true
		}
		// A conversation of which the replay read records it had not yet
		// claimed when killed closes with the flows of the others.
		if n := byServe[c.id]; n > len(flows) || n != 0 && byReplay[c.id] != 0 {
			t.Errorf("%s: %d exits from serve, %d from the replay, want at most %d from one of them", c.id, n, byReplay[c.id], len(flows))
		}
	}
	// A replay of nothing closes, at its end, every path due then (all
	// that are open, past the idle timeout): none may be left.
	empty, after := filepath.Join(dir, "empty.ndjson"), filepath.Join(dir, "after.jsonl")
	os.WriteFile(empty, nil, 0o644)
	if o, err := exec.Command(binary, "replay", "-config", config("after.yaml", after), "-data-dir", data, "-o", after, empty).CombinedOutput(); err != nil {
		t.Fatalf("replay of nothing: %v\n%s", err, o)
	}
	ab, _ := os.ReadFile(after)
	if _, left, _ := readPaths(t, bytes.NewReader(ab)); len(left) != 0 {
		t.Errorf("%d paths were still open after serve", len(left))
	}
}
