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
// With paths on, conversations with several steps and customer.end events
// are closed as the stream goes; their exits, funnels and experiments
// (sums) and step timings and timings (histograms) are rebuilt per series
// from what deltatocumulative emits and compared with the corpus's truth.
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
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/open-telemetry/opentelemetry-collector-contrib/processor/deltatocumulativeprocessor"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/config/configgrpc"
	"go.opentelemetry.io/collector/config/configoptional"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/processortest"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/otlp"
	"github.com/flowmetrics/flowmetrics/internal/sink/prometheus"
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

// hpoint is one histogram data point as the receiver decoded it.
type hpoint struct {
	series      string
	start, time uint64
	count       uint64
	sum         float64
	bounds      []float64
	buckets     []uint64
}

// backend is the collector side: the real OTLP receiver feeding a recorder,
// the last-value model and the real deltatocumulative processor.
type backend struct {
	url string

	mu        sync.Mutex
	points    []point                          // every point decoded, in arrival order
	hpoints   []hpoint                         // every histogram point, likewise
	lastValue map[string]map[uint64]int64      // series -> timestamp -> last value
	d2c       *consumertest.MetricsSink        // what deltatocumulative emitted
	requests  int                              // requests the receiver decoded
	metrics   map[string]otlptranslator.Metric // every metric name seen, its unit and type
	proc      processor.Metrics                //
	rcv       receiver.Metrics                 //
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
	b := &backend{lastValue: map[string]map[uint64]int64{}, d2c: new(consumertest.MetricsSink), metrics: map[string]otlptranslator.Metric{}}

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
	eachMetric(md, func(m pmetric.Metric) {
		var typ otlptranslator.MetricType = otlptranslator.MetricTypeUnknown
		switch {
		case m.Type() == pmetric.MetricTypeSum && m.Sum().IsMonotonic():
			typ = otlptranslator.MetricTypeMonotonicCounter
		case m.Type() == pmetric.MetricTypeHistogram:
			typ = otlptranslator.MetricTypeHistogram
		}
		b.metrics[m.Name()] = otlptranslator.Metric{Name: m.Name(), Unit: m.Unit(), Type: typ}
	})
	eachSum(md, func(p point) {
		b.points = append(b.points, p)
		lv := b.lastValue[p.series]
		if lv == nil {
			lv = map[uint64]int64{}
			b.lastValue[p.series] = lv
		}
		lv[p.time] = p.value
	})
	eachHist(md, func(h hpoint) { b.hpoints = append(b.hpoints, h) })
}

// seriesOf names a data point's series: the metric name, then its
// attribute values in key order (flow, metric for the counts).
func seriesOf(name string, attrs pcommon.Map) string {
	var keys []string
	for k := range attrs.All() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := name
	for _, k := range keys {
		v, _ := attrs.Get(k)
		s += "|" + v.Str()
	}
	return s
}

func eachHist(md pmetric.Metrics, f func(hpoint)) {
	eachMetric(md, func(m pmetric.Metric) {
		if m.Type() != pmetric.MetricTypeHistogram {
			return
		}
		dps := m.Histogram().DataPoints()
		for l := 0; l < dps.Len(); l++ {
			dp := dps.At(l)
			f(hpoint{
				series: seriesOf(m.Name(), dp.Attributes()),
				start:  uint64(dp.StartTimestamp()), time: uint64(dp.Timestamp()),
				count: dp.Count(), sum: dp.Sum(),
				bounds: dp.ExplicitBounds().AsRaw(), buckets: dp.BucketCounts().AsRaw(),
			})
		}
	})
}

// d2cHists is the last cumulative histogram deltatocumulative emitted per
// series.
func (b *backend) d2cHists() map[string]hpoint {
	out := map[string]hpoint{}
	for _, md := range b.d2c.AllMetrics() {
		eachHist(md, func(h hpoint) {
			if l, ok := out[h.series]; !ok || h.time >= l.time {
				out[h.series] = h
			}
		})
	}
	return out
}

// eachMetric calls f for every metric of md.
func eachMetric(md pmetric.Metrics, f func(pmetric.Metric)) {
	rms := md.ResourceMetrics()
	for i := 0; i < rms.Len(); i++ {
		sms := rms.At(i).ScopeMetrics()
		for j := 0; j < sms.Len(); j++ {
			ms := sms.At(j).Metrics()
			for k := 0; k < ms.Len(); k++ {
				f(ms.At(k))
			}
		}
	}
}

func eachSum(md pmetric.Metrics, f func(point)) {
	eachMetric(md, func(m pmetric.Metric) {
		if m.Type() != pmetric.MetricTypeSum {
			return
		}
		dps := m.Sum().DataPoints()
		for l := 0; l < dps.Len(); l++ {
			dp := dps.At(l)
			f(point{
				series: seriesOf(m.Name(), dp.Attributes()),
				start:  uint64(dp.StartTimestamp()), time: uint64(dp.Timestamp()),
				value:      dp.IntValue(),
				cumulative: m.Sum().AggregationTemporality() == pmetric.AggregationTemporalityCumulative,
			})
		}
	})
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
					keys = append(keys, fmt.Sprintf("%s@%d-%d=%d", protoSeries(m.Name, dp.Attributes), dp.StartTimeUnixNano, dp.TimeUnixNano, dp.GetAsInt()))
				}
				for _, dp := range m.GetHistogram().GetDataPoints() {
					keys = append(keys, fmt.Sprintf("%s@%d-%d=%d", protoSeries(m.Name, dp.Attributes), dp.StartTimeUnixNano, dp.TimeUnixNano, dp.Count))
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

// protoSeries is seriesOf for the wire form.
func protoSeries(name string, attrs []*commonpb.KeyValue) string {
	kvs := append([]*commonpb.KeyValue(nil), attrs...)
	sort.Slice(kvs, func(i, j int) bool { return kvs[i].Key < kvs[j].Key })
	s := name
	for _, kv := range kvs {
		s += "|" + kv.Value.GetStringValue()
	}
	return s
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
	// ev, when set, is the event delivered instead (the path corpus's
	// attributes and customer.end events).
	ev *genesys.Event
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
	if o.ev != nil {
		return genesys.Record{Outcome: genesys.Accepted, Event: o.ev}
	}
	name := genesys.AttributeName(o.flow, o.metric, o.at)
	return genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{
		ConversationID: o.conv,
		MetricNames:    []string{name},
	}}
}

// The paths configuration of the scenario: the grace covers every
// attribute delivery of the path corpus (at most 5 s late), so the truth
// does not depend on when a path closes.
var pathsCfg = paths.Config{
	Grace:       2 * time.Minute,
	IdleTimeout: 10 * time.Minute,
	Timings:     []paths.Timing{{Name: "start_to_option", From: "IVR/Start", To: "IVR/Option"}},
	Funnels:     []paths.Funnel{{Name: "ivr", Steps: []paths.Step{"IVR/Start", "IVR/Menu", "IVR/Option"}}},
	Experiments: []paths.Experiment{{Name: "offer", Variants: []paths.Variant{
		{Name: "A", Steps: []paths.Step{"IVR/Menu", "IVR/Option"}},
		{Name: "B", Steps: []paths.Step{"IVR/Menu", "IVR/Transfer"}},
	}}},
}

// pathTruth is what deltatocumulative must end with for the path series:
// sums per series, and every duration per histogram series.
type pathTruth struct {
	sums  map[string]int64
	hists map[string][]float64
}

// pathCorpus makes n conversations through the IVR flow: each a prefix of
// Start, Menu, Option, Transfer (1 to 60 s apart, whole milliseconds), one
// attributes event per step carrying every attribute so far (up to 5 s
// late, one in ten delivered again up to a minute later), and, for nine
// in ten, a customer.end 1-3 s after the last step, sometimes before the
// last attributes arrive. The others close at the idle timeout. Every
// count-corpus occurrence is a conversation of its own, so an exit too.
// The truth follows the documented rules, not the code.
func pathCorpus(t0 time.Time, n int, rng *rand.Rand, counts []occurrence, want map[string]int64) ([]occurrence, pathTruth) {
	tr := pathTruth{sums: map[string]int64{}, hists: map[string][]float64{}}
	seenConv := map[string]bool{}
	for _, o := range counts {
		if !seenConv[o.conv] {
			seenConv[o.conv] = true
			tr.sums[otlp.ExitName+"|"+o.flow+"|"+o.metric]++
		}
	}
	steps := []string{"Start", "Menu", "Option", "Transfer"}
	var out []occurrence
	for i := 0; i < n; i++ {
		conv := fmt.Sprintf("path-%05d", i)
		k := 1 + rng.IntN(len(steps))
		at := t0.Add(time.Duration(rng.Int64N(int64(9*time.Minute))) / time.Millisecond * time.Millisecond)
		var times []time.Time
		var names []string
		for j := 0; j < k; j++ {
			if j > 0 {
				at = at.Add(time.Duration(1000+rng.Int64N(59_000)) * time.Millisecond)
			}
			times = append(times, at)
			names = append(names, genesys.AttributeName("IVR", steps[j], at))
			ev := &genesys.Event{ConversationID: conv, MetricNames: slices.Clone(names)}
			arrive := at.Add(time.Duration(rng.Int64N(int64(5 * time.Second))))
			out = append(out, occurrence{conv: conv, at: at, arrive: arrive, ev: ev})
			if rng.IntN(10) == 0 {
				out = append(out, occurrence{conv: conv, at: at, arrive: arrive.Add(time.Duration(rng.Int64N(int64(time.Minute)))), ev: ev})
			}
			want["genesys.flow.metric|IVR|"+steps[j]]++
		}
		if rng.IntN(10) != 0 {
			end := at.Add(time.Duration(1000+rng.Int64N(2000)) * time.Millisecond)
			if rng.IntN(5) == 0 {
				end = at // before the last attributes, which arrive within the grace
			}
			out = append(out, occurrence{conv: conv, at: end, arrive: end, ev: &genesys.Event{ConversationID: conv, Ended: true}})
		}
		// The truth, by the rules of docs/PATHS.md.
		tr.sums[otlp.ExitName+"|IVR|"+steps[k-1]]++
		for j := 1; j < k; j++ {
			tr.hists[otlp.StepName+"|IVR|"+steps[j]] = append(tr.hists[otlp.StepName+"|IVR|"+steps[j]], times[j].Sub(times[0]).Seconds())
		}
		if k >= 3 {
			tr.hists[otlp.TimingName+"|start_to_option"] = append(tr.hists[otlp.TimingName+"|start_to_option"], times[2].Sub(times[0]).Seconds())
		}
		for j := 0; j < min(k, 3); j++ {
			tr.sums[otlp.FunnelName+"|ivr|IVR/"+steps[j]]++ // funnel, step
		}
		if k >= 2 { // both variants start at Menu
			tr.sums[otlp.ExperimentName+"|offer|IVR/Menu|A"]++ // experiment, step, variant
			tr.sums[otlp.ExperimentName+"|offer|IVR/Menu|B"]++
		}
		if k >= 3 {
			tr.sums[otlp.ExperimentName+"|offer|IVR/Option|A"]++
		}
		if k >= 4 {
			tr.sums[otlp.ExperimentName+"|offer|IVR/Transfer|B"]++
		}
	}
	return out, tr
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
	st, err := pebblestore.Open(dir, store.Options{Now: clk.Now, Paths: pathsCfg.Options()}, quiet)
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
		Derive: paths.New(pathsCfg.WithDefaults(), nil).Derive,
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
	rng := rand.New(rand.NewPCG(9, 42))
	events, want := corpus(t0, 2500, rng)
	pevents, ptruth := pathCorpus(t0, 400, rng, events, want)
	events = append(events, pevents...)
	sort.SliceStable(events, func(i, j int) bool { return events[i].arrive.Before(events[j].arrive) })
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
		if _, err := in.p.ClosePaths(ctx, clk.Now(), 0); err != nil {
			t.Fatalf("close paths after ingest %d: %v", i, err)
		}
		time.Sleep(time.Millisecond) // let the drainer interleave
	}
	// No more events: the clock passes the idle timeout (every path
	// closes) and the last watermark, and the sink sends what it still
	// holds, without any new entry.
	clk.Set(events[len(events)-1].arrive.Add(30 * time.Minute))
	if _, err := in.p.ClosePaths(ctx, clk.Now(), 0); err != nil {
		t.Fatalf("close the idle paths: %v", err)
	}
	wantAll := sum(want) + sum(ptruth.sums)
	deadline := time.Now().Add(30 * time.Second)
	for sum(be.lastValueTotals(temporality == otlp.Cumulative)) < wantAll && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	tally(in)
	in.stop(t)

	cumulative := temporality == otlp.Cumulative
	be.mu.Lock()
	points := append([]point(nil), be.points...)
	hpoints := append([]hpoint(nil), be.hpoints...)
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
	for _, h := range hpoints {
		k := fmt.Sprintf("%s@%d-%d=%d", h.series, h.start, h.time, h.count)
		if seen[k] {
			repeats++
			if !lost[k] {
				t.Errorf("histogram window %s sent twice, though its first answer was not lost", k)
			}
			continue
		}
		seen[k] = true
		if !cumulative && (h.start < lastEnd[h.series] || h.time <= h.start) {
			t.Errorf("%s: window [%d, %d) overlaps or precedes the last one, ending %d", h.series, h.start, h.time, lastEnd[h.series])
		}
		if cumulative && h.time <= lastEnd[h.series] {
			t.Errorf("%s: point at %d after %d: not advancing", h.series, h.time, lastEnd[h.series])
		}
		lastEnd[h.series] = h.time
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
	// 3b. And, for the path series, with the conversations per series
	// (sums) and every duration (histograms: count, each bucket, sum).
	for s, n := range ptruth.sums {
		if d2c[s] != n {
			t.Errorf("deltatocumulative: %s = %d, want %d", s, d2c[s], n)
		}
		if lv[s] != n {
			t.Errorf("last value per timestamp: %s = %d, want %d", s, lv[s], n)
		}
	}
	if len(d2c) != len(want)+len(ptruth.sums) || len(lv) != len(want)+len(ptruth.sums) {
		t.Errorf("got %d (deltatocumulative) and %d (last value) sum series, want %d", len(d2c), len(lv), len(want)+len(ptruth.sums))
	}
	hists := be.d2cHists()
	if len(hists) != len(ptruth.hists) {
		t.Errorf("got %d histogram series, want %d", len(hists), len(ptruth.hists))
	}
	observations := 0
	for s, values := range ptruth.hists {
		observations += len(values)
		h := hists[s]
		wantBuckets := make([]uint64, len(paths.DefaultDurationBuckets)+1)
		var wantSum float64
		for _, v := range values {
			wantBuckets[sort.SearchFloat64s(paths.DefaultDurationBuckets, v)]++
			wantSum += v
		}
		if h.count != uint64(len(values)) || !slices.Equal(h.buckets, wantBuckets) || !slices.Equal(h.bounds, paths.DefaultDurationBuckets) || math.Abs(h.sum-wantSum) > 1e-6 {
			t.Errorf("deltatocumulative: %s = count %d, buckets %v, sum %v; want %d, %v, %v", s, h.count, h.buckets, h.sum, len(values), wantBuckets, wantSum)
		}
	}
	// 6. Through the collector's Prometheus translation (the library its
	// Prometheus exporters use, default strategy), the names are the
	// Prometheus sink's.
	be.mu.Lock()
	seenMetrics := maps.Clone(be.metrics)
	be.mu.Unlock()
	namer := otlptranslator.NewMetricNamer("", otlptranslator.UnderscoreEscapingWithSuffixes)
	for otel, prom := range map[string]string{
		"genesys.flow.metric": prometheus.DefaultName,
		otlp.ExitName:         prometheus.ExitName, otlp.StepName: prometheus.StepName, otlp.TimingName: prometheus.TimingName,
		otlp.FunnelName: prometheus.FunnelName, otlp.ExperimentName: prometheus.ExperimentName,
	} {
		m, ok := seenMetrics[otel]
		if !ok {
			t.Errorf("metric %s never sent", otel)
			continue
		}
		if got, err := namer.Build(m); err != nil || got != prom {
			t.Errorf("%s (unit %q) in Prometheus: got %q (%v), want %q, the Prometheus sink's name", otel, m.Unit, got, err, prom)
		}
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
	t.Logf("%s: paths: %d sum series (%d conversations counted), %d histogram series (%d observations)", temporality, len(ptruth.sums), sum(ptruth.sums), len(ptruth.hists), observations)
	t.Logf("%s: %d occurrences in %d events, %d points in %d requests (%d repeats after lost answers, %d answers 413); %v late; next request %v after Retry-After: 1; deltatocumulative total %d, last-value total %d",
		temporality, sum(want), len(events), len(points), decoded, repeats, tooLarge, late, gap.Round(time.Millisecond), sum(d2c), sum(lv))
}
