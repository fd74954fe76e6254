package otlp

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	"golang.org/x/text/unicode/norm"
	"google.golang.org/protobuf/proto"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// Name is the sink's name in config, logs and self-metrics.
const Name = "otlp"

// ScopeName is the instrumentation scope of the data points.
const ScopeName = "github.com/flowmetrics/flowmetrics"

// ReasonRejected counts, in telemetry PointsAdjusted{sink, reason}, the
// points a collector refused in a partial success.
const ReasonRejected = "rejected"

// Unit of the sums: an annotation, so Prometheus-style backends add no unit
// suffix (genesys_flow_metric_total).
const Unit = "{occurrence}"

const defaultTimeout = 10 * time.Second

// Config is the otlp section of the YAML config. Fields left empty fall back
// to the OTEL_EXPORTER_OTLP_* environment variables, then to the exporter's
// defaults (https://localhost:4318/v1/metrics, 10 s).
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
}

// Validate checks the section without touching the network.
func (c Config) Validate() error {
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil {
			return fmt.Errorf("otlp.endpoint %q: %w", c.Endpoint, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return fmt.Errorf("otlp.endpoint %q: must be an http:// or https:// URL", c.Endpoint)
		}
		if u.Host == "" {
			return fmt.Errorf("otlp.endpoint %q: host required", c.Endpoint)
		}
		if c.Insecure && u.Scheme == "https" {
			return fmt.Errorf("otlp.insecure: contradicts the https endpoint %q", c.Endpoint)
		}
	}
	for k := range c.Headers {
		if k == "" || strings.ContainsAny(k, " :\r\n") {
			return fmt.Errorf("otlp.headers: bad header name %q", k)
		}
	}
	switch c.Compression {
	case "", "gzip", "none":
	default:
		return fmt.Errorf("otlp.compression %q: must be gzip or none", c.Compression)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("otlp.timeout %v: must not be negative", c.Timeout)
	}
	return nil
}

// Sink exports points to an OTLP/HTTP endpoint.
type Sink struct {
	cfg      Config
	namer    *naming.Namer
	m        *telemetry.Metrics
	log      *slog.Logger
	exp      *otlpmetrichttp.Exporter
	resource *resource.Resource
	static   []attribute.KeyValue

	closeOnce sync.Once
	closeErr  error
	mu        sync.Mutex
	closed    bool
}

// New returns a sink for cfg (which should have passed Validate). It reads
// the environment but does not touch the network.
func New(cfg Config, namer *naming.Namer, m *telemetry.Metrics, log *slog.Logger) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if namer == nil {
		namer = naming.New(naming.Config{})
	}
	if m == nil {
		m = telemetry.New()
	}
	if log == nil {
		log = slog.Default()
	}
	client, err := httpClient(cfg)
	if err != nil {
		return nil, err
	}
	opts := []otlpmetrichttp.Option{
		otlpmetrichttp.WithHTTPClient(client),
		otlpmetrichttp.WithRetry(otlpmetrichttp.RetryConfig{Enabled: false}),
	}
	if cfg.Endpoint != "" {
		opts = append(opts, otlpmetrichttp.WithEndpointURL(endpointURL(cfg.Endpoint)))
	} else if cfg.Insecure {
		opts = append(opts, otlpmetrichttp.WithInsecure())
	}
	if cfg.Headers != nil {
		opts = append(opts, otlpmetrichttp.WithHeaders(cfg.Headers))
	}
	switch cfg.Compression {
	case "gzip":
		opts = append(opts, otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression))
	case "none":
		opts = append(opts, otlpmetrichttp.WithCompression(otlpmetrichttp.NoCompression))
	}
	exp, err := otlpmetrichttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("otlp: %w", err)
	}
	// service.name=flowmetrics, unless OTEL_SERVICE_NAME or
	// OTEL_RESOURCE_ATTRIBUTES say otherwise.
	res, err := resource.Merge(resource.NewSchemaless(attribute.String("service.name", "flowmetrics")), resource.Environment())
	if err != nil {
		return nil, fmt.Errorf("otlp: resource: %w", err)
	}
	s := &Sink{cfg: cfg, namer: namer, m: m, log: log.With("sink", Name), exp: exp, resource: res}
	for _, t := range namer.Static() {
		s.static = append(s.static, attribute.String(t.Key, t.Value))
	}
	return s, nil
}

// endpointURL applies OTEL_EXPORTER_OTLP_ENDPOINT's rule to a base URL: the
// signal path is appended. A URL with a path of its own is used as it is,
// like OTEL_EXPORTER_OTLP_METRICS_ENDPOINT.
func endpointURL(e string) string {
	u, _ := url.Parse(e) // validated
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/metrics"
	}
	return u.String()
}

// Name implements flowmetrics.Sink.
func (s *Sink) Name() string { return Name }

// Send implements flowmetrics.Sink: one export request for the batch. It
// returns nil when the endpoint answered 2xx (points a partial success
// rejected are logged and counted, not retried), an error wrapped with
// flowmetrics.Permanent when the endpoint refused the data itself (400, 413
// and other 4xx but 401, 403, 404, 408 and 429), and a plain error to retry
// otherwise: no answer, 408, 429, 5xx, and the configuration errors 401, 403
// and 404, so that fixing the credentials or the URL delivers what waited.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	rm, n := s.ResourceMetrics(points)
	if n == 0 {
		return nil
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("otlp: sink closed")
	}
	rec := &response{}
	err := s.exp.Export(context.WithValue(ctx, responseKey{}, rec), rm)
	code := rec.status
	if code >= 200 && code <= 299 {
		if rec.rejected > 0 || rec.message != "" {
			s.m.PointsAdjusted.WithLabelValues(Name, ReasonRejected).Add(float64(rec.rejected))
			s.log.Warn("collector rejected part of a batch; not retried, as OTLP says", "rejected", rec.rejected, "message", rec.message)
		} else if err != nil {
			s.log.Warn("export answered 2xx with an error", "err", err)
		}
		return nil
	}
	if err == nil {
		err = fmt.Errorf("no response recorded (status %d)", code)
	}
	err = fmt.Errorf("otlp: %w", err)
	switch {
	case code == 0:
		s.failure("network")
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		s.failure("unauthorized")
		s.log.Error("collector refused the credentials: check the otlp headers", "status", code)
	case code == http.StatusNotFound:
		s.failure("not_found")
		s.log.Error("collector answered 404: check the otlp endpoint", "status", code)
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests:
		s.failure("throttled")
	case code >= 400 && code <= 499:
		s.failure("rejected")
		return flowmetrics.Permanent(err)
	default:
		s.failure("server_error")
	}
	return err
}

func (s *Sink) failure(reason string) {
	s.m.SinkFailures.WithLabelValues(Name, reason).Inc()
}

// Close implements flowmetrics.Sink. The exporter buffers nothing; Close
// shuts it down and is safe to call twice.
func (s *Sink) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		if err := s.exp.Shutdown(ctx); err != nil {
			s.closeErr = fmt.Errorf("otlp: shutdown: %w", err)
		}
	})
	return s.closeErr
}

// ResourceMetrics builds the export for points: one Sum per metric name,
// one data point per series and bucket (repeats summed, since two delta
// points with the same identity and interval could be taken as
// duplicates). It also returns the number of data points.
func (s *Sink) ResourceMetrics(points []flowmetrics.Point) (*metricdata.ResourceMetrics, int) {
	type dpKey struct {
		name         string
		flow, metric string
		start        int64
		end          int64
	}
	var names []string
	byName := map[string]*metricdata.Sum[int64]{}
	index := map[dpKey]int{}
	n := 0
	for _, p := range points {
		if p.Count <= 0 {
			s.m.PointsAdjusted.WithLabelValues(Name, "non_positive_count").Inc()
			continue
		}
		name := metricName(s.namer.Name(p.Flow, p.Metric))
		w := p.Width
		if w <= 0 {
			w = time.Second // an interval must not be empty
		}
		start, end := p.Bucket.UTC(), p.Bucket.UTC().Add(w)
		sum, ok := byName[name]
		if !ok {
			sum = &metricdata.Sum[int64]{Temporality: metricdata.DeltaTemporality, IsMonotonic: true}
			byName[name] = sum
			names = append(names, name)
		}
		k := dpKey{name, p.Flow, p.Metric, start.UnixNano(), end.UnixNano()}
		if i, ok := index[k]; ok {
			sum.DataPoints[i].Value += p.Count
			continue
		}
		attrs := make([]attribute.KeyValue, 0, 2+len(s.static))
		attrs = append(attrs, attribute.String("flow", p.Flow), attribute.String("metric", p.Metric))
		attrs = append(attrs, s.static...)
		index[k] = len(sum.DataPoints)
		sum.DataPoints = append(sum.DataPoints, metricdata.DataPoint[int64]{
			Attributes: attribute.NewSet(attrs...),
			StartTime:  start,
			Time:       end,
			Value:      p.Count,
		})
		n++
	}
	ms := make([]metricdata.Metrics, 0, len(names))
	for _, name := range names {
		ms = append(ms, metricdata.Metrics{
			Name:        name,
			Description: "Occurrences of Genesys Cloud flow metric attributes, counted once per conversation.",
			Unit:        Unit,
			Data:        *byName[name],
		})
	}
	return &metricdata.ResourceMetrics{
		Resource: s.resource,
		ScopeMetrics: []metricdata.ScopeMetrics{{
			Scope:   instrumentation.Scope{Name: ScopeName},
			Metrics: ms,
		}},
	}, n
}

// metricName fits a name to the OpenTelemetry instrument name syntax: an
// ASCII letter, then up to 254 letters, digits, '_', '.', '-' or '/'.
// Accents are dropped ("é" → "e"); other characters become '_'. Attribute
// values need none of this: they are sent as the flow wrote them.
func metricName(n string) string {
	var b strings.Builder
	for _, r := range norm.NFD.String(ligatures.Replace(n)) {
		switch {
		case unicode.Is(unicode.Mn, r):
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

// ligatures spells out the Latin letters that do not decompose into a base
// letter and an accent.
var ligatures = strings.NewReplacer("ß", "ss", "æ", "ae", "Æ", "AE", "œ", "oe", "Œ", "OE", "ø", "o", "Ø", "O", "ł", "l", "Ł", "L", "đ", "d", "Đ", "D", "þ", "th", "Þ", "TH")

// response is what the transport saw of the one request an Export made.
type response struct {
	status   int
	rejected int64
	message  string
}

type responseKey struct{}

// recorder is the HTTP transport: it notes the status code and, for a 2xx,
// a partial success, in the response the request's context carries.
type recorder struct{ next http.RoundTripper }

func (t recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	rec, _ := req.Context().Value(responseKey{}).(*response)
	if err != nil || rec == nil {
		return resp, err
	}
	rec.status = resp.StatusCode
	if resp.StatusCode/100 == 2 && resp.Header.Get("Content-Type") == "application/x-protobuf" {
		body, rerr := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		if rerr == nil {
			var pb colmetricpb.ExportMetricsServiceResponse
			if proto.Unmarshal(body, &pb) == nil && pb.PartialSuccess != nil {
				rec.rejected = pb.PartialSuccess.GetRejectedDataPoints()
				rec.message = pb.PartialSuccess.GetErrorMessage()
			}
		}
	}
	return resp, nil
}

// httpClient builds the exporter's HTTP client. Passing our own client (for
// the recorder) makes the exporter ignore the timeout and TLS variables, so
// they are read here, with the same names and precedence.
func httpClient(cfg Config) (*http.Client, error) {
	timeout := cfg.Timeout
	if timeout == 0 {
		for _, v := range []string{"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"} {
			if s := os.Getenv(v); s != "" {
				ms, err := strconv.Atoi(s)
				if err != nil || ms < 0 {
					return nil, fmt.Errorf("otlp: %s=%q: want milliseconds", v, s)
				}
				timeout = time.Duration(ms) * time.Millisecond
				break
			}
		}
	}
	if timeout == 0 {
		timeout = defaultTimeout
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tlsCfg, err := envTLS()
	if err != nil {
		return nil, err
	}
	tr.TLSClientConfig = tlsCfg
	return &http.Client{Transport: recorder{tr}, Timeout: timeout}, nil
}

// envTLS reads OTEL_EXPORTER_OTLP_[METRICS_]CERTIFICATE (CA bundle) and
// OTEL_EXPORTER_OTLP_[METRICS_]CLIENT_CERTIFICATE / _CLIENT_KEY (mutual
// TLS). Unlike the exporter, a bad file is an error: better to refuse to
// start than to send in the clear or fail every request.
func envTLS() (*tls.Config, error) {
	first := func(names ...string) string {
		for _, n := range names {
			if v := os.Getenv(n); v != "" {
				return v
			}
		}
		return ""
	}
	ca := first("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
	crt := first("OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
	key := first("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY")
	if ca == "" && crt == "" && key == "" {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("otlp: CA certificate: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("otlp: CA certificate %s: no PEM certificate", ca)
		}
	}
	if (crt == "") != (key == "") {
		return nil, errors.New("otlp: client certificate and key must be set together")
	}
	if crt != "" {
		pair, err := tls.LoadX509KeyPair(crt, key)
		if err != nil {
			return nil, fmt.Errorf("otlp: client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

var _ flowmetrics.Sink = (*Sink)(nil)
