package main

import (
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/servetest"
)

// TestFloodBounded floods the real serve on loopback with the patterns
// that once grew it without bound, and reports its RSS and each request's
// time (it asserts only what the bounds promise: every request answered,
// the peak RSS under a generous ceiling). It is a measurement: run it with
// FLOWMETRICS_FLOOD=1 (about two minutes).
//
//   - new-conversations: 16 events of 400 distinct ~386-byte names a
//     request (as many as a conversation may hold), each a new
//     conversation: the store grows on disk, the cache stops at its bytes.
//   - one-conversation: 50 new names a request to one conversation, until
//     it is full and refused: claim time stays flat.
//   - refused: 2 events × 10,000 new names a request, each a new
//     conversation: refused whole, nothing kept.
func TestFloodBounded(t *testing.T) {
	if os.Getenv("FLOWMETRICS_FLOOD") == "" {
		t.Skip("a measurement of serve under floods: set FLOWMETRICS_FLOOD=1 to run it")
	}
	bin := servetest.Build(t, t.TempDir())
	pad := strings.Repeat("x", 170)
	name := func(i int) string {
		return fmt.Sprintf("%sMetric_M%06d%s(2026-11-20T09:31:48Z)", strings.Repeat("F", 180), i, pad)
	}
	attrs := func(from, n int) map[string]string {
		m := make(map[string]string, n)
		for i := range n {
			m[name(from+i)] = "1"
		}
		return m
	}
	at := time.Date(2026, 11, 20, 9, 31, 48, 0, time.UTC)
	for _, pat := range []struct {
		name     string
		requests int
		body     func(r int) []string
	}{
		{"new-conversations", 100, func(r int) []string {
			var evs []string
			for j := range 16 {
				evs = append(evs, servetest.Event(fmt.Sprintf("conv-%d-%d", r, j), at, attrs(0, 400)))
			}
			return evs
		}},
		{"one-conversation", 14, func(r int) []string {
			return []string{servetest.Event("one-conversation", at, attrs(r*50, 50))}
		}},
		{"refused", 35, func(r int) []string {
			return []string{servetest.Event(fmt.Sprintf("refused-%04d-0", r), at, attrs(0, 10_000)), servetest.Event(fmt.Sprintf("refused-%04d-1", r), at, attrs(0, 10_000))}
		}},
	} {
		t.Run(pat.name, func(t *testing.T) {
			p := servetest.Start(t, bin, t.TempDir())
			defer p.Stop(t)
			pid := p.Cmd.Process.Pid
			start := status(t, pid, "VmRSS")
			var times []string
			codes := map[int]int{}
			for r := range pat.requests {
				body := strings.Join(pat.body(r), "\n")
				t0 := time.Now()
				resp, err := http.Post("http://"+p.Addr+"/v1/events", "application/x-ndjson", strings.NewReader(body))
				if err != nil {
					t.Fatalf("request %d: %v", r, err)
				}
				resp.Body.Close()
				codes[resp.StatusCode]++
				times = append(times, fmt.Sprintf("%d:%dms", resp.StatusCode, time.Since(t0).Milliseconds()))
			}
			peak := status(t, pid, "VmHWM")
			t.Logf("%s: %d requests, answers %v; RSS %d MiB at start, peak %d MiB, %d MiB at the end; per request: %s",
				pat.name, pat.requests, codes, start>>10, peak>>10, status(t, pid, "VmRSS")>>10, strings.Join(times, " "))
			if peak > 1<<20 { // kB: 1 GiB
				t.Errorf("peak RSS %d MiB, over 1 GiB", peak>>10)
			}
		})
	}
}

// status reads a kB field of /proc/<pid>/status.
func status(t *testing.T, pid int, field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}
