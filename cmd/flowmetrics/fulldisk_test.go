//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// fullDiskEvent is conversation i's attributes event: fullDiskMetrics metric
// attributes, all in the 10 s bucket of their own, so the JSON-lines sink's
// counts for that bucket must add up to fullDiskMetrics.
func fullDiskEvent(i int) string {
	at := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 10 * time.Second)
	conv := fmt.Sprintf("d15cf011-0000-4000-8000-%012d", i)
	attrs := map[string]string{"Language": "en-US"}
	for m := range fullDiskMetrics {
		attrs[fmt.Sprintf("FullDiskMetric_Step%d(%s)", m, at.Format(time.RFC3339Nano))] = ""
	}
	return string(genesys.Envelope{Conversation: conv, Participant: "p1", Time: at, Attributes: attrs}.DetailJSON())
}

const fullDiskMetrics = 5

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var s syscall.Statfs_t
	if err := syscall.Statfs(dir, &s); err != nil {
		t.Fatal(err)
	}
	return int64(s.Bavail) * s.Bsize
}

func healthz(addr string) (int, string) {
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestFullDisk runs serve with its data directory on a 40 MiB tmpfs, fills
// the disk with a file until only a little more than the watermark is free,
// and has four clients post new events, resending whatever was not
// acknowledged (2xx), until the store's own growth crosses the watermark:
// ingest must answer 503 with Retry-After and /healthz must say why, with no
// crash and no hang. Then the filler is deleted: ingest must resume by
// itself, every event be acknowledged, SIGTERM end serve within
// shutdown_timeout with status 0, and after a restart the JSON-lines sink
// must hold every acknowledged occurrence exactly once.
func TestFullDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts a tmpfs and fills it")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs (CI runs as root)")
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", data).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (a container without CAP_SYS_ADMIN?): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", data).Run() })

	out := filepath.Join(dir, "points.jsonl") // the sink's file is not on the small disk
	cfgPath := filepath.Join(dir, "flowmetrics.yaml")
	const shutdownTimeout = 10 * time.Second
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("http: {shutdown_timeout: %v}\npipeline: {flush_interval: 50ms}\nsinks:\n  jsonl: {path: %q}\n", shutdownTimeout, out)), 0o644)
	addr := freeAddr(t)
	args := []string{"-config", cfgPath, "-data-dir", data, "-listen", addr}
	srv := startServe(t, args...)
	defer func() {
		if srv.cmd.ProcessState == nil {
			srv.cmd.Process.Kill()
			srv.cmd.Wait()
		}
	}()
	if code, body := healthz(addr); code != http.StatusOK {
		t.Fatalf("fresh start on 40 MiB: got /healthz %d %s, want 200", code, body)
	}
	if _, err := os.Stat(filepath.Join(data, "EMERGENCY_BALLAST")); err != nil {
		t.Fatalf("no emergency ballast in the data directory: %v", err)
	}

	// The defaults on a 40 MiB filesystem: min_free 16 MiB, and a fresh
	// store's ballast, 4 MiB.
	// Leave 3 MiB above the watermark for the store to use up.
	const minFree = 16 << 20
	filler := filepath.Join(data, "filler")
	fill(t, filler, freeBytes(t, data)-minFree-3<<20)
	t.Logf("filler written: %.1f MiB free", float64(freeBytes(t, data))/(1<<20))

	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	const perRequest, clients = 200, 4
	var (
		produced     atomic.Int64 // requests handed to the clients
		acked        atomic.Int64
		refused      atomic.Int64 // 503 with Retry-After
		ackedAfter   atomic.Int64 // acknowledged after the space came back
		resumed      atomic.Bool
		unexpectedMu sync.Mutex
		unexpected   []string
	)
	next := make(chan int)
	go func() {
		defer close(next)
		for r := 0; ; r++ {
			// Go on until the disk was refused, the space came back and
			// ingest went on for a while.
			if resumed.Load() && ackedAfter.Load() >= 20 {
				return
			}
			select {
			case next <- r:
				produced.Add(1)
			case <-ctx.Done():
				return
			}
		}
	}()
	client := &http.Client{Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for r := range next {
				var lines []string
				for i := r * perRequest; i < (r+1)*perRequest; i++ {
					lines = append(lines, fullDiskEvent(i))
				}
				body := strings.Join(lines, "\n")
				for ctx.Err() == nil {
					resp, err := client.Post("http://"+addr+"/v1/events", "application/x-ndjson", strings.NewReader(body))
					if err != nil {
						unexpectedMu.Lock()
						unexpected = append(unexpected, err.Error())
						unexpectedMu.Unlock()
						time.Sleep(100 * time.Millisecond)
						continue
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode/100 == 2 {
						acked.Add(1)
						if resumed.Load() {
							ackedAfter.Add(1)
						}
						break
					}
					if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "" {
						refused.Add(1)
						// A sender waits Retry-After; a short wait keeps the test short.
						time.Sleep(100 * time.Millisecond)
						continue
					}
					unexpectedMu.Lock()
					unexpected = append(unexpected, fmt.Sprintf("%d %s", resp.StatusCode, b))
					unexpectedMu.Unlock()
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}

	// Wait for the refusal, check /healthz says why, then give the space back.
	for refused.Load() == 0 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if ctx.Err() != nil {
		t.Fatalf("no 503 after %d acknowledged requests; %.1f MiB free\n%s", acked.Load(), float64(freeBytes(t, data))/(1<<20), srv.stderr)
	}
	code, body := healthz(addr)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "disk space low") {
		t.Errorf("while refusing: got /healthz %d %s, want 503 naming the disk", code, body)
	}
	if _, err := os.Stat(filepath.Join(data, "EMERGENCY_BALLAST")); !os.IsNotExist(err) {
		t.Errorf("while refusing: got ballast stat %v, want it released", err)
	}
	t.Logf("refused after %d acknowledged requests, %.1f MiB free with the ballast released", acked.Load(), float64(freeBytes(t, data))/(1<<20))
	time.Sleep(500 * time.Millisecond) // clients keep resending meanwhile
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for ctx.Err() == nil {
		if code, _ := healthz(addr); code == http.StatusOK {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	resumed.Store(true)
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("clients did not finish: %d of %d requests acknowledged\n%s", acked.Load(), produced.Load(), srv.stderr)
	}
	if _, err := os.Stat(filepath.Join(data, "EMERGENCY_BALLAST")); err != nil {
		t.Errorf("after the space came back: got ballast stat %v, want it restored", err)
	}
	metrics := scrape(t, addr)
	if !strings.Contains(metrics, `flowmetrics_ingest_refused_total{reason="disk_low"}`) {
		t.Errorf("/metrics lacks flowmetrics_ingest_refused_total{reason=\"disk_low\"}")
	}

	start := time.Now()
	srv.cmd.Process.Signal(syscall.SIGTERM)
	err := srv.cmd.Wait()
	took := time.Since(start)
	if err != nil {
		t.Errorf("serve after SIGTERM: %v\n%s", err, srv.stderr)
	}
	if took > shutdownTimeout+time.Second {
		t.Errorf("SIGTERM took %v, want at most shutdown_timeout %v", took, shutdownTimeout)
	}
	logs := []string{srv.stderr.String()}
	// A restart on a disk that is already low: the store opens, ingest is
	// refused from the start, and resumes when the space comes back.
	fill(t, filler, freeBytes(t, data)-minFree+1<<20)
	srv = startServe(t, args...)
	if code, body := healthz(addr); code != http.StatusServiceUnavailable || !strings.Contains(body, "disk space low") {
		t.Errorf("restart on a low disk: got /healthz %d %s, want 503 naming the disk", code, body)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	code = 0
	for deadline := time.Now().Add(5 * time.Second); code != http.StatusOK && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		code, body = healthz(addr)
	}
	if code != http.StatusOK {
		t.Errorf("restart, space back: got /healthz %d %s, want 200", code, body)
	}
	srv.cmd.Process.Signal(syscall.SIGTERM)
	if err := srv.cmd.Wait(); err != nil {
		t.Fatalf("restarted serve after SIGTERM: %v\n%s", err, srv.stderr)
	}
	logs = append(logs, srv.stderr.String())
	for i, log := range logs {
		for _, bad := range []string{"panic", "no space left on device", "store failed"} {
			if strings.Contains(log, bad) {
				t.Errorf("serve's log (run %d) has %q: the store's own writes met the full disk:\n%s", i+1, bad, log)
			}
		}
	}

	counts := bucketCounts(t, out)
	events := int(produced.Load()) * perRequest
	missing, dups := 0, int64(0)
	for i := range events {
		ts := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 10 * time.Second).Format(time.RFC3339)
		switch n := counts[ts]; {
		case n < fullDiskMetrics:
			missing += fullDiskMetrics - int(n)
		case n > fullDiskMetrics:
			dups += n - fullDiskMetrics
		}
	}
	t.Logf("%d events (%d occurrences) in %d requests, %d answers 503 with Retry-After, SIGTERM took %v; delivered: %d missing, %d duplicates; other answers: %d %v",
		events, events*fullDiskMetrics, produced.Load(), refused.Load(), took.Round(time.Millisecond), missing, dups, len(unexpected), first(unexpected, 3))
	if missing != 0 {
		t.Errorf("lost %d acknowledged occurrences", missing)
	}
	if dups != 0 {
		t.Errorf("got %d duplicates, want 0 (no crash happened)", dups)
	}
	if len(counts) != events {
		t.Errorf("got %d distinct buckets, want %d", len(counts), events)
	}
	if len(unexpected) > 0 {
		t.Errorf("got %d answers that were neither 2xx nor 503 with Retry-After, e.g. %v", len(unexpected), first(unexpected, 3))
	}
}

// fill allocates a file of size bytes on the test's small disk.
func fill(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		t.Fatalf("filling the tmpfs: %v", err)
	}
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// bucketCounts sums the JSON-lines sink's counts per bucket timestamp.
func bucketCounts(t *testing.T, path string) map[string]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	counts := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l struct {
			Timestamp string
			Count     int64
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("bad line %q: %v", sc.Text(), err)
		}
		counts[l.Timestamp] += l.Count
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return counts
}
