package main

// Throughput benchmarks of the real replay and serve paths, in process, over
// a corpus of realistic events (internal/corpus). They report events/s and
// the peak resident memory of the test process (VmHWM, reset at the start of
// each benchmark; it includes the benchmark's own clients and buffers).
//
//	go test ./cmd/flowmetrics -run '^$' -bench . -benchtime 3x

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/corpus"
)

const (
	benchEvents      = 200_000 // events in the corpus of one benchmark
	benchPerRequest  = 100     // events per ingest request
	benchClients     = 8       // concurrent ingest clients
	benchCorpusSeed  = 42
	benchReadyWithin = 15 * time.Second
)

func BenchmarkReplayEmbedded(b *testing.B) { benchReplay(b, true) }

func BenchmarkReplayMemory(b *testing.B) { benchReplay(b, false) }

// benchReplay runs `flowmetrics replay` over the corpus file, JSON lines to
// /dev/null, into a fresh data directory per run when embedded.
func benchReplay(b *testing.B, embedded bool) {
	path := benchCorpus(b)
	tmp := b.TempDir()
	benchResetPeakRSS(b)
	runs := 0
	for b.Loop() {
		args := []string{"-o", os.DevNull, "-progress=false"}
		dir := filepath.Join(tmp, strconv.Itoa(runs))
		if embedded {
			args = append(args, "-data-dir", dir)
		}
		var stderr bytes.Buffer
		if err := runReplay(context.Background(), append(args, path), strings.NewReader(""), io.Discard, &stderr); err != nil {
			b.Fatalf("replay: %v\n%s", err, stderr.String())
		}
		if !strings.Contains(stderr.String(), fmt.Sprintf("read %d, accepted %d,", benchEvents, benchEvents)) {
			b.Fatalf("replay summary: got %q, want every one of %d events read and accepted", stderr.String(), benchEvents)
		}
		b.StopTimer()
		os.RemoveAll(dir)
		runs++
		b.StartTimer()
	}
	b.ReportMetric(float64(runs*benchEvents)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(benchPeakRSS(b), "peak-RSS-MiB")
}

// BenchmarkIngestHTTP runs serve in process on the embedded store (default
// config: Prometheus sink) and posts the corpus to it from benchClients
// concurrent clients, benchPerRequest events per request. A 202 means the
// claims and pending points are on disk. One op is one pass of the corpus
// against a fresh data directory and server.
func BenchmarkIngestHTTP(b *testing.B) {
	path := benchCorpus(b)
	tmp := b.TempDir()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchClients}}
	defer client.CloseIdleConnections()
	var latencies []time.Duration
	requests, runs := 0, 0
	benchResetPeakRSS(b)
	for b.Loop() {
		b.StopTimer()
		url, stop := benchServe(b, filepath.Join(tmp, strconv.Itoa(runs)))
		bodies := make(chan []byte, 2*benchClients)
		go benchBodies(path, bodies)
		lat := make([][]time.Duration, benchClients)
		errs := make(chan error, benchClients)
		var wg sync.WaitGroup
		b.StartTimer()
		for c := range benchClients {
			wg.Go(func() {
				for body := range bodies {
					start := time.Now()
					if err := benchPost(client, url, body); err != nil {
						errs <- err
						for range bodies { // let the reader finish
						}
						return
					}
					lat[c] = append(lat[c], time.Since(start))
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		stop()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		for _, l := range lat {
			latencies = append(latencies, l...)
			requests += len(l)
		}
		if want := (runs + 1) * benchEvents / benchPerRequest; requests != want {
			b.Fatalf("got %d requests acknowledged, want %d", requests, want)
		}
		runs++
		b.StartTimer()
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(runs*benchEvents)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(requests)/b.Elapsed().Seconds(), "requests/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(benchPeakRSS(b), "peak-RSS-MiB")
}

// benchServe starts serve on a free loopback port with the embedded store in
// dataDir, and returns its ingest URL and a function that stops it (SIGTERM's
// path: drain, flush, close).
func benchServe(b *testing.B, dataDir string) (url string, stop func()) {
	return benchServeConfig(b, config.Default(), dataDir)
}

// benchServeConfig is benchServe with cfg.
func benchServeConfig(b *testing.B, cfg config.Config, dataDir string) (url string, stop func()) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg.DataDir, cfg.HTTP.Listen = dataDir, addr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, "", slog.New(slog.DiscardHandler)) }()
	deadline := time.Now().Add(benchReadyWithin)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case err := <-done:
			cancel()
			b.Fatalf("serve: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			b.Fatalf("serve did not come up on %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "http://" + addr + "/v1/events", func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("serve: %v", err)
		}
	}
}

// benchBodies reads the corpus into NDJSON bodies of benchPerRequest events.
func benchBodies(path string, out chan<- []byte) {
	defer close(out)
	f, err := os.Open(path)
	if err != nil {
		return // the clients see too few requests
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var body []byte
	n := 0
	for sc.Scan() {
		body = append(append(body, sc.Bytes()...), '\n')
		if n++; n == benchPerRequest {
			out <- body
			body, n = nil, 0
		}
	}
	if n > 0 {
		out <- body
	}
}

func benchPost(client *http.Client, url string, body []byte) error {
	resp, err := client.Post(url, "application/x-ndjson", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct{ Accepted int }
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("ingest response: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted || r.Accepted != benchPerRequest {
		return fmt.Errorf("ingest: got %s with %d accepted, want 202 with %d", resp.Status, r.Accepted, benchPerRequest)
	}
	return nil
}

// benchCorpus writes the corpus to a file of the benchmark's own.
func benchCorpus(b *testing.B) string {
	return benchCorpusWith(b, corpus.Options{Events: benchEvents, Seed: benchCorpusSeed})
}

// benchCorpusWith writes the corpus of o.
func benchCorpusWith(b *testing.B, o corpus.Options) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "corpus.ndjson")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := corpus.Write(w, o); err != nil {
		b.Fatal(err)
	}
	if err := errors.Join(w.Flush(), f.Close()); err != nil {
		b.Fatal(err)
	}
	return path
}

// benchResetPeakRSS returns freed memory to the OS and resets VmHWM to the
// current resident size, so the peak reported is this benchmark's.
func benchResetPeakRSS(b *testing.B) {
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Logf("cannot reset peak RSS (%v); it includes earlier benchmarks", err)
	}
}

// benchPeakRSS is VmHWM of /proc/self/status in MiB; 0 where there is none.
func benchPeakRSS(b *testing.B) float64 {
	peak := vmHWMMiB("/proc/self/status")
	if peak == 0 {
		b.Logf("no peak RSS in /proc/self/status")
	}
	return peak
}
