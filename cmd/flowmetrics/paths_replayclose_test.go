package main

import (
	"bytes"
	"fmt"
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
