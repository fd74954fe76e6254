// Command testsummary reads `go test -json` on stdin and prints what plain
// `go test` would (each package's result line; a failed test's output;
// build errors), then a summary: how many tests passed, failed and were
// skipped, and every skipped test with the reason it gave. It exits 1 when
// any test, package or build failed (or the input is not test JSON), so
//
//	set -o pipefail; go test -json ./... | go run ./internal/testsummary
//
// fails exactly when the tests do. .ci/run runs it.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	os.Exit(run(os.Stdin, os.Stdout))
}

// event is one line of go test -json (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string
	// FailedBuild is set on a package's fail when its build failed.
	FailedBuild string
}

type skipped struct{ name, reason string }

// run copies the results from r to w and returns the exit status.
func run(r io.Reader, w io.Writer) int {
	out := map[string][]string{} // package/test -> its output lines, until it ends
	var skips []skipped
	passed, failed, pkgFailed, bad := 0, 0, 0, 0
	var failures []string
	testFailed := map[string]bool{} // packages with a failed test
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Not test2json: show it, and do not let it pass for success.
			fmt.Fprintf(w, "%s\n", line)
			bad++
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "build-output":
			fmt.Fprint(w, e.Output)
		case "build-fail":
			pkgFailed++
			failures = append(failures, e.ImportPath+" [build failed]")
		case "output":
			if e.Test == "" {
				// Package lines: "ok  pkg 1.2s", "FAIL pkg", "?  pkg [no
				// test files]", and output outside any test (panics).
				if !strings.HasPrefix(e.Output, "=== ") && e.Output != "PASS\n" {
					fmt.Fprint(w, e.Output)
				}
				continue
			}
			out[key] = append(out[key], e.Output)
		case "pass":
			if e.Test != "" {
				passed++
			}
			delete(out, key)
		case "skip":
			if e.Test != "" {
				skips = append(skips, skipped{e.Package + " " + e.Test, reason(out[key])})
			}
			delete(out, key)
		case "fail":
			if e.Test == "" {
				pkgFailed++
				if !testFailed[e.Package] && e.FailedBuild == "" {
					failures = append(failures, e.Package+" (the package failed outside its tests: see above)")
				}
				// Tests still running when the package ended (a timeout, a
				// crash) never finished.
				for k, lines := range out {
					if pkg, test, _ := strings.Cut(k, " "); pkg == e.Package && test != "" {
						failures = append(failures, k+" (did not finish)")
						for _, l := range lines {
							fmt.Fprint(w, l)
						}
						delete(out, k)
					}
				}
				continue
			}
			failed++
			testFailed[e.Package] = true
			failures = append(failures, e.Package+" "+e.Test)
			for _, l := range out[key] {
				fmt.Fprint(w, l)
			}
			delete(out, key)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(w, "testsummary: reading the test output: %v\n", err)
		bad++
	}

	fmt.Fprintf(w, "\ntests: %d passed, %d failed, %d skipped\n", passed, failed, len(skips))
	if len(skips) > 0 {
		sort.Slice(skips, func(i, j int) bool { return skips[i].name < skips[j].name })
		fmt.Fprintln(w, "skipped:")
		for _, s := range skips {
			fmt.Fprintf(w, "  %s: %s\n", s.name, s.reason)
		}
	}
	if len(failures) > 0 {
		fmt.Fprintln(w, "failed:")
		for _, f := range failures {
			fmt.Fprintf(w, "  %s\n", f)
		}
	}
	switch {
	case failed > 0 || pkgFailed > 0:
		return 1
	case bad > 0:
		fmt.Fprintf(w, "testsummary: %d lines of the input were not go test -json events\n", bad)
		return 1
	case passed == 0 && len(skips) == 0:
		fmt.Fprintln(w, "testsummary: no test ran")
		return 1
	}
	return 0
}

// reason is what a skipped test said: the last line it logged through
// testing (t.Skip's message comes last), without the file:line prefix.
// Other output (a library's log lines) is used only when there is no such
// line.
func reason(lines []string) string {
	var logged, other []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- ") {
			continue
		}
		if i := strings.Index(t, ": "); i > 0 && strings.Contains(t[:i], ".go:") && !strings.Contains(t[:i], " ") {
			logged = append(logged, t[i+2:])
			continue
		}
		other = append(other, t)
	}
	switch {
	case len(logged) > 0:
		return logged[len(logged)-1]
	case len(other) > 0:
		return strings.Join(other, " / ")
	}
	return "(no reason given)"
}
