package datadog

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// newSinkOn returns a sink of cfg's mode delivering to an existing fake.
func newSinkOn(t *testing.T, f *datadogtest.Intake, cfg Config) *Sink {
	t.Helper()
	t.Setenv("FLOWMETRICS_TEST_DD_KEY", testKey)
	cfg.URL = f.URL
	cfg.APIKeyEnv = "FLOWMETRICS_TEST_DD_KEY"
	if cfg.Now == nil {
		cfg.Now = f.Now
	}
	if cfg.RetryInitial == 0 {
		cfg.RetryInitial, cfg.RetryMax = time.Millisecond, 5*time.Millisecond
	}
	s, err := New(cfg, sink.Deps{Namer: naming.New(naming.Config{}), Metrics: telemetry.New(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

func TestDistributionGoldenPayload(t *testing.T) {
	h := newHarness(t, Config{Mode: Distribution}, naming.Config{Tags: map[string]string{"env": "prod", "team": "CX"}})
	if err := h.s().Send(ctx(t), samplePoints()); err != nil {
		t.Fatalf("Send: got %v, want nil", err)
	}
	if len(h.fake.Bodies) != 1 {
		t.Fatalf("got %d payloads, want 1", len(h.fake.Bodies))
	}
	golden.Check(t, filepath.Join("testdata", "distribution_default.golden.json"), h.fake.Bodies[0])
	h.fake.CheckDist(int(sum(samplePoints())))
	// Two points of one series and bucket are one point of 3 values.
	if got := h.fake.DistHeld("genesys.flow.metric", "env:prod,flow:customerrouting,metric:unknown,team:cx", pt("", "", 50*time.Second, 0).Bucket.Unix()); got != 3 {
		t.Errorf("values at the first bucket: got %d, want 3", got)
	}
}

// TestDistributionLargeBucket: a series-second with more occurrences than a
// point may hold is sent as several points of that second, in payloads
// within the limits, and every occurrence is held once.
func TestDistributionLargeBucket(t *testing.T) {
	h := newHarness(t, Config{Mode: Distribution, MaxUncompressedBytes: 300000}, naming.Config{})
	h.fake.Do(func() { h.fake.MaxUncompressed = 300000 })
	points := []flowmetrics.Point{pt("Big", "Burst", 20*time.Second, 2*MaxValuesPerPoint+7), pt("Big", "Burst", 20*time.Second, 5), pt("Small", "One", 20*time.Second, 1)}
	if err := h.s().Send(ctx(t), points); err != nil {
		t.Fatalf("Send: got %v, want nil", err)
	}
	h.fake.CheckDist(int(sum(points)))
	if n := len(h.fake.Bodies); n < 3 {
		t.Errorf("payloads: got %d, want at least 3 (no payload may hold more than one full point)", n)
	}
	for _, st := range h.fake.Statuses {
		if st != http.StatusAccepted {
			t.Errorf("got status %d, want only 202", st)
		}
	}
}

// TestDistributionPartialFailureIsNotResent: in distribution mode a resent
// payload would count twice, so a payload accepted before a failure must
// not be sent again by the retry inside Send nor by the pipeline's retry.
func TestDistributionPartialFailureIsNotResent(t *testing.T) {
	for _, tt := range []struct {
		name       string
		maxRetries int
		failures   int
		wantErr    bool
	}{
		{"retried within Send", 2, 1, false},
		{"resumed by the next Send", 1, 2, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{Mode: Distribution, MaxRetries: tt.maxRetries, MaxUncompressedBytes: 1200}, naming.Config{})
			script := []datadogtest.Response{{Status: http.StatusAccepted}}
			for i := 0; i < tt.failures; i++ {
				script = append(script, datadogtest.Response{Status: http.StatusServiceUnavailable})
			}
			h.fake.Do(func() { h.fake.Script = script })
			points := manyPoints(30)
			err := h.sink.Send(ctx(t), points)
			if (err != nil) != tt.wantErr {
				t.Fatalf("first Send: got %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				if err := h.sink.Send(ctx(t), points); err != nil {
					t.Fatalf("second Send: got %v, want nil", err)
				}
			}
			if n := len(h.fake.Bodies); n < 3 {
				t.Errorf("accepted payloads: got %d, want at least 3 (the batch must be split)", n)
			}
			h.fake.CheckDist(int(sum(points)))
		})
	}
}

// TestConcurrentWriters: several sinks (as several Lambda instances or
// serve processes would) deliver occurrences of the same series and
// seconds at once. Datadog's rule decides: distributions keep every value,
// so the totals are exact; counts keep the last value per series and second,
// so with more than one writer they are not (and with one writer they are).
func TestConcurrentWriters(t *testing.T) {
	const writers, batches = 4, 30
	// Each writer delivers batches of the same three series over five
	// buckets: every series-second is written by every writer.
	batch := func(w, i int) []flowmetrics.Point {
		var ps []flowmetrics.Point
		for s, flow := range []string{"A", "B", "C"} {
			ps = append(ps, pt(flow, "M", time.Duration((i+s)%5)*10*time.Second, int64(1+(w+i)%3)))
		}
		return ps
	}
	want := 0
	for w := 0; w < writers; w++ {
		for i := 0; i < batches; i++ {
			want += int(sum(batch(w, i)))
		}
	}
	run := func(t *testing.T, mode Mode, n int) *datadogtest.Intake {
		f := datadogtest.New(t, testKey, fixedClock())
		var wg sync.WaitGroup
		for w := 0; w < n; w++ {
			s := newSinkOn(t, f, Config{Mode: mode})
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < batches; i++ {
					if err := s.Send(context.Background(), batch(w, i)); err != nil {
						t.Errorf("writer %d batch %d: %v", w, i, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return f
	}
	t.Run("distribution, several writers: exact", func(t *testing.T) {
		run(t, Distribution, writers).CheckDist(want)
	})
	t.Run("count, several writers: undercounts", func(t *testing.T) {
		f := run(t, Count, writers)
		if got := f.Total(); got >= float64(want) {
			t.Errorf("count mode with %d writers: Datadog holds %v of %d; want an undercount (last value per series and second wins)", writers, got, want)
		} else {
			t.Logf("count mode with %d writers: Datadog holds %v of %d occurrences", writers, got, want)
		}
	})
	t.Run("count, one writer: exact", func(t *testing.T) {
		f := datadogtest.New(t, testKey, fixedClock())
		s := newSinkOn(t, f, Config{})
		n := 0
		for w := 0; w < writers; w++ {
			for i := 0; i < batches; i++ {
				if err := s.Send(ctx(t), batch(w, i)); err != nil {
					t.Fatal(err)
				}
				n += int(sum(batch(w, i)))
			}
		}
		if got := f.Total(); got != float64(want) || n != want {
			t.Errorf("count mode with one writer: Datadog holds %v, want %d", got, want)
		}
	})
}

// TestDistributionLatePolicy: clamping moves late points into the window
// (counted), dropping discards them (counted); either way nothing outside
// the window is sent.
func TestDistributionLatePolicy(t *testing.T) {
	points := []flowmetrics.Point{pt("F", "Old", 2*time.Hour, 3), pt("F", "Now", 0, 2), pt("F", "Ahead", -time.Hour, 4)}
	for _, tt := range []struct {
		policy LatePolicy
		want   int
	}{{Clamp, 9}, {Drop, 2}} {
		t.Run(string(tt.policy), func(t *testing.T) {
			h := newHarness(t, Config{Mode: Distribution, LatePolicy: tt.policy}, naming.Config{})
			if err := h.s().Send(ctx(t), points); err != nil {
				t.Fatalf("Send: %v", err)
			}
			h.fake.CheckDist(tt.want)
		})
	}
}

func TestModeEndpoint(t *testing.T) {
	for _, tt := range []struct {
		mode Mode
		want string
	}{{"", "https://api.datadoghq.eu/api/v2/series"}, {Count, "https://api.datadoghq.eu/api/v2/series"}, {Distribution, "https://api.datadoghq.eu/api/v1/distribution_points"}} {
		got, err := Config{Site: "datadoghq.eu", Mode: tt.mode}.withDefaults().endpoint()
		if err != nil || got != tt.want {
			t.Errorf("mode %q: got %q, %v; want %q", tt.mode, got, err, tt.want)
		}
	}
	if err := (Config{Mode: "gauge"}).Validate(); err == nil {
		t.Error(`mode "gauge": got nil, want an error`)
	}
}

var _ = fmt.Sprint

// BenchmarkPayloadSize reports the request size per occurrence of each mode
// for a 10-second batch of 160 series (20 flows × 8 metrics) holding perSeries
// occurrences each: distributions carry one value per occurrence, counts
// one number per series-second.
func BenchmarkPayloadSize(b *testing.B) {
	for _, perSeries := range []int64{1, 10, 100, 1000} {
		for _, mode := range []Mode{Count, Distribution} {
			b.Run(fmt.Sprintf("%s/%d_per_series", mode, perSeries), func(b *testing.B) {
				var points []flowmetrics.Point
				for f := 0; f < 20; f++ {
					for m := 0; m < 8; m++ {
						points = append(points, pt(fmt.Sprintf("Flow %d", f), fmt.Sprintf("Step%d", m), 20*time.Second, perSeries))
					}
				}
				l := NewLedger(Name, mode, Clamp, fixedClock(), sink.Deps{})
				pk := packer{maxCompressed: MaxPayloadBytes, maxUncompressed: MaxUncompressedBytes, compress: gz}
				if mode == Distribution {
					pk.compress = deflate
				}
				var raw, body int
				for i := 0; i < b.N; i++ {
					batch := l.NewBatch(points)
					ps, _ := pk.pack(l.Plan(batch))
					raw, body = 0, 0
					for _, p := range ps {
						raw += p.raw
						body += len(p.body)
					}
				}
				occ := float64(20 * 8 * perSeries)
				b.ReportMetric(float64(raw)/occ, "json_B/occ")
				b.ReportMetric(float64(body)/occ, "wire_B/occ")
			})
		}
	}
}
