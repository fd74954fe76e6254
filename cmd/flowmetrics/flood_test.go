package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// floodBody is an NDJSON body of just under size bytes: events of distinct
// conversations (from conversation first on), each with metricsPer metric
// attributes and a few plain ones, as Genesys sends them. It returns the
// body and its number of events.
func floodBody(first, size, metricsPer int) ([]byte, int) {
	at := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	var b bytes.Buffer
	n := 0
	for {
		conv := fmt.Sprintf("f100d000-0000-4000-8000-%012d", first+n)
		attrs := map[string]string{
			"Language": "en-US", "Queue": "Billing", "CustomerTier": "gold",
			"Notes": strings.Repeat("x", 4000),
		}
		for m := range metricsPer {
			attrs[genesys.AttributeName("Flood", fmt.Sprintf("Step%d", m), at.Add(time.Duration(n)*time.Second))] = ""
		}
		ev := genesys.Envelope{
			Conversation: conv, Participant: "p1", Time: at, Attributes: attrs,
			ID: "ev-" + conv, Source: "aws.partner/genesys.com/cloud/org/flood",
		}.JSON()
		if b.Len()+len(ev)+1 > size {
			return b.Bytes(), n
		}
		b.Write(ev)
		b.WriteByte('\n')
		n++
	}
}

// peakRSS is the highest resident set size of process pid so far (VmHWM).
func peakRSS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// TestConcurrentBodiesBounded is the flood that once took serve to 1.58 GB:
// 32 clients post a body just under the 10 MiB limit at once, on loopback,
// to the real binary with its defaults. The request bytes in flight are
// bounded (http.max_bytes_in_flight, 40 MiB by default): what does not fit
// is refused at once with 503 and Retry-After, and the client resends it,
// as EventBridge does. Every body is counted exactly once in the end. The
// peak RSS of serve is reported, not asserted.
func TestConcurrentBodiesBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts serve and posts 320 MiB")
	}
	const (
		clients    = 32
		size       = 10<<20 - 1
		metricsPer = 4
	)
	dir := t.TempDir()
	addr := freeAddr(t)
	s := startServe(t, "-data-dir", filepath.Join(dir, "data"), "-listen", addr)
	pid := s.cmd.Process.Pid
	defer func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		s.cmd.Wait()
	}()
	idle := peakRSS(pid)

	bodies := make([][]byte, clients)
	want := 0
	for c := range bodies {
		var n int
		bodies[c], n = floodBody(c*100_000, size, metricsPer)
		want += n * metricsPer
	}
	client := &http.Client{Timeout: 60 * time.Second}
	deadline := time.Now().Add(150 * time.Second)
	var (
		mu                  sync.Mutex
		occurrences, busy   int
		resets              int
		noRetryAfter, other []string
	)
	start := time.Now()
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				resp, err := client.Post("http://"+addr+"/v1/events", "application/x-ndjson", bytes.NewReader(bodies[c]))
				if err != nil {
					// serve refuses a body that does not fit before reading
					// it, and closes the connection after its 503: a client
					// still writing may see a broken pipe instead of the
					// answer. Nothing was acknowledged, so it resends, as
					// EventBridge does after a connection error.
					mu.Lock()
					resets++
					mu.Unlock()
					time.Sleep(100 * time.Millisecond)
					continue
				}
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				mu.Lock()
				switch resp.StatusCode {
				case http.StatusAccepted:
					var r struct{ Occurrences int }
					json.Unmarshal(raw, &r)
					occurrences += r.Occurrences
					mu.Unlock()
					return
				case http.StatusServiceUnavailable:
					busy++
					if _, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil {
						noRetryAfter = append(noRetryAfter, resp.Header.Get("Retry-After"))
					}
				default:
					other = append(other, fmt.Sprintf("%d %.200s", resp.StatusCode, raw))
					mu.Unlock()
					return
				}
				mu.Unlock()
				// Sooner than Retry-After, to keep the test short.
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if len(other) > 0 {
		t.Errorf("%d answers neither 202 nor 503: %q", len(other), other[:min(len(other), 3)])
	}
	if len(noRetryAfter) > 0 {
		t.Errorf("%d 503s without a Retry-After in seconds: %q", len(noRetryAfter), noRetryAfter[:min(len(noRetryAfter), 3)])
	}
	if busy+resets == 0 {
		t.Errorf("no 503: %d bodies of %.1f MiB at once were all admitted, past the 40 MiB bound", clients, float64(size)/(1<<20))
	}
	if occurrences != want {
		t.Errorf("got %d occurrences, want %d: every body counted exactly once", occurrences, want)
	}
	t.Logf("%d clients × %.1f MiB at once (%d occurrences): %d refused with 503 and %d connections closed mid-body, resent, all counted in %v; serve's peak RSS %s (idle %s)",
		clients, float64(size)/(1<<20), want, busy, resets, took.Round(100*time.Millisecond), peakRSS(pid), idle)
}
