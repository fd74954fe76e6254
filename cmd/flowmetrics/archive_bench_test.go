package main

// BenchmarkArchive measures the real binary at the scale of an archive: it
// generates an archive (internal/corpus.WriteArchive: conversations side by
// side, every event repeating the participant's attributes so far,
// duplicates, malformed names), in time order and shuffled, and in the same
// run measures
//
//   - parse: the project's own decoder (genesys.Decode, one goroutine, in
//     this process) over the time-ordered file, the floor every other
//     figure is compared with (x-parse);
//   - parse-all-cores: the same file parsed by genesys.DecodeParallel on
//     every core, as replay parses it, mostly from the page cache (the
//     pass before read the file): the stricter floor (x-parse-all-cores);
//   - replay-durable-ordered / -shuffled: `flowmetrics replay -data-dir`
//     (the embedded Pebble store) as a child process, with its peak RSS
//     (VmHWM, see watchPeakRSS), the data directory's size and its tables' bytes per
//     conversation;
//   - replay-memory-ordered / -shuffled: the same with the memory store;
//     each replay beside a parse of its own file on every core just before
//     it, in wall time (x-parse-beside) and in CPU seconds
//     (cpu-x-parse-beside);
//   - serve-saturation: `flowmetrics serve` (embedded store) as a child
//     process, 8 clients posting the first 600,000 events (100 per request)
//     as fast as it acknowledges them;
//   - serve-10k: then, into the same server (its store holding those
//     conversations), the next 200,000 events offered at 10,000 events/s,
//     whatever the acknowledgements, with the p50/p99 acknowledgement time;
//     and serve's peak RSS and CPU seconds (user + system) over both parts.
//
// By default it is small (10,000 conversations, ≈ 55,000 events), so
// `go test -bench .` stays quick. The archive-scale run:
//
//	FLOWMETRICS_ARCHIVE_CONVERSATIONS=500000 go test ./cmd/flowmetrics -run '^$' -bench Archive -benchtime 1x -timeout 60m
//
// FLOWMETRICS_ARCHIVE_DIR keeps the generated files there, reused by later
// runs with the same size.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/corpus"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

const (
	archiveDefaultConversations = 10_000
	archiveSeed                 = 17
	archiveSaturationEvents     = 600_000
	archivePacedEvents          = 200_000
	archivePacedRate            = 10_000 // events/s offered
)

func BenchmarkArchive(b *testing.B) {
	convs := archiveDefaultConversations
	if v := os.Getenv("FLOWMETRICS_ARCHIVE_CONVERSATIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			b.Fatalf("FLOWMETRICS_ARCHIVE_CONVERSATIONS=%q: want a positive number", v)
		}
		convs = n
	}
	ordered, st := archiveFile(b, convs, false)
	shuffled, _ := archiveFile(b, convs, true)
	b.Logf("archive: %d conversations, %d events (%.0f MB), %d occurrences (%.3f per event), %d events with a malformed name",
		convs, st.Events, float64(st.Bytes)/1e6, st.Occurrences, float64(st.Occurrences)/float64(st.Events), st.MalformedEvents)
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		b.Logf("load average before: %s", strings.TrimSpace(string(load)))
	}

	// parse times decode over the time-ordered file, counting what it
	// accepts, and returns its events/s.
	parse := func(b *testing.B, decode func(io.Reader, func(genesys.Record) error) error) float64 {
		for b.Loop() {
			parseOnce(b, ordered, st.Events, decode)
		}
		rate := float64(b.N*st.Events) / b.Elapsed().Seconds()
		b.ReportMetric(rate, "events/s")
		return rate
	}
	var floor float64 // events/s of the parse-only pass
	b.Run("parse", func(b *testing.B) {
		floor = parse(b, func(r io.Reader, fn func(genesys.Record) error) error {
			return genesys.Decode(bufio.NewReaderSize(r, 1<<20), fn)
		})
	})
	// The same file parsed on every core (genesys.DecodeParallel, as
	// replay parses it), just after the pass above read it, so mostly
	// from the page cache: the floor a replay on this machine could reach
	// if counting cost nothing.
	var floorAll float64
	b.Run("parse-all-cores", func(b *testing.B) {
		floorAll = parse(b, func(r io.Reader, fn func(genesys.Record) error) error {
			return genesys.DecodeParallel(r, runtime.GOMAXPROCS(0), fn)
		})
	})
	report := func(b *testing.B, rate float64) {
		b.ReportMetric(rate, "events/s")
		if floor > 0 {
			b.ReportMetric(floor/rate, "x-parse")
		}
		if floorAll > 0 {
			b.ReportMetric(floorAll/rate, "x-parse-all-cores")
		}
	}

	for _, tc := range []struct {
		name    string
		file    string
		durable bool
	}{
		{"replay-durable-ordered", ordered, true},
		{"replay-durable-shuffled", shuffled, true},
		{"replay-memory-ordered", ordered, false},
		{"replay-memory-shuffled", shuffled, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var elapsed, cpu, parseWall, parseCPU time.Duration
			var peak, diskMiB, sstPerConv float64
			for b.Loop() {
				// The floor beside it: the same file parsed on every
				// core just before, so that the machine's pace, which
				// moves from minute to minute, is the same for both.
				w, c := parseOnce(b, tc.file, st.Events, func(r io.Reader, fn func(genesys.Record) error) error {
					return genesys.DecodeParallel(r, runtime.GOMAXPROCS(0), fn)
				})
				parseWall, parseCPU = parseWall+w, parseCPU+c
				dir := filepath.Join(b.TempDir(), "data")
				args := []string{"replay", "-o", os.DevNull, "-progress=false"}
				if tc.durable {
					args = append(args, "-data-dir", dir)
				}
				res := archiveRun(b, exec.Command(binary, append(args, tc.file)...))
				want := fmt.Sprintf("read %d, accepted %d, skipped 0, rejected 0, occurrences %d, malformed %d ", st.Events, st.Events, st.Occurrences, st.MalformedEvents)
				if !strings.Contains(res.stderr, want) {
					b.Fatalf("replay summary: got %q, want %q", res.stderr, want)
				}
				elapsed += res.wall
				cpu += res.cpu
				peak = max(peak, res.maxRSS)
				if tc.durable {
					all, sst := dirSize(b, dir)
					diskMiB, sstPerConv = float64(all)/(1<<20), float64(sst)/float64(convs)
				}
			}
			report(b, float64(b.N*st.Events)/elapsed.Seconds())
			// Against the pass beside it: wall time (the rates'
			// ratio) and CPU seconds (user + system), which the
			// machine's other work moves less.
			b.ReportMetric(elapsed.Seconds()/parseWall.Seconds(), "x-parse-beside")
			b.ReportMetric(cpu.Seconds()/parseCPU.Seconds(), "cpu-x-parse-beside")
			b.ReportMetric(float64(b.N*st.Events)/parseWall.Seconds(), "parse-beside-events/s")
			b.ReportMetric(peak, "peak-RSS-MiB")
			if tc.durable {
				b.ReportMetric(diskMiB, "disk-MiB")
				b.ReportMetric(sstPerConv, "sst-B/conv")
			}
		})
	}

	b.Run("serve", func(b *testing.B) {
		for b.Loop() {
			archiveServe(b, ordered, st.Events, report)
		}
	})
}

// archiveServe runs serve on a fresh data directory, saturates it with the
// first events of the archive, then offers the next ones at a fixed rate.
func archiveServe(b *testing.B, path string, events int, report func(*testing.B, float64)) {
	saturation := min(archiveSaturationEvents, events*3/4)
	paced := min(archivePacedEvents, events-saturation)
	bodies, err := archiveBodies(path, saturation+paced)
	if err != nil {
		b.Fatal(err)
	}
	// The replays before leave their data directories' writes and
	// deletions to the disk: have them done first, so that serve's log
	// syncs (every acknowledgement waits for one) measure serve's own.
	syscall.Sync()
	addr := freeAddr(b)
	cmd := exec.Command(binary, "serve", "-listen", addr, "-data-dir", b.TempDir(), "-log-level", "warn")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	peakRSS := watchPeakRSS(cmd.Process.Pid)
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	deadline := time.Now().Add(benchReadyWithin)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("serve did not come up on %s: %v\n%s", addr, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	url := "http://" + addr + "/v1/events"
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()

	nSat := (saturation + benchPerRequest - 1) / benchPerRequest
	b.Run("saturation", func(b *testing.B) {
		work := make(chan []byte)
		lat := make([][]time.Duration, benchClients)
		errs := make(chan error, benchClients)
		var wg sync.WaitGroup
		start := time.Now()
		for c := range benchClients {
			wg.Go(func() {
				for body := range work {
					t := time.Now()
					if err := archivePost(client, url, body); err != nil {
						errs <- err
						return
					}
					lat[c] = append(lat[c], time.Since(t))
				}
			})
		}
	send:
		for _, body := range bodies[:nSat] {
			select {
			case work <- body:
			case err := <-errs:
				b.Fatal(err)
				break send
			}
		}
		close(work)
		wg.Wait()
		el := time.Since(start)
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		report(b, float64(saturation)/el.Seconds())
		reportLatency(b, slices.Concat(lat...))
	})
	b.Run("10k", func(b *testing.B) {
		var mu sync.Mutex
		var lat []time.Duration
		var failed error
		refused := 0
		var wg sync.WaitGroup
		every := time.Duration(float64(time.Second) * benchPerRequest / archivePacedRate)
		start := time.Now()
		for i, body := range bodies[nSat:] {
			time.Sleep(time.Until(start.Add(time.Duration(i) * every)))
			wg.Go(func() {
				t := time.Now()
				err := archivePost(client, url, body)
				d := time.Since(t)
				mu.Lock()
				defer mu.Unlock()
				var busy *busyError
				switch {
				case errors.As(err, &busy):
					// Refused for backpressure (a machine too busy to
					// keep up): counted, not timed.
					refused++
				case err != nil:
					if failed == nil {
						failed = err
					}
				default:
					lat = append(lat, d)
				}
			})
		}
		wg.Wait()
		if failed != nil {
			b.Fatal(failed)
		}
		b.ReportMetric(float64(paced)/time.Since(start).Seconds(), "events/s")
		reportLatency(b, lat)
		b.ReportMetric(float64(refused), "refused-503")
		// serve's peak memory over both parts, after its shutdown.
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			b.Fatalf("serve: %v\n%s", err, stderr.String())
		}
		b.ReportMetric(peakRSS(), "peak-RSS-MiB")
		// serve's CPU over both parts (user + system, from the kernel's
		// accounting): what a busy machine inflates far less than the
		// rates and latencies above.
		cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		b.ReportMetric(cpu.Seconds(), "serve-cpu-s")
		b.ReportMetric(float64(cpu.Microseconds())/float64(saturation+paced), "cpu-us/event")
	})
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

func archivePost(client *http.Client, url string, body []byte) error {
	resp, err := client.Post(url, "application/x-ndjson", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	switch {
	case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
		return &busyError{fmt.Sprintf("ingest: got %s (%s)", resp.Status, bytes.TrimSpace(msg))}
	case resp.StatusCode != http.StatusAccepted:
		return fmt.Errorf("ingest: got %s (%s), want 202", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// busyError is a request refused with 503 and Retry-After: nothing of it
// was acknowledged, and a sender retries it later.
type busyError struct{ msg string }

func (e *busyError) Error() string { return e.msg }

// archiveBodies reads the first n events of the archive into NDJSON bodies
// of benchPerRequest events.
func archiveBodies(path string, n int) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var out [][]byte
	var body []byte
	for i := 0; i < n && sc.Scan(); i++ {
		body = append(append(body, sc.Bytes()...), '\n')
		if (i+1)%benchPerRequest == 0 {
			out = append(out, body)
			body = nil
		}
	}
	if len(body) > 0 {
		out = append(out, body)
	}
	return out, sc.Err()
}

type archiveResult struct {
	wall   time.Duration
	cpu    time.Duration // user + system
	maxRSS float64       // MiB
	stderr string
}

// parseOnce decodes file with decode, counting the events it accepts (want
// of them), and returns its wall time and this process's CPU time (user +
// system) over it: nothing else of the benchmark runs meanwhile.
func parseOnce(b *testing.B, file string, want int, decode func(io.Reader, func(genesys.Record) error) error) (wall, cpu time.Duration) {
	b.Helper()
	f, err := os.Open(file)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	before := selfCPU(b)
	start := time.Now()
	n := 0
	err = decode(f, func(r genesys.Record) error {
		if r.Outcome == genesys.Accepted {
			n++
		}
		return nil
	})
	wall = time.Since(start)
	if err != nil || n != want {
		b.Fatalf("decoded %d accepted events (err %v), want %d", n, err, want)
	}
	return wall, selfCPU(b) - before
}

// selfCPU is this process's CPU time so far, user + system.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// archiveRun runs cmd to its end and returns its wall time and peak RSS.
func archiveRun(b *testing.B, cmd *exec.Cmd) archiveResult {
	b.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	peak := watchPeakRSS(cmd.Process.Pid)
	err := cmd.Wait()
	wall := time.Since(start)
	if err != nil {
		b.Fatalf("%s: %v\n%s", cmd, err, stderr.String())
	}
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return archiveResult{wall: wall, cpu: cpu, maxRSS: peak(), stderr: stderr.String()}
}

// watchPeakRSS follows the peak resident set of the child process pid, in
// MiB: its VmHWM, read every 50 ms until the returned function is called
// (the last reading is at most 50 ms old when the child has exited).
//
// The child's rusage (maxrss) is no measure of it: Go starts a child with
// vfork, and at exec Linux counts the peak of the memory it leaves, the
// parent's, into the child's maxrss. serve's benchmark holds its 800,000
// request bodies (about 1 GB) when it starts serve, so serve's maxrss was
// that, whatever serve itself used.
func watchPeakRSS(pid int) func() float64 {
	path := fmt.Sprintf("/proc/%d/status", pid)
	stop, done := make(chan struct{}), make(chan float64, 1)
	go func() {
		var peak float64
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			peak = max(peak, vmHWMMiB(path))
			select {
			case <-stop:
				done <- max(peak, vmHWMMiB(path))
				return
			case <-t.C:
			}
		}
	}()
	return func() float64 {
		close(stop)
		return <-done
	}
}

// vmHWMMiB is the VmHWM (peak resident set) of a /proc status file in MiB;
// 0 where there is none.
func vmHWMMiB(statusPath string) float64 {
	data, err := os.ReadFile(statusPath)
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// dirSize returns the bytes of the files under dir, and of its tables
// (*.sst) alone: the store's state, without the write-ahead logs Pebble
// preallocates (replay's last memtable is in those, not yet in a table).
func dirSize(b *testing.B, dir string) (all, sst int64) {
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			all += fi.Size()
			if strings.HasSuffix(path, ".sst") {
				sst += fi.Size()
			}
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return all, sst
}

// archiveFile writes (or, under FLOWMETRICS_ARCHIVE_DIR, reuses) the
// archive of convs conversations.
func archiveFile(b *testing.B, convs int, shuffle bool) (string, corpus.ArchiveStats) {
	b.Helper()
	dir := os.Getenv("FLOWMETRICS_ARCHIVE_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	order := "ordered"
	if shuffle {
		order = "shuffled"
	}
	path := filepath.Join(dir, fmt.Sprintf("archive-%d-%d-%s.ndjson", convs, archiveSeed, order))
	stats := path + ".stats"
	var st corpus.ArchiveStats
	if data, err := os.ReadFile(stats); err == nil {
		if _, err := fmt.Sscan(string(data), &st.Events, &st.Occurrences, &st.MalformedEvents, &st.Bytes); err == nil {
			if fi, err := os.Stat(path); err == nil && fi.Size() == st.Bytes {
				return path, st
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	st, err = corpus.WriteArchive(w, corpus.ArchiveOptions{Conversations: convs, Seed: archiveSeed, Shuffle: shuffle})
	if err := errors.Join(err, w.Flush(), f.Close()); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(stats, fmt.Appendf(nil, "%d %d %d %d\n", st.Events, st.Occurrences, st.MalformedEvents, st.Bytes), 0o644); err != nil {
		b.Fatal(err)
	}
	return path, st
}
