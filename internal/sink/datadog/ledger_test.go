package datadog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// restart returns a new Sink delivering to the same fake intake with cfg:
// the process after a restart. The caller closes the Sink it replaces.
func (h *harness) restart(t *testing.T, cfg Config) (*Sink, *telemetry.Metrics) {
	t.Helper()
	cfg.URL = h.fake.srv.URL
	cfg.APIKeyEnv = "FLOWMETRICS_TEST_DD_KEY"
	if cfg.Now == nil {
		cfg.Now = fixedClock()
	}
	if cfg.RetryInitial == 0 {
		cfg.RetryInitial = time.Millisecond
		cfg.RetryMax = 5 * time.Millisecond
	}
	m := telemetry.New()
	s, err := New(cfg, naming.New(naming.Config{}), m, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s, m
}

// held returns what the fake holds for the default-named series of flow f,
// metric m at ts.
func (f *fakeIntake) held(flow, metric string, ts int64) float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.store[pointKey{"genesys.flow.metric", "flow:" + strings.ToLower(flow) + ",metric:" + strings.ToLower(metric), ts}]
}

// noViolations is checkClean without the once-per-second rule, for tests
// in which a second is rightly written again.
func (f *fakeIntake) noViolations() {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, v := range f.violations {
		f.t.Errorf("contract violation: %s", v)
	}
	if f.outOfWindow > 0 {
		f.t.Errorf("%d points outside Datadog's window were sent", f.outOfWindow)
	}
}

func closeSink(t *testing.T, s *Sink) {
	t.Helper()
	if err := s.Close(ctx(t)); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestLedgerSurvivesRestart is the bug this file fixes: sink A delivers a
// bucket and stops; sink B, the next process, gets a late point for the same
// bucket and must send the running total, not 1.
func TestLedgerSurvivesRestart(t *testing.T) {
	bucket := pt("F", "M", 20*time.Second, 2).Bucket.Unix()
	tests := []struct {
		name   string
		ledger bool
		damage func(t *testing.T, path string) // between the processes
		want   float64
	}{
		{"memory ledger undercounts (the old behaviour)", false, nil, 1},
		{"ledger file", true, nil, 3},
		{"ledger file with a torn record after the last commit", true, func(t *testing.T, path string) {
			appendBytes(t, path, []byte{40, 0, 0, 0, 1, 2, 3})
		}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg Config
			if tt.ledger {
				cfg.LedgerPath = filepath.Join(t.TempDir(), "data", LedgerPath("", Name))
			}
			h := newHarness(t, cfg, naming.Config{})
			if err := h.sink.Send(ctx(t), []flowmetrics.Point{pt("F", "M", 20*time.Second, 2), pt("F", "Other", 0, 4)}); err != nil {
				t.Fatalf("A: Send: %v", err)
			}
			closeSink(t, h.sink)
			if tt.damage != nil {
				tt.damage(t, cfg.LedgerPath)
			}

			b, _ := h.restart(t, cfg)
			if err := b.Send(ctx(t), []flowmetrics.Point{pt("F", "M", 19*time.Second, 1)}); err != nil {
				t.Fatalf("B: Send: %v", err)
			}
			h.fake.noViolations()
			if got := h.fake.held("F", "M", bucket); got != tt.want {
				t.Errorf("bucket value after the restart: got %v, want %v", got, tt.want)
			}
			if got := h.fake.held("F", "Other", pt("F", "Other", 0, 4).Bucket.Unix()); got != 4 {
				t.Errorf("untouched bucket: got %v, want 4", got)
			}
		})
	}
}

// TestLedgerCrashWindows plays both crash windows of the package comment
// against the pipeline's contract (the cursor moves only after Send returned
// nil; a failed batch is resent unchanged), ending the first process with
// Close, which, like a crash, commits nothing.
func TestLedgerCrashWindows(t *testing.T) {
	t.Run("after 202, before the commit: resent batch, same totals", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "datadog-ledger")
		cfg := Config{LedgerPath: path, MaxRetries: 1, MaxUncompressedBytes: 1200}
		h := newHarness(t, cfg, naming.Config{})
		first := manyPoints(30)
		if err := h.sink.Send(ctx(t), first); err != nil {
			t.Fatalf("A: first batch: %v", err)
		}
		// The second batch touches the same series and second. Its first
		// payload is accepted, the next fails twice: Send fails, and the
		// process stops before the pipeline's retry.
		h.fake.do(func() {
			h.fake.script = []scripted{{status: http.StatusAccepted}, {status: http.StatusServiceUnavailable}, {status: http.StatusServiceUnavailable}}
		})
		second := manyPoints(30)
		if err := h.sink.Send(ctx(t), second); err == nil {
			t.Fatal("A: second batch: got nil, want a retryable error")
		}
		var partial float64
		h.fake.do(func() { partial = float64(len(h.fake.bodies)) })
		if partial < 2 {
			t.Fatalf("accepted payloads: got %v, want the first batch and part of the second", partial)
		}
		closeSink(t, h.sink)

		b, _ := h.restart(t, cfg)
		if err := b.Send(ctx(t), second); err != nil {
			t.Fatalf("B: resent second batch: %v", err)
		}
		h.fake.noViolations()
		if got, want := h.fake.total(), sum(first)+sum(second); got != want {
			t.Errorf("total held by Datadog: got %v, want %v", got, want)
		}
	})
	t.Run("after the commit, before the Ack: the accepted duplicate", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "datadog-ledger")
		h := newHarness(t, Config{LedgerPath: path}, naming.Config{})
		points := samplePoints()
		if err := h.sink.Send(ctx(t), points); err != nil {
			t.Fatalf("A: %v", err)
		}
		closeSink(t, h.sink) // no Ack: the pipeline sends the batch again
		b, _ := h.restart(t, Config{LedgerPath: path})
		if err := b.Send(ctx(t), points); err != nil {
			t.Fatalf("B: %v", err)
		}
		if got, want := h.fake.total(), 2*sum(points); got != want {
			t.Errorf("total held by Datadog: got %v, want %v (counted twice, the window DESIGN.md accepts)", got, want)
		}
	})
}

// TestLedgerClampedAcrossRestart: points too old for Datadog are clamped to
// now-59min; a second process clamping more points to the same second adds
// to what the first sent there, and one clamping to a later second leaves it.
func TestLedgerClampedAcrossRestart(t *testing.T) {
	lo := t0.Add(-MaxAge + Margin).Unix()
	for _, later := range []time.Duration{0, 30 * time.Second} {
		t.Run(fmt.Sprint("B runs ", later, " later"), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "datadog-ledger")
			h := newHarness(t, Config{LedgerPath: path}, naming.Config{})
			if err := h.sink.Send(ctx(t), []flowmetrics.Point{pt("F", "Old", 2*time.Hour, 3)}); err != nil {
				t.Fatal(err)
			}
			closeSink(t, h.sink)
			now := t0.Add(later)
			h.fake.do(func() { h.fake.now = func() time.Time { return now } })
			b, _ := h.restart(t, Config{LedgerPath: path, Now: func() time.Time { return now }})
			if err := b.Send(ctx(t), []flowmetrics.Point{pt("F", "Old", 3*time.Hour, 2)}); err != nil {
				t.Fatal(err)
			}
			h.fake.noViolations()
			loB := now.Add(-MaxAge + Margin).Unix()
			want := map[int64]float64{lo: 3, loB: 2}
			if loB == lo {
				want = map[int64]float64{lo: 5}
			}
			for ts, v := range want {
				if got := h.fake.held("F", "Old", ts); got != v {
					t.Errorf("value at %d: got %v, want %v", ts, got, v)
				}
			}
			if got := h.fake.total(); got != 5 {
				t.Errorf("total held by Datadog: got %v, want 5", got)
			}
		})
	}
}

// deliver runs points through l as a sink whose backend accepts everything
// would, and commits.
func deliver(t *testing.T, l *Ledger, points ...flowmetrics.Point) {
	t.Helper()
	b := l.NewBatch(points)
	l.Delivered(b, l.Plan(b))
	if err := l.Commit(); err != nil {
		t.Fatalf("Commit: %v", err)
	}
}

func snapshot(l *Ledger) map[totalKey]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.totals)
}

func openLedger(t *testing.T, path string, now func() time.Time) *Ledger {
	t.Helper()
	l, err := OpenLedger(path, Name, nil, Clamp, now, nil, nil)
	if err != nil {
		t.Fatalf("OpenLedger: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// TestLedgerTornFile: whatever a crash leaves at the end of the file (a cut
// record, garbage, a bad checksum) is cut when it is opened, the records
// before it are kept, and the file is clean again afterwards.
func TestLedgerTornFile(t *testing.T) {
	// build writes three commits and returns the totals after the second
	// and the third, and the file's size after the second.
	build := func(t *testing.T, path string) (two, three map[totalKey]int64, sizeTwo int64) {
		l := openLedger(t, path, fixedClock())
		deliver(t, l, pt("F", "A", 30*time.Second, 1), pt("F", "B", 30*time.Second, 2))
		deliver(t, l, pt("F", "A", 20*time.Second, 3))
		two, sizeTwo = snapshot(l), fileSize(t, path)
		deliver(t, l, pt("F", "C", 10*time.Second, 4)) // a new series: S and T records
		three = snapshot(l)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		return two, three, sizeTwo
	}
	tests := []struct {
		name      string
		damage    func(t *testing.T, path string, sizeTwo int64)
		wantThree bool // the third commit survives
	}{
		{"intact", func(*testing.T, string, int64) {}, true},
		{"last record cut short", func(t *testing.T, path string, _ int64) {
			if err := os.Truncate(path, fileSize(t, path)-3); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"cut inside a record header", func(t *testing.T, path string, sizeTwo int64) {
			if err := os.Truncate(path, sizeTwo+5); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"zeros after the last record", func(t *testing.T, path string, _ int64) {
			appendBytes(t, path, make([]byte, 4096))
		}, true},
		{"garbage after the last record", func(t *testing.T, path string, _ int64) {
			appendBytes(t, path, []byte("\x07\x00\x00\x00garbage-garbage"))
		}, true},
		{"bad checksum in the last record", func(t *testing.T, path string, _ int64) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)-1] ^= 0xff
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ledger")
			two, three, sizeTwo := build(t, path)
			tt.damage(t, path, sizeTwo)

			var logs strings.Builder
			l, err := OpenLedger(path, Name, nil, Clamp, fixedClock(), nil, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatalf("OpenLedger: %v", err)
			}
			want := two
			if tt.wantThree {
				want = three
			}
			if got := snapshot(l); !maps.Equal(got, want) {
				t.Errorf("totals: got %v, want %v", got, want)
			}
			torn := strings.Contains(logs.String(), "torn or corrupt")
			if wantTorn := tt.name != "intact"; torn != wantTorn {
				t.Errorf("warned about a torn tail: got %v, want %v; logs:\n%s", torn, wantTorn, logs.String())
			}
			// The file was rewritten clean: the next process reads the
			// same totals without a warning, and can append to it.
			deliver(t, l, pt("F", "A", 20*time.Second, 1))
			want = snapshot(l)
			l.Close()
			logs.Reset()
			l2, err := OpenLedger(path, Name, nil, Clamp, fixedClock(), nil, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			defer l2.Close()
			if got := snapshot(l2); !maps.Equal(got, want) {
				t.Errorf("totals after reopening: got %v, want %v", got, want)
			}
			if strings.Contains(logs.String(), "torn") {
				t.Errorf("file still torn after it was opened once:\n%s", logs.String())
			}
		})
	}
}

func TestLedgerFileStart(t *testing.T) {
	tests := []struct {
		name    string
		content string
		wantErr bool
	}{
		{"empty file", "", false},
		{"torn while being created", ledgerMagic[:7], false},
		{"not a ledger file", "state: important\nplease keep me\n", true},
		{"short and not a ledger file", "{}", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ledger")
			if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			l, err := OpenLedger(path, Name, nil, Clamp, fixedClock(), nil, nil)
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "not a flowmetrics ledger file") {
					t.Errorf("got %v, want an error saying it is not a ledger file", err)
				}
				if data, _ := os.ReadFile(path); string(data) != tt.content {
					t.Errorf("the file was changed to %q", data)
				}
				// The path is free again for a corrected configuration.
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
				l, err = OpenLedger(path, Name, nil, Clamp, fixedClock(), nil, nil)
				if err != nil {
					t.Fatalf("after moving the file away: %v", err)
				}
				l.Close()
				return
			}
			if err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			defer l.Close()
			if l.Len() != 0 {
				t.Errorf("totals: got %d, want 0", l.Len())
			}
			if data, _ := os.ReadFile(path); string(data) != ledgerMagic {
				t.Errorf("file after opening: got %q, want just the header", data)
			}
		})
	}
}

// TestLedgerPrune: totals older than PruneAge leave memory and, at the next
// rewrite, the file; a process opening the file later does not load them.
func TestLedgerPrune(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger")
	now := t0
	clock := func() time.Time { return now }
	l := openLedger(t, path, clock)
	deliver(t, l, pt("F", "Old", 20*time.Second, 1)) // bucket t0-20s
	now = t0.Add(30 * time.Minute)
	deliver(t, l, flowmetrics.Point{Flow: "F", Metric: "New", Bucket: flowmetrics.BucketStart(now, 10*time.Second), Width: 10 * time.Second, Count: 2})
	if got := l.Len(); got != 2 {
		t.Fatalf("Len at t0+30m: got %d, want 2", got)
	}
	now = t0.Add(PruneAge + time.Minute) // the first bucket is beyond PruneAge
	deliver(t, l)                        // Plan prunes
	if got := l.Len(); got != 1 {
		t.Errorf("Len after pruning: got %d, want 1", got)
	}
	want := snapshot(l)
	l.Close()

	l2 := openLedger(t, path, clock)
	if got := snapshot(l2); !maps.Equal(got, want) {
		t.Errorf("reopened: got %v, want %v", got, want)
	}
	l2.Close()
	// Opened much later, everything is too old: the file is emptied.
	now = now.Add(2 * time.Hour)
	l3 := openLedger(t, path, clock)
	if got := l3.Len(); got != 0 {
		t.Errorf("reopened 2 h later: Len %d, want 0", got)
	}
	if got := fileSize(t, path); got != int64(len(ledgerMagic)) {
		t.Errorf("file size: got %d, want just the header", got)
	}
}

// TestLedgerCompaction: a file that keeps receiving updates of the same
// totals is rewritten before it grows beyond twice the live totals plus the
// slack, and the rewrite loses nothing.
func TestLedgerCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger")
	l := openLedger(t, path, fixedClock())
	points := manyPoints(500)
	const commits = 50
	maxRecords := 0
	for i := 0; i < commits; i++ {
		deliver(t, l, points...)
		l.mu.Lock()
		maxRecords = max(maxRecords, l.file.records)
		l.mu.Unlock()
	}
	if limit := 2*len(points) + compactSlack + 2*len(points); maxRecords > limit {
		t.Errorf("records in the file peaked at %d, want at most %d", maxRecords, limit)
	}
	if maxRecords >= commits*len(points) {
		t.Errorf("the file was never rewritten: %d records", maxRecords)
	}
	want := snapshot(l)
	for k, v := range want {
		if v%commits != 0 {
			t.Fatalf("%v: total %d is not a multiple of %d", k, v, commits)
		}
	}
	l.Close()
	l2 := openLedger(t, path, fixedClock())
	if got := snapshot(l2); !maps.Equal(got, want) {
		t.Error("totals after reopening differ")
	}
}

// TestLedgerCommitFailure: when the ledger cannot be written after Datadog
// accepted a batch, Send fails (so the pipeline keeps the batch), and the
// pipeline's retry sends nothing again but commits.
func TestLedgerCommitFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "datadog-ledger")
	h := newHarness(t, Config{LedgerPath: path}, naming.Config{})
	var failures int
	h.sink.ledger.mu.Lock()
	h.sink.ledger.file.fault = func(op string) error {
		if failures > 0 {
			failures--
			return errors.New("disk full (injected)")
		}
		return nil
	}
	h.sink.ledger.mu.Unlock()
	failures = 1
	points := samplePoints()
	err := h.sink.Send(ctx(t), points)
	if err == nil || flowmetrics.IsPermanent(err) {
		t.Fatalf("Send with a failing ledger: got %v, want a retryable error", err)
	}
	if got := testutil.ToFloat64(h.m.SinkFailures.WithLabelValues(Name, "ledger")); got != 1 {
		t.Errorf("failures ledger: got %v, want 1", got)
	}
	if !strings.Contains(h.logs.String(), "ledger") {
		t.Errorf("no log line about the ledger:\n%s", h.logs.String())
	}
	if err := h.sink.Send(ctx(t), points); err != nil {
		t.Fatalf("the pipeline's retry: got %v, want nil", err)
	}
	h.fake.checkClean() // nothing sent twice
	closeSink(t, h.sink)

	b, _ := h.restart(t, Config{LedgerPath: path})
	if err := b.Send(ctx(t), []flowmetrics.Point{pt("CustomerRouting", "Unknown", 50*time.Second, 1)}); err != nil {
		t.Fatal(err)
	}
	if got := h.fake.held("CustomerRouting", "Unknown", pt("", "", 50*time.Second, 0).Bucket.Unix()); got != 4 {
		t.Errorf("bucket after the restart: got %v, want 4 (3 committed + 1)", got)
	}
}

// TestLedgerConcurrent: deliveries and commits from several goroutines (as
// the dogstatsd and datadog sinks of one process would do on their own
// ledgers, or misbehaving callers on one) keep every total; run with -race.
func TestLedgerConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger")
	l := openLedger(t, path, fixedClock())
	const workers, rounds = 8, 40
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				b := l.NewBatch([]flowmetrics.Point{pt(fmt.Sprint("Flow", w), "M", 20*time.Second, 1), pt(fmt.Sprint("Flow", w), "M", 0, 2)})
				l.Delivered(b, l.Plan(b))
				if err := l.Commit(); err != nil {
					t.Error(err)
					return
				}
				_ = l.Len()
			}
		}()
	}
	wg.Wait()
	want := snapshot(l)
	if len(want) != 2*workers {
		t.Fatalf("got %d totals, want %d", len(want), 2*workers)
	}
	for k, v := range want {
		if v != rounds && v != 2*rounds {
			t.Errorf("%v: got %d, want %d or %d", k, v, rounds, 2*rounds)
		}
	}
	l.Close()
	l2 := openLedger(t, path, fixedClock())
	if got := snapshot(l2); !maps.Equal(got, want) {
		t.Errorf("after reopening: got %v, want %v", got, want)
	}
}

// TestLedgerOpenTwice: two sinks of one process must not share a file.
func TestLedgerOpenTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger")
	l := openLedger(t, path, fixedClock())
	if _, err := OpenLedger(path, "dogstatsd", nil, Clamp, fixedClock(), nil, nil); err == nil || !strings.Contains(err.Error(), "already open") {
		t.Errorf("second open: got %v, want an error", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: got %v, want nil", err)
	}
	if err := l.Commit(); err == nil {
		t.Error("Commit after Close: got nil, want an error")
	}
	openLedger(t, path, fixedClock())
}

func TestLedgerPath(t *testing.T) {
	if got, want := LedgerPath("/var/lib/flowmetrics", Name), "/var/lib/flowmetrics/datadog-ledger"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestMemoryLedgerCommit: without a path nothing touches the disk.
func TestMemoryLedgerCommit(t *testing.T) {
	l, err := OpenLedger("", Name, nil, Clamp, fixedClock(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	deliver(t, l, pt("F", "M", 0, 1))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l.Len() != 1 {
		t.Errorf("Len: got %d, want 1", l.Len())
	}
}
