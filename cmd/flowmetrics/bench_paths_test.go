package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/corpus"
)

// BenchmarkPaths measures what conversation paths cost: the same corpus (9
// in 10 conversations end with a customer.end) through replay into the
// embedded store and through serve's HTTP ingest, with paths off and on, in
// one run. With paths on, replay closes every ended conversation at the end
// of its input, and serve closes them as they come due (grace 1 s, idle
// timeout 2 s, so the closing happens during the measurement).
//
//	go test ./cmd/flowmetrics -run '^$' -bench BenchmarkPaths -benchtime 3x
func BenchmarkPaths(b *testing.B) {
	path := benchCorpusWith(b, corpus.Options{Events: benchEvents, Seed: benchCorpusSeed, Ends: 0.9})
	for _, on := range []bool{false, true} {
		name := map[bool]string{false: "off", true: "on"}[on]
		b.Run("replay-embedded/"+name, func(b *testing.B) { benchPathsReplay(b, path, on) })
	}
	for _, on := range []bool{false, true} {
		name := map[bool]string{false: "off", true: "on"}[on]
		b.Run("ingest-http/"+name, func(b *testing.B) { benchPathsHTTP(b, path, on) })
	}
}

func pathsYAML(on bool) string {
	return fmt.Sprintf("paths: {enabled: %v, grace: 1s, idle_timeout: 2s}\n", on)
}

func benchPathsReplay(b *testing.B, corpusPath string, on bool) {
	tmp := b.TempDir()
	cfgPath := filepath.Join(tmp, "flowmetrics.yaml")
	os.WriteFile(cfgPath, []byte(pathsYAML(on)+"sinks: {prometheus: {enabled: false}}\n"), 0o644)
	benchResetPeakRSS(b)
	runs := 0
	for b.Loop() {
		dir := filepath.Join(tmp, strconv.Itoa(runs))
		var stderr bytes.Buffer
		args := []string{"-config", cfgPath, "-o", os.DevNull, "-progress=false", "-data-dir", dir, corpusPath}
		if err := runReplay(context.Background(), args, strings.NewReader(""), io.Discard, &stderr); err != nil {
			b.Fatalf("replay: %v\n%s", err, stderr.String())
		}
		if !strings.Contains(stderr.String(), fmt.Sprintf("read %d, accepted %d,", benchEvents, benchEvents)) {
			b.Fatalf("replay summary: got %q", stderr.String())
		}
		b.StopTimer()
		os.RemoveAll(dir)
		runs++
		b.StartTimer()
	}
	b.ReportMetric(float64(runs*benchEvents)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(benchPeakRSS(b), "peak-RSS-MiB")
}

func benchPathsHTTP(b *testing.B, corpusPath string, on bool) {
	tmp := b.TempDir()
	cfg := config.Default()
	cfg.Paths.Enabled = &on
	cfg.Paths.Grace, cfg.Paths.IdleTimeout = time.Second, 2*time.Second
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchClients}}
	defer client.CloseIdleConnections()
	runs := 0
	benchResetPeakRSS(b)
	for b.Loop() {
		b.StopTimer()
		url, stop := benchServeConfig(b, cfg, filepath.Join(tmp, strconv.Itoa(runs)))
		bodies := make(chan []byte, 2*benchClients)
		go benchBodies(corpusPath, bodies)
		errs := make(chan error, benchClients)
		var wg sync.WaitGroup
		b.StartTimer()
		for range benchClients {
			wg.Go(func() {
				for body := range bodies {
					if err := benchPost(client, url, body); err != nil {
						errs <- err
						for range bodies {
						}
						return
					}
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
		runs++
		b.StartTimer()
	}
	b.ReportMetric(float64(runs*benchEvents)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(benchPeakRSS(b), "peak-RSS-MiB")
}
