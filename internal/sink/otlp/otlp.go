package otlp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// Name is the sink's name in config, logs and self-metrics.
const Name = "otlp"

// ScopeName is the instrumentation scope of the data points.
const ScopeName = "github.com/flowmetrics/flowmetrics"

// Reasons of telemetry PointsAdjusted{sink="otlp", reason}. Late, future
// and rejected count occurrences or data points; coalesced counts windows.
const (
	// ReasonRejected: data points a collector refused in a partial success.
	ReasonRejected = "rejected"
	// ReasonLate: occurrences whose bucket was already sent, counted in
	// the stream's next window instead.
	ReasonLate = "late"
	// ReasonFuture: occurrences more than 10 minutes ahead, counted in the
	// bucket of the present.
	ReasonFuture = "future"
	// ReasonCoalesced: pairs of open windows of one stream merged into one
	// because the stream held more than 256.
	ReasonCoalesced = "coalesced"
)

// Unit of the sums: an annotation, so Prometheus-style backends add no unit
// suffix (genesys_flow_metric_total).
const Unit = "{occurrence}"

const (
	defaultTimeout   = 10 * time.Second
	defaultWatermark = 30 * time.Second
	defaultMaxPoints = 1000
	// maxIdentity bounds the metric name, flow and metric of one stream
	// together, as encoded in its state: with at most maxOpen open and
	// maxOpen closed windows (about 33 KB), a stream's state always fits
	// one state value (64 KiB).
	maxIdentity = 16 << 10
)

// Temporalities.
const (
	Delta      = "delta"
	Cumulative = "cumulative"
)

// Config is the otlp section of the YAML config. Fields left empty fall back
// to the OTEL_EXPORTER_OTLP_* environment variables, then to the defaults
// (https://localhost:4318/v1/metrics, 10 s).
type Config struct {
	// Endpoint is the collector's base URL, e.g. http://127.0.0.1:4318;
	// /v1/metrics is appended unless the URL has a path of its own.
	Endpoint string `yaml:"endpoint"`
	// Headers are sent with every request, replacing
	// OTEL_EXPORTER_OTLP_HEADERS. Keep secrets in that variable rather than
	// in the YAML file.
	Headers map[string]string `yaml:"headers"`
	// Insecure sends plain HTTP when Endpoint is not set (an endpoint's
	// scheme says it otherwise).
	Insecure bool `yaml:"insecure"`
	// Compression is gzip or none.
	Compression string `yaml:"compression"`
	// Timeout bounds one export request.
	Timeout time.Duration `yaml:"timeout"`
	// Temporality is delta (default: each window's own count) or
	// cumulative (each stream's running total since its first window).
	Temporality string `yaml:"temporality"`
	// Watermark is how long after a bucket's end the sink waits for late
	// occurrences before sending it (default 30 s). Occurrences of a bucket
	// already sent are counted in the stream's next window.
	Watermark time.Duration `yaml:"watermark"`
	// MaxPointsPerRequest bounds one request (default 1000 data points);
	// a 413 splits it further.
	MaxPointsPerRequest int `yaml:"max_points_per_request"`
	// DurationBuckets are the explicit bucket bounds, in seconds, of the
	// step timing and timing histograms (default: the Prometheus sink's,
	// 1 s to 4 h).
	DurationBuckets []float64 `yaml:"duration_buckets"`

	// Now is the clock (time.Now if nil).
	Now func() time.Time `yaml:"-"`
}

// Validate checks the section without touching the network.
func (c Config) Validate() error {
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil {
			return fmt.Errorf("endpoint %q: %w", c.Endpoint, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return fmt.Errorf("endpoint %q: must be an http:// or https:// URL", c.Endpoint)
		}
		if u.Host == "" {
			return fmt.Errorf("endpoint %q: host required", c.Endpoint)
		}
		if c.Insecure && u.Scheme == "https" {
			return fmt.Errorf("insecure: contradicts the https endpoint %q", c.Endpoint)
		}
	}
	for k := range c.Headers {
		if k == "" || strings.ContainsAny(k, " :\r\n") {
			return fmt.Errorf("headers: bad header name %q", k)
		}
	}
	switch c.Compression {
	case "", "gzip", "none":
	default:
		return fmt.Errorf("compression %q: must be gzip or none", c.Compression)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("timeout %v: must not be negative", c.Timeout)
	}
	switch c.Temporality {
	case "", Delta, Cumulative:
	default:
		return fmt.Errorf("temporality %q: must be delta or cumulative", c.Temporality)
	}
	if c.Watermark < 0 || c.Watermark > time.Hour {
		return fmt.Errorf("watermark %v: must be between 0 and 1h", c.Watermark)
	}
	if c.MaxPointsPerRequest < 0 {
		return fmt.Errorf("max_points_per_request %d: must not be negative", c.MaxPointsPerRequest)
	}
	if err := paths.ValidBuckets(c.DurationBuckets); err != nil {
		return fmt.Errorf("otlp.duration_buckets: %w", err)
	}
	return nil
}

// Sink sends each stream's windows once, in order, to an OTLP/HTTP
// endpoint, holding a bucket until its watermark passes. See the package
// documentation.
type Sink struct {
	m          *telemetry.Metrics
	log        *slog.Logger
	namer      *naming.Namer
	client     *http.Client
	url        string
	headers    map[string]string
	gzip       bool
	cumulative bool
	watermark  time.Duration
	maxPoints  int
	flushClose bool
	now        func() time.Time
	sleep      func(ctx context.Context, d time.Duration) bool
	resource   *resourcepb.Resource
	static     []*commonpb.KeyValue

	closed   bool
	closing  bool
	restored bool // by a pipeline that commits the state
	ws       *windows
	// merged: the last Send merged its points but did not finish sending;
	// the pipeline sends the same batch again, which must not be merged
	// twice. fp identifies it. pathsMerged and pathsFP: the same for
	// SendPaths.
	merged      bool
	mergedFP    uint64
	pathsMerged bool
	pathsFP     uint64
	// frozen: windows were closed since the last TakeState, so their
	// closing is not committed yet and they must not be sent (SendPaths
	// after Send in one batch).
	frozen bool
	// notBefore: no request before this time (a Retry-After).
	notBefore  time.Time
	lastForget time.Time

	closeOnce sync.Once
	closeErr  error
}

// New returns a sink for cfg (which should have passed Validate). It reads
// the environment but does not touch the network.
func New(cfg Config, d sink.Deps) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("otlp: %w", err)
	}
	d = d.WithDefaults()
	namer, m, log := d.Namer, d.Metrics, d.Log
	client, err := httpClient(cfg)
	if err != nil {
		return nil, err
	}
	u, err := endpoint(cfg)
	if err != nil {
		return nil, err
	}
	headers := cfg.Headers
	if headers == nil {
		if headers, err = envHeaders(); err != nil {
			return nil, err
		}
	}
	comp := cfg.Compression
	if comp == "" {
		if comp, err = envCompression(); err != nil {
			return nil, err
		}
	}
	// service.name=flowmetrics, unless OTEL_SERVICE_NAME or
	// OTEL_RESOURCE_ATTRIBUTES say otherwise.
	res, err := resource.Merge(resource.NewSchemaless(attribute.String("service.name", "flowmetrics")), resource.Environment())
	if err != nil {
		return nil, fmt.Errorf("otlp: resource: %w", err)
	}
	bounds := cfg.DurationBuckets
	if len(bounds) == 0 {
		bounds = paths.DefaultDurationBuckets
	}
	s := &Sink{
		m: m, log: log.With("sink", Name), namer: namer, client: client, url: u, headers: headers,
		gzip: comp == "gzip", cumulative: cfg.Temporality == Cumulative,
		watermark: cfg.Watermark, maxPoints: cfg.MaxPointsPerRequest, flushClose: d.Ephemeral,
		now: cfg.Now, sleep: sleep, ws: newWindows(bounds),
		resource: &resourcepb.Resource{Attributes: keyValues(res.Attributes())},
	}
	if s.watermark == 0 {
		s.watermark = defaultWatermark
	}
	if s.maxPoints == 0 {
		s.maxPoints = defaultMaxPoints
	}
	if s.now == nil {
		s.now = time.Now
	}
	for _, t := range namer.Static() {
		s.static = append(s.static, str(t.Key, t.Value))
	}
	for _, r := range []string{ReasonLate, ReasonLatePath, ReasonFuture, ReasonRejected} {
		m.PointsAdjusted.WithLabelValues(Name, r)
	}
	return s, nil
}

// Name implements flowmetrics.Sink.
func (s *Sink) Name() string { return Name }

// Restore implements flowmetrics.StatefulSink: the streams' sent ends and
// open windows as last committed with the cursor.
func (s *Sink) Restore(ctx context.Context, state map[string][]byte) error {
	bad := s.ws.restore(state, s.now())
	if len(bad) > 0 {
		// Whatever those streams held open is lost; the floor makes sure
		// nothing sent later overlaps what they sent.
		s.log.Error("unreadable sink state keys dropped; their streams restart at the present", "keys", len(bad), "first", bad[0])
		s.m.PointsAdjusted.WithLabelValues(Name, "state_unreadable").Add(float64(len(bad)))
	}
	s.merged, s.pathsMerged, s.frozen = false, false, false
	s.restored = true
	return nil
}

// TakeState implements flowmetrics.StatefulSink: the streams changed since
// the last call (nil values for forgotten streams).
func (s *Sink) TakeState() flowmetrics.StateUpdate {
	s.frozen = false
	up, err := s.ws.take()
	if err != nil {
		s.log.Error("cannot encode sink state", "err", err)
		return nil
	}
	return up
}

// Due reports whether a window the sink holds has closed by now, so that
// a Send with no points would send it.
func (s *Sink) Due(now time.Time) bool {
	return s.ws.due(now.Add(-s.watermark).UnixNano())
}

// Send implements flowmetrics.Sink. It counts the points into their
// streams' open windows, sends the windows an earlier Send closed, and
// closes those whose watermark has passed, to be sent by the next Send
// (the pipeline's next batch, or its empty one when the sink is Due):
// a window is sent only once its closing is committed with the cursor, so
// after a crash it is sent again exactly as it was, never with other
// counts. Send returns nil when nothing closed is left unsent: what it
// holds is then in the state the pipeline commits (TakeState), so a crash
// neither loses nor double-counts it. It returns an error to retry when a
// request could not be delivered (no answer, 429, 502, 503, 504); the
// pipeline then sends the same batch again, which is not counted twice.
// Windows refused for good (other 4xx and 5xx) are counted, logged and not
// sent again.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	if s.closed {
		if len(points) == 0 {
			return nil
		}
		return errors.New("otlp: sink closed")
	}
	now := s.now()
	if len(points) > 0 {
		fp := fingerprint(points)
		if !s.merged || fp != s.mergedFP {
			s.merge(points, now)
		}
		s.merged, s.mergedFP = true, fp
	}
	if err := s.flush(ctx); err != nil {
		return err
	}
	s.closeDue(now)
	s.merged = false
	if now.Sub(s.lastForget) > time.Minute {
		s.ws.forget(now.Add(-streamTTL).UnixNano())
		s.lastForget = now
	}
	return nil
}

// closeDue closes the windows whose watermark has passed by now.
func (s *Sink) closeDue(now time.Time) {
	if s.ws.close(now.Add(-s.watermark).UnixNano(), s.cumulative) > 0 {
		s.frozen = true
	}
}

// merge counts points into the open windows.
func (s *Sink) merge(points []flowmetrics.Point, now time.Time) {
	var a adjust
	for _, p := range points {
		if p.Count <= 0 {
			s.m.PointsAdjusted.WithLabelValues(Name, "non_positive_count").Inc()
			continue
		}
		name := metricName(s.namer.Name(p.Flow, p.Metric))
		if identityLen(name, p.Flow, p.Metric) > maxIdentity {
			s.m.OutboxDropped.WithLabelValues(Name, "name_too_long").Add(float64(p.Count))
			s.log.Error("flow and metric names too long for a stream; occurrences dropped", "bytes", len(p.Flow)+len(p.Metric), "occurrences", p.Count)
			continue
		}
		w := p.Width
		if w <= 0 {
			w = time.Second // an interval must not be empty
		}
		s.ws.add(name, p.Flow, p.Metric, p.Bucket, w, p.Count, now, &a)
	}
	s.adjusted(a, ReasonLate)
}

// adjusted counts what a merge counted other than at its own bucket; late
// is the reason of the late ones (occurrences or path points).
func (s *Sink) adjusted(a adjust, late string) {
	for reason, n := range map[string]int64{late: a.late, ReasonFuture: a.future, ReasonCoalesced: a.coalesced} {
		if n > 0 {
			s.m.PointsAdjusted.WithLabelValues(Name, reason).Add(float64(n))
		}
	}
}

// flush sends the closed windows, in requests of at most maxPoints,
// stopping at the first request to retry.
func (s *Sink) flush(ctx context.Context) error {
	ds := s.ws.closed()
	if len(ds) == 0 {
		return nil
	}
	if wait := time.Until(s.notBefore); wait > 0 {
		if s.closing {
			return fmt.Errorf("otlp: the collector asked to wait %v (Retry-After)", wait.Round(time.Millisecond))
		}
		s.log.Info("waiting for the collector's Retry-After", "wait", wait.Round(time.Millisecond))
		if !s.sleep(ctx, wait) {
			return fmt.Errorf("otlp: waiting for Retry-After: %w", ctx.Err())
		}
	}
	for len(ds) > 0 {
		n := min(len(ds), s.maxPoints)
		if err := s.sendWindows(ctx, ds[:n]); err != nil {
			return err
		}
		ds = ds[n:]
	}
	return nil
}

// sendWindows sends ds in one request and records the outcome; a 413
// splits it in halves, sent in order.
func (s *Sink) sendWindows(ctx context.Context, ds []due) error {
	a := s.post(ctx, s.request(ds))
	switch {
	case a.ok():
		if a.rejected > 0 || a.message != "" {
			s.m.PointsAdjusted.WithLabelValues(Name, ReasonRejected).Add(float64(a.rejected))
			s.log.Warn("collector rejected part of a request; not retried, as OTLP says", "rejected", a.rejected, "message", a.message)
		}
		return s.done(ds)
	case a.status == http.StatusRequestEntityTooLarge && len(ds) > 1:
		s.failure("too_large")
		h := len(ds) / 2
		if err := s.sendWindows(ctx, ds[:h]); err != nil {
			return err
		}
		return s.sendWindows(ctx, ds[h:])
	case a.retryable():
		reason := "unavailable"
		switch a.status {
		case 0:
			reason = "network"
		case http.StatusTooManyRequests:
			reason = "throttled"
		}
		s.failure(reason)
		if a.retryAfter > 0 {
			// A little jitter, so that many senders told the same time
			// do not all come back at once.
			s.notBefore = time.Now().Add(a.retryAfter + rand.N(a.retryAfter/10+1))
			return fmt.Errorf("otlp: %v; retry after %v", a, a.retryAfter)
		}
		return fmt.Errorf("otlp: %v; will retry", a)
	default:
		reason, hint := "rejected", ""
		switch a.status {
		case http.StatusBadRequest:
			reason = "bad_request"
		case http.StatusUnauthorized, http.StatusForbidden:
			reason, hint = "unauthorized", "check the otlp headers (credentials)"
		case http.StatusNotFound:
			reason, hint = "not_found", "check the otlp endpoint"
		case http.StatusRequestEntityTooLarge:
			reason, hint = "too_large", "one data point is over the collector's request limit"
		}
		s.failure(reason)
		var n int64
		for _, d := range ds {
			n += d.count()
		}
		if !s.cumulative {
			s.m.OutboxDropped.WithLabelValues(Name, reason).Add(float64(n))
		}
		s.log.Error("collector refused a request; dropped it, as OTLP/HTTP says not to retry this status",
			"status", a.status, "answer", a.String(), "points", len(ds), "occurrences", n, "cumulative", s.cumulative, "hint", hint)
		return s.done(ds)
	}
}

// done records ds as sent (delivered or refused for good).
func (s *Sink) done(ds []due) error {
	for _, d := range ds {
		if err := s.ws.sent(d); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sink) failure(reason string) {
	s.m.SinkFailures.WithLabelValues(Name, reason).Inc()
}

// Close implements flowmetrics.Sink. With sink.Deps.Ephemeral, or when no
// pipeline restored (and so commits) its state, it sends every window
// still open, within ctx; otherwise they stay in the committed state for
// the next start. It is safe to call twice.
func (s *Sink) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		if s.flushClose || !s.restored {
			s.closing = true // no waiting for a Retry-After at shutdown
			s.ws.close(math.MaxInt64, s.cumulative)
			if err := s.flush(ctx); err != nil {
				s.closeErr = fmt.Errorf("otlp: close: %d occurrences not sent: %w", s.ws.held(), err)
			}
		}
		s.closed = true
		s.client.CloseIdleConnections()
	})
	return s.closeErr
}

// request builds the export request for ds: one Sum per metric name, one
// data point per window. It is a MetricsData, whose encoding is the
// ExportMetricsServiceRequest's byte for byte (both are field 1, repeated
// ResourceMetrics): the collector package's request type would link gRPC
// and grpc-gateway into the binary for nothing.
func (s *Sink) request(ds []due) *metricpb.MetricsData {
	temp := metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA
	if s.cumulative {
		temp = metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE
	}
	var names []string
	metrics := map[string]*metricpb.Metric{}
	for _, d := range ds {
		// Keyed by type too: a naming.template could give a count the
		// name of a histogram of paths.
		key := d.st.Name
		if d.h != nil {
			key += "\x00h"
		}
		m := metrics[key]
		if m == nil {
			m = s.metric(d, temp)
			metrics[key] = m
			names = append(names, key)
		}
		attrs := make([]*commonpb.KeyValue, 0, 3+len(s.static))
		if d.st.Kind == "" {
			attrs = append(attrs, str("flow", d.st.Flow), str("metric", d.st.Metric))
		}
		for i := 0; i+1 < len(d.st.Attrs); i += 2 {
			attrs = append(attrs, str(d.st.Attrs[i], d.st.Attrs[i+1]))
		}
		attrs = append(attrs, s.static...)
		if h := d.h; h != nil {
			bounds := h.bounds(d.st)
			sum, lo, hi := float64(h.Sum)/1e9, float64(h.Min)/1e9, float64(h.Max)/1e9
			counts := make([]uint64, len(h.B))
			for i, c := range h.B {
				counts[i] = uint64(c)
			}
			hist := m.Data.(*metricpb.Metric_Histogram).Histogram
			hist.DataPoints = append(hist.DataPoints, &metricpb.HistogramDataPoint{
				Attributes:        attrs,
				StartTimeUnixNano: uint64(d.start()),
				TimeUnixNano:      uint64(d.end()),
				Count:             uint64(h.N),
				Sum:               &sum,
				BucketCounts:      counts,
				ExplicitBounds:    bounds,
				Min:               &lo,
				Max:               &hi,
			})
			continue
		}
		sum := m.Data.(*metricpb.Metric_Sum).Sum
		sum.DataPoints = append(sum.DataPoints, &metricpb.NumberDataPoint{
			Attributes:        attrs,
			StartTimeUnixNano: uint64(d.start()),
			TimeUnixNano:      uint64(d.end()),
			Value:             &metricpb.NumberDataPoint_AsInt{AsInt: d.value()},
		})
	}
	sort.Strings(names)
	ms := make([]*metricpb.Metric, 0, len(names))
	for _, n := range names {
		ms = append(ms, metrics[n])
	}
	return &metricpb.MetricsData{ResourceMetrics: []*metricpb.ResourceMetrics{{
		Resource: s.resource,
		ScopeMetrics: []*metricpb.ScopeMetrics{{
			Scope:   &commonpb.InstrumentationScope{Name: ScopeName},
			Metrics: ms,
		}},
	}}}
}

// metric is the metric of d's stream, with no data points yet: a
// monotonic Sum of occurrences or of conversations, or a Histogram of
// seconds.
func (s *Sink) metric(d due, temp metricpb.AggregationTemporality) *metricpb.Metric {
	if d.st.Kind == "" {
		return &metricpb.Metric{
			Name:        d.st.Name,
			Description: "Occurrences of Genesys Cloud flow metric attributes, counted once per conversation.",
			Unit:        Unit,
			Data:        &metricpb.Metric_Sum{Sum: &metricpb.Sum{AggregationTemporality: temp, IsMonotonic: true}},
		}
	}
	pm := pathMetrics[pathKind(d.st.Kind)]
	if d.h != nil {
		return &metricpb.Metric{Name: d.st.Name, Description: pm.descr, Unit: SecondsUnit,
			Data: &metricpb.Metric_Histogram{Histogram: &metricpb.Histogram{AggregationTemporality: temp}}}
	}
	return &metricpb.Metric{Name: d.st.Name, Description: pm.descr, Unit: PathUnit,
		Data: &metricpb.Metric_Sum{Sum: &metricpb.Sum{AggregationTemporality: temp, IsMonotonic: true}}}
}

func str(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

// keyValues converts resource attributes (strings from the environment;
// other types as the SDK prints them).
func keyValues(kvs []attribute.KeyValue) []*commonpb.KeyValue {
	out := make([]*commonpb.KeyValue, 0, len(kvs))
	for _, kv := range kvs {
		var v *commonpb.AnyValue
		switch kv.Value.Type() {
		case attribute.BOOL:
			v = &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: kv.Value.AsBool()}}
		case attribute.INT64:
			v = &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: kv.Value.AsInt64()}}
		case attribute.FLOAT64:
			v = &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: kv.Value.AsFloat64()}}
		default:
			v = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: kv.Value.String()}}
		}
		out = append(out, &commonpb.KeyValue{Key: string(kv.Key), Value: v})
	}
	return out
}

// identityLen is the encoded size of a stream's names in its state (JSON
// escapes a byte in at most 6), measured only when it could matter.
func identityLen(names ...string) int {
	raw := 0
	for _, s := range names {
		raw += len(s)
	}
	if 6*raw <= maxIdentity {
		return raw
	}
	n := 0
	for _, s := range names {
		b, _ := json.Marshal(s)
		n += len(b)
	}
	return n
}

// fingerprint identifies a batch, to recognise the pipeline sending again
// one whose points are already counted.
func fingerprint(points []flowmetrics.Point) uint64 {
	h := fnv.New64a()
	var b [8]byte
	put := func(v int64) {
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		h.Write(b[:])
	}
	for _, p := range points {
		h.Write([]byte(p.Flow))
		h.Write([]byte{0})
		h.Write([]byte(p.Metric))
		h.Write([]byte{0})
		put(p.Bucket.UnixNano())
		put(int64(p.Width))
		put(p.Count)
	}
	put(int64(len(points)))
	return h.Sum64()
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// metricName fits a name to the OpenTelemetry instrument name syntax: an
// ASCII letter, then up to 254 letters, digits, '_', '.', '-' or '/'.
// Accents are dropped ("é" → "e"); other characters become '_'. Attribute
// values need none of this: they are sent as the flow wrote them.
func metricName(n string) string {
	var b strings.Builder
	for _, r := range naming.Fold(n) {
		switch {
		case r < 0x80 && (unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("_.-/", r)):
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := b.String()
	if out == "" || !(out[0] >= 'a' && out[0] <= 'z' || out[0] >= 'A' && out[0] <= 'Z') {
		out = "m_" + out
	}
	if len(out) > 255 {
		out = out[:255]
	}
	return out
}

var _ flowmetrics.StatefulSink = (*Sink)(nil)
