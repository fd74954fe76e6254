// Package otlp_test runs the OTLP sink, inside the real pipeline on a real
// Pebble store, against the OpenTelemetry Collector's own components used
// as Go libraries: the OTLP receiver (HTTP, protobuf) decodes every request
// and hands it to the deltatocumulative processor, as a collector in front
// of Prometheus-style backends runs them. A model of a backend that keeps
// the last value per series and timestamp (Datadog's rule for counts) reads
// the same stream. A fault proxy between the sink and the receiver answers
// 413 to large requests, goes down, throttles with Retry-After, and loses
// the answers of accepted requests; the pipeline is restarted mid-stream.
//
// It lives in its own module so the collector stays out of the main go.mod.
package otlp_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/open-telemetry/opentelemetry-collector-contrib/processor/deltatocumulativeprocessor"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/config/configgrpc"
	"go.opentelemetry.io/collector/config/configoptional"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/processortest"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	"google.golang.org/protobuf/proto"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/otlp"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// clock is the test's time: the attribute times of the stream, advanced
// as events "arrive". The pipeline and the sink both read it.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
}

// point is one data point as the receiver decoded it.
type point struct {
	series      string // metric name, flow, metric
	start, time uint64
	value       int64
	cumulative  bool
}

// backend is the collector side: the real OTLP receiver feeding a recorder,
// the last-value model and the real deltatocumulative processor.
type backend struct {
	url string

	mu        sync.Mutex
	points    []point                     // every point decoded, in arrival order
	lastValue map[string]map[uint64]int64 // series -> timestamp -> last value
	d2c       *consumertest.MetricsSink   // what deltatocumulative emitted
	requests  int                         // requests the receiver decoded
	proc      processor.Metrics           //
	rcv       receiver.Metrics            //
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startBackend(t *testing.T) *backend {
	t.Helper()
	ctx := context.Background()
	b := &backend{lastValue: map[string]map[uint64]int64{}, d2c: new(consumertest.MetricsSink)}

	pf := deltatocumulativeprocessor.NewFactory()
	proc, err := pf.CreateMetrics(ctx, processortest.NewNopSettings(pf.Type()), pf.CreateDefaultConfig(), b.d2c)
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Start(ctx, componenttest.NewNopHost()); err != nil {
		t.Fatal(err)
	}
	b.proc = proc

	next, err := consumer.NewMetrics(func(ctx context.Context, md pmetric.Metrics) error {
		b.record(md)
		cp := pmetric.NewMetrics()
		md.CopyTo(cp)
		return proc.ConsumeMetrics(ctx, cp)
	})
	if err != nil {
		t.Fatal(err)
	}
	rf := otlpreceiver.NewFactory()
	cfg := rf.CreateDefaultConfig().(*otlpreceiver.Config)
	addr := freePort(t)
	cfg.Protocols.HTTP.GetOrInsertDefault().ServerConfig.NetAddr.Endpoint = addr
	cfg.Protocols.GRPC = configoptional.None[configgrpc.ServerConfig]()
	rcv, err := rf.CreateMetrics(ctx, receivertest.NewNopSettings(component.MustNewType("otlp")), cfg, next)
	if err != nil {
		t.Fatal(err)
	}
	if err := rcv.Start(ctx, componenttest.NewNopHost()); err != nil {
		t.Fatal(err)
	}
	b.rcv = rcv
	b.url = "http://" + addr + "/v1/metrics"
	t.Cleanup(func() {
		rcv.Shutdown(context.Background())
		proc.Shutdown(context.Background())
	})
	return b
}

func (b *backend) record(md pmetric.Metrics) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.requests++
	eachSum(md, func(p point) {
		b.points = append(b.points, p)
		lv := b.lastValue[p.series]
		if lv == nil {
			lv = map[uint64]int64{}
			b.lastValue[p.series] = lv
		}
		lv[p.time] = p.value
	})
}

func eachSum(md pmetric.Metrics, f func(point)) {
	rms := md.ResourceMetrics()
	for i := 0; i < rms.Len(); i++ {
		sms := rms.At(i).ScopeMetrics()
		for j := 0; j < sms.Len(); j++ {
			ms := sms.At(j).Metrics()
			for k := 0; k < ms.Len(); k++ {
				m := ms.At(k)
				if m.Type() != pmetric.MetricTypeSum {
					continue
				}
				dps := m.Sum().DataPoints()
				for l := 0; l < dps.Len(); l++ {
					dp := dps.At(l)
					flow, _ := dp.Attributes().Get("flow")
					metric, _ := dp.Attributes().Get("metric")
					f(point{
						series: m.Name() + "|" + flow.Str() + "|" + metric.Str(),
						start:  uint64(dp.StartTimestamp()), time: uint64(dp.Timestamp()),
						value:      dp.IntValue(),
						cumulative: m.Sum().AggregationTemporality() == pmetric.AggregationTemporalityCumulative,
					})
				}
			}
		}
	}
}

// lastValueTotals is what a backend keeping the last value per series and
// timestamp ends with: the sum of its values (delta) or the value at the
// latest timestamp (cumulative).
func (b *backend) lastValueTotals(cumulative bool) map[string]int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]int64{}
	for s, lv := range b.lastValue {
		var latest uint64
		for ts, v := range lv {
			if cumulative {
				if ts >= latest {
					latest, out[s] = ts, v
				}
			} else {
				out[s] += v
			}
		}
	}
	return out
}

// d2cTotals is the last cumulative value deltatocumulative emitted per
// series.
func (b *backend) d2cTotals() (map[string]int64, int) {
	type last struct {
		time  uint64
		value int64
	}
	latest := map[string]last{}
	n := 0
	for _, md := range b.d2c.AllMetrics() {
		eachSum(md, func(p point) {
			n++
			if l, ok := latest[p.series]; !ok || p.time >= l.time {
				latest[p.series] = last{p.time, p.value}
			}
		})
	}
	out := map[string]int64{}
	for s, l := range latest {
		out[s] = l.value
	}
	return out, n
}

// proxy stands between the sink and the receiver and injects the faults.
type proxy struct {
	t      *testing.T
	srv    *http.Server
	url    string
	target string
	maxPts int // 413 for requests with more data points
	client *http.Client

	mu          sync.Mutex
	down        bool // close the connection without an answer
	downHits    int
	throttle    int // answer this many requests 503 Retry-After: 1
	throttledAt time.Time
	afterGap    time.Duration // from the 503 to the next request
	loseAnswers int           // forward, then drop the answer, this many times
	lost        map[string]bool
	tooLarge    int
	forwarded   int
	// onForwarded, when set, sees each request the receiver accepted;
	// true drops its answer.
	onForwarded func(keys []string) bool
}

func startProxy(t *testing.T, target string, maxPts int) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, target: target, maxPts: maxPts, client: &http.Client{Timeout: 10 * time.Second}, lost: map[string]bool{}}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 5 * time.Second}
	p.url = "http://" + l.Addr().String()
	go p.srv.Serve(l)
	t.Cleanup(func() { p.srv.Close() })
	return p
}

func hangUp(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if c, _, err := hj.Hijack(); err == nil {
			c.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	raw := body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err == nil {
			raw, err = io.ReadAll(zr)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	var req colmetricpb.ExportMetricsServiceRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var keys []string
	for _, rm := range req.ResourceMetrics {
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				for _, dp := range m.GetSum().GetDataPoints() {
					var flow, metric string
					for _, kv := range dp.Attributes {
						switch kv.Key {
						case "flow":
							flow = kv.Value.GetStringValue()
						case "metric":
							metric = kv.Value.GetStringValue()
						}
					}
					keys = append(keys, fmt.Sprintf("%s|%s|%s@%d-%d=%d", m.Name, flow, metric, dp.StartTimeUnixNano, dp.TimeUnixNano, dp.GetAsInt()))
				}
			}
		}
	}
	p.mu.Lock()
	if !p.throttledAt.IsZero() && p.afterGap == 0 {
		p.afterGap = time.Since(p.throttledAt)
	}
	switch {
	case p.down:
		p.downHits++
		p.mu.Unlock()
		hangUp(w)
		return
	case p.throttle > 0:
		p.throttle--
		p.throttledAt = time.Now()
		p.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "slow down", http.StatusServiceUnavailable)
		return
	case len(keys) > p.maxPts:
		p.tooLarge++
		p.mu.Unlock()
		http.Error(w, "request too large", http.StatusRequestEntityTooLarge)
		return
	}
	lose := p.loseAnswers > 0
	if lose {
		p.loseAnswers--
	}
	p.forwarded++
	p.mu.Unlock()

	fw, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, p.target, bytes.NewReader(body))
	for _, h := range []string{"Content-Type", "Content-Encoding"} {
		if v := r.Header.Get(h); v != "" {
			fw.Header.Set(h, v)
		}
	}
	resp, err := p.client.Do(fw)
	if err != nil {
		// The sink gave up on the request (its timeout) while the receiver
		// may already have taken it: the sink never hears the answer, so a
		// resend is the allowed repeat.
		p.markLost(keys)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if r.Context().Err() != nil {
		p.markLost(keys) // as above, the answer came after the sink gave up
	}
	if resp.StatusCode != http.StatusOK {
		p.t.Errorf("receiver answered %d to a request of the sink: %s", resp.StatusCode, out)
	}
	if f := p.onForwarded; f != nil && resp.StatusCode == http.StatusOK && f(keys) {
		hangUp(w)
		return
	}
	if lose && resp.StatusCode == http.StatusOK {
		p.markLost(keys)
		hangUp(w) // accepted, but the sink never hears it
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	w.Write(out)
}

// markLost records that the answer to a request carrying keys did not
// reach the sink, which may therefore send them again.
func (p *proxy) markLost(keys []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range keys {
		p.lost[k] = true
	}
}

func (p *proxy) set(f func(p *proxy)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

// occurrence is one metric attribute of one conversation, sent in one or
// two events.
type occurrence struct {
	conv, flow, metric string
	at, arrive         time.Time
}

var series = [][2]string{
	{"CustomerRouting", "Unknown"},
	{"CustomerRouting", "Transfer"},
	{"Customer Routing", "Transfer.To-Agent"},
	{"Kundenzufriedenheit", "Größe"},
	{"Billing", "Paid"},
}

// corpus makes n occurrences over ten minutes of attribute time. Most
// arrive within 5 s; one in twelve arrives 35 s to 3 min late (past the
// 30 s watermark); one in twenty is delivered twice.
func corpus(t0 time.Time, n int, rng *rand.Rand) (events []occurrence, want map[string]int64) {
	want = map[string]int64{}
	for i := 0; i < n; i++ {
		s := series[rng.IntN(len(series))]
		at := t0.Add(time.Duration(rng.Int64N(int64(10 * time.Minute))))
		delay := time.Duration(rng.Int64N(int64(5 * time.Second)))
		if rng.IntN(12) == 0 {
			delay = 35*time.Second + time.Duration(rng.Int64N(int64(145*time.Second)))
		}
		o := occurrence{conv: fmt.Sprintf("conv-%05d", i), flow: s[0], metric: s[1], at: at, arrive: at.Add(delay)}
		events = append(events, o)
		if rng.IntN(20) == 0 {
			again := o
			again.arrive = o.arrive.Add(time.Duration(rng.Int64N(int64(time.Minute))))
			events = append(events, again)
		}
		want["genesys.flow.metric|"+s[0]+"|"+s[1]]++
	}
	sort.SliceStable(events, func(i, j int) bool { return events[i].arrive.Before(events[j].arrive) })
	return events, want
}

func record(o occurrence) genesys.Record {
	name := o.flow + "Metric_" + o.metric + "(" + o.at.UTC().Format("2006-01-02T15:04:05.000Z") + ")"
	return genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{
		ConversationID: o.conv,
		Attributes:     map[string]string{name: "x", "Language": "en"},
	}}
}

// instance is one run of the service: store, sink, pipeline.
type instance struct {
	st *pebblestore.Store
	s  *otlp.Sink
	p  *pipeline.Pipeline
	m  *telemetry.Metrics
}

func start(t *testing.T, dir, url, temporality string, clk *clock) *instance {
	t.Helper()
	st, err := pebblestore.Open(dir, store.Options{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	m := telemetry.New()
	s, err := otlp.New(otlp.Config{Endpoint: url, Temporality: temporality, Compression: "gzip", Timeout: 2 * time.Second, Now: clk.Now}, sink.Deps{Namer: naming.New(naming.Config{}), Metrics: m, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.New(st, []flowmetrics.Sink{s}, pipeline.Config{
		FlushInterval: 5 * time.Millisecond, RetryMin: 5 * time.Millisecond, RetryMax: 100 * time.Millisecond, Now: clk.Now,
	}, m, quiet)
	if err := p.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.Start()
	return &instance{st: st, s: s, p: p, m: m}
}

func (in *instance) stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.p.Close(ctx); err != nil {
		t.Errorf("pipeline close: %v", err)
	}
	if err := in.st.Close(); err != nil {
		t.Errorf("store close: %v", err)
	}
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

func TestDeltaStreamExactThroughCollector(t *testing.T) {
	runScenario(t, otlp.Delta)
}

func TestCumulativeStreamExactThroughCollector(t *testing.T) {
	runScenario(t, otlp.Cumulative)
}

// runScenario streams a corpus through the pipeline ten events per
// ingest, with every fault, and checks what each receiver model ends with.
func runScenario(t *testing.T, temporality string) {
	t0 := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	events, want := corpus(t0, 2500, rand.New(rand.NewPCG(9, 42)))
	clk := &clock{now: t0}
	be := startBackend(t)
	px := startProxy(t, be.url, 6)
	dir := t.TempDir()
	in := start(t, dir, px.url, temporality, clk)
	late, failures := 0.0, map[string]float64{}
	tally := func(in *instance) {
		late += testutil.ToFloat64(in.m.PointsAdjusted.WithLabelValues(otlp.Name, otlp.ReasonLate))
		for _, r := range []string{"too_large", "network", "unavailable"} {
			failures[r] += testutil.ToFloat64(in.m.SinkFailures.WithLabelValues(otlp.Name, r))
		}
	}

	ctx := context.Background()
	const per = 10
	requests := (len(events) + per - 1) / per
	for i := 0; i < requests; i++ {
		batch := events[i*per : min(len(events), (i+1)*per)]
		switch i {
		case requests / 4: // the receiver goes away
			px.set(func(p *proxy) { p.down = true })
		case requests/4 + 40: // wait for the sink to have failed a few times
			deadline := time.Now().Add(10 * time.Second)
			for {
				var hits int
				px.set(func(p *proxy) { hits = p.downHits })
				if hits >= 3 || time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			// back, but throttling once with Retry-After: 1
			px.set(func(p *proxy) { p.down, p.throttle = false, 1 })
		case requests / 2: // accepted requests whose answers are lost
			px.set(func(p *proxy) { p.loseAnswers = 3 })
		case requests * 3 / 4: // restart on the same data directory
			tally(in)
			in.stop(t)
			in = start(t, dir, px.url, temporality, clk)
		}
		clk.Set(batch[len(batch)-1].arrive)
		recs := make([]genesys.Record, len(batch))
		for j, o := range batch {
			recs[j] = record(o)
		}
		if _, err := in.p.Ingest(ctx, recs); err != nil {
			t.Fatalf("ingest %d: %v", i, err)
		}
		time.Sleep(time.Millisecond) // let the drainer interleave
	}
	// No more events: the clock passes the last watermark and the sink
	// sends what it still holds, without any new entry.
	clk.Set(events[len(events)-1].arrive.Add(2 * time.Minute))
	deadline := time.Now().Add(30 * time.Second)
	for sum(be.lastValueTotals(temporality == otlp.Cumulative)) < sum(want) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	tally(in)
	in.stop(t)

	cumulative := temporality == otlp.Cumulative
	be.mu.Lock()
	points := append([]point(nil), be.points...)
	decoded := be.requests
	be.mu.Unlock()
	px.mu.Lock()
	lost, forwarded, tooLarge, gap := px.lost, px.forwarded, px.tooLarge, px.afterGap
	px.mu.Unlock()

	// 1. The receiver decoded every request the proxy let through.
	if decoded != forwarded {
		t.Errorf("receiver decoded %d requests, want %d (every one forwarded)", decoded, forwarded)
	}
	// 2. Each stream's windows never overlap and only advance; a window
	// is repeated only when the answer to the request that carried it was
	// lost (the one duplicate window the design allows).
	seen := map[string]bool{}
	lastEnd := map[string]uint64{}
	begin := map[string]uint64{}
	lastVal := map[string]int64{}
	repeats := 0
	for _, p := range points {
		if p.cumulative != cumulative {
			t.Fatalf("got a point with cumulative=%v, want %v", p.cumulative, cumulative)
		}
		k := fmt.Sprintf("%s@%d-%d=%d", p.series, p.start, p.time, p.value)
		if seen[k] {
			repeats++
			if !lost[k] {
				t.Errorf("window %s sent twice, though its first answer was not lost", k)
			}
			continue
		}
		seen[k] = true
		if cumulative {
			if b, ok := begin[p.series]; ok && p.start != b {
				t.Errorf("%s: start %d, want the stream's start %d", p.series, p.start, b)
			}
			begin[p.series] = p.start
			if p.time <= lastEnd[p.series] || p.value < lastVal[p.series] {
				t.Errorf("%s: point at %d = %d after %d = %d: not advancing", p.series, p.time, p.value, lastEnd[p.series], lastVal[p.series])
			}
			lastVal[p.series] = p.value
		} else if p.start < lastEnd[p.series] || p.time <= p.start {
			t.Errorf("%s: window [%d, %d) overlaps or precedes the last one, ending %d", p.series, p.start, p.time, lastEnd[p.series])
		}
		lastEnd[p.series] = p.time
	}
	// 3. deltatocumulative ends with the occurrences per series.
	d2c, _ := be.d2cTotals()
	lv := be.lastValueTotals(cumulative)
	for s, n := range want {
		if d2c[s] != n {
			t.Errorf("deltatocumulative: %s = %d, want %d", s, d2c[s], n)
		}
		// 4. So does a backend keeping the last value per timestamp.
		if lv[s] != n {
			t.Errorf("last value per timestamp: %s = %d, want %d", s, lv[s], n)
		}
	}
	if len(d2c) != len(want) || len(lv) != len(want) {
		t.Errorf("got %d (deltatocumulative) and %d (last value) series, want %d", len(d2c), len(lv), len(want))
	}
	// 5. The faults happened and were handled as OTLP/HTTP says.
	if late == 0 {
		t.Error("no late occurrence counted; the corpus should have some")
	}
	if tooLarge == 0 || failures["too_large"] == 0 {
		t.Errorf("got %d 413 answers (%v counted), want some: requests should have been split", tooLarge, failures["too_large"])
	}
	if failures["network"] < 3 {
		t.Errorf("got %v failed requests during the outage, want ≥ 3", failures["network"])
	}
	if failures["unavailable"] < 1 {
		t.Errorf("got %v 503 answers counted, want 1", failures["unavailable"])
	}
	if gap < time.Second {
		t.Errorf("next request %v after a 503 with Retry-After: 1, want ≥ 1s", gap)
	}
	if len(lost) == 0 {
		t.Error("no answer was lost; the scenario should lose three")
	}
	t.Logf("%s: %d occurrences in %d events, %d points in %d requests (%d repeats after lost answers, %d answers 413); %v late; next request %v after Retry-After: 1; deltatocumulative total %d, last-value total %d",
		temporality, sum(want), len(events), len(points), decoded, repeats, tooLarge, late, gap.Round(time.Millisecond), sum(d2c), sum(lv))
}
