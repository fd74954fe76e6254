package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// full returns a Recorder holding 50 flows × 20 metrics with a count in
// every bucket of the last 24 h: the worst case for memory and reads.
func full(tb testing.TB, now time.Time) *Recorder {
	tb.Helper()
	r := NewRecorder(func() time.Time { return now })
	var pts []flowmetrics.Point
	// One send a minute for the older hours (their 1 min buckets), one per
	// 10 s bucket for the last hour.
	step := func(at time.Time) time.Duration {
		if now.Sub(at) > FineSpan {
			return CoarseStep
		}
		return FineStep
	}
	for at := now.Add(-CoarseSpan + CoarseStep); !at.After(now); at = at.Add(step(at)) {
		pts = pts[:0]
		for f := range 50 {
			for m := range 20 {
				pts = append(pts, pt(fmt.Sprintf("Flow %02d", f), fmt.Sprintf("Metric%02d", m), at, int64(1+(f+m)%3)))
			}
		}
		r.Send(context.Background(), pts)
	}
	r.TakeState()
	return r
}

// BenchmarkSeries: building the JSON of GET /api/v1/series for 1000 full
// pairs, which the page asks for on every change.
func BenchmarkSeries(b *testing.B) {
	now := time.Date(2026, 12, 1, 12, 0, 5, 0, time.UTC)
	r := full(b, now)
	for _, rg := range Ranges {
		b.Run(rg.Name, func(b *testing.B) {
			var n int64
			for b.Loop() {
				w := countWriter{}
				json.NewEncoder(&w).Encode(seriesBody(r.Read(rg), true))
				n = w.n
			}
			b.ReportMetric(float64(n), "bytes/op")
		})
	}
}

// BenchmarkSend: one batch of 1000 points (one per pair) and its state.
func BenchmarkSend(b *testing.B) {
	now := time.Date(2026, 12, 1, 12, 0, 5, 0, time.UTC)
	r := full(b, now)
	pts := make([]flowmetrics.Point, 0, 1000)
	for f := range 50 {
		for m := range 20 {
			pts = append(pts, pt(fmt.Sprintf("Flow %02d", f), fmt.Sprintf("Metric%02d", m), now, 1))
		}
	}
	for b.Loop() {
		r.Send(context.Background(), pts)
		r.TakeState()
	}
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

var _ io.Writer = (*countWriter)(nil)

// BenchmarkMemory reports the heap a full Recorder of 1000 pairs holds.
func BenchmarkMemory(b *testing.B) {
	now := time.Date(2026, 12, 1, 12, 0, 5, 0, time.UTC)
	for b.Loop() {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		r := full(b, now)
		runtime.GC()
		runtime.ReadMemStats(&m1)
		b.ReportMetric(float64(m1.HeapAlloc-m0.HeapAlloc)/(1<<20), "MiB")
		runtime.KeepAlive(r)
	}
}

// BenchmarkTakeStateMalformed: the state write after n distinct malformed
// names changed (20 flows × up to 50 names; 1,000 is the cap). Its time
// should grow with n, not n².
func BenchmarkTakeStateMalformed(b *testing.B) {
	for _, n := range []int{250, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			r := NewRecorder(func() time.Time { return time.Date(2026, 12, 1, 12, 0, 5, 0, time.UTC) })
			for b.Loop() {
				for i := range n {
					r.Malformed(fmt.Sprintf("Flow%02d", i%20), fmt.Sprintf("Flow%02dMetric_Typo%03d(2026-12-01 12:00:00Z)", i%20, i), "time has a space")
				}
				r.TakeState()
			}
		})
	}
}

// BenchmarkMalformedDuringTakeState: how long ingest's report of a malformed
// name waits while the dashboard writes the state of 1,000 changed names
// (the slowest report per write is reported as max-ns).
func BenchmarkMalformedDuringTakeState(b *testing.B) {
	r := NewRecorder(func() time.Time { return time.Date(2026, 12, 1, 12, 0, 5, 0, time.UTC) })
	names := make([]string, 1000)
	for i := range names {
		names[i] = fmt.Sprintf("Flow%02dMetric_Typo%03d(2026-12-01 12:00:00Z)", i%20, i)
	}
	var worst time.Duration
	for b.Loop() {
		for i, n := range names {
			r.Malformed(fmt.Sprintf("Flow%02d", i%20), n, "time has a space")
		}
		done := make(chan struct{})
		go func() { r.TakeState(); close(done) }()
		for {
			start := time.Now()
			r.Malformed("Flow00", names[0], "time has a space")
			worst = max(worst, time.Since(start))
			select {
			case <-done:
			default:
				continue
			}
			break
		}
	}
	b.ReportMetric(float64(worst.Nanoseconds()), "max-ns")
}
