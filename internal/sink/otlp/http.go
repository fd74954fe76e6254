package otlp

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// maxResponse bounds the response body read, as OTLP/HTTP asks (4 MiB).
const maxResponse = 4 << 20

// maxRetryAfter caps a collector's Retry-After, so that a wrong header
// cannot stop delivery for days.
const maxRetryAfter = 10 * time.Minute

// answer is what one request got back.
type answer struct {
	status     int           // 0: no answer (network error, timeout)
	err        error         // transport error, or why the answer is unreadable
	retryAfter time.Duration // from Retry-After on 429/503 (0: none)
	rejected   int64         // partial success: data points refused
	message    string        // partial success or Status message
}

// retryable tells whether OTLP/HTTP says to send the same request again:
// no answer, or 429, 502, 503, 504. Every other 4xx and 5xx must not be
// retried.
func (a answer) retryable() bool {
	switch a.status {
	case 0, http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

func (a answer) ok() bool { return a.status >= 200 && a.status <= 299 && a.err == nil }

func (a answer) String() string {
	if a.status == 0 {
		return fmt.Sprintf("no answer: %v", a.err)
	}
	s := fmt.Sprintf("%d %s", a.status, http.StatusText(a.status))
	if a.message != "" {
		s += ": " + a.message
	}
	if a.err != nil {
		s += fmt.Sprintf(" (%v)", a.err)
	}
	return s
}

// post sends one export request and reads the answer.
func (s *Sink) post(ctx context.Context, req *metricpb.MetricsData) answer {
	body, err := proto.Marshal(req)
	if err != nil {
		return answer{status: -1, err: fmt.Errorf("encode request: %w", err)}
	}
	enc := ""
	if s.gzip {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write(body)
		zw.Close()
		body, enc = b.Bytes(), "gzip"
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return answer{status: -1, err: err}
	}
	for k, v := range s.headers {
		hr.Header.Set(k, v)
	}
	hr.Header.Set("Content-Type", "application/x-protobuf")
	hr.Header.Set("User-Agent", "flowmetrics")
	if enc != "" {
		hr.Header.Set("Content-Encoding", enc)
	}
	resp, err := s.client.Do(hr)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	switch {
	case err != nil && a.status/100 == 2:
		// Accepted, but the answer was cut: it cannot be told from a
		// full success, and retrying could count it twice.
		a.message = "response unreadable: " + err.Error()
		return a
	case len(raw) > maxResponse:
		a.err = errors.New("response over 4 MiB")
		if a.status/100 == 2 {
			a.status = http.StatusInsufficientStorage // OTLP: treat as non-retryable
		}
		return a
	}
	if resp.Header.Get("Content-Type") != "application/x-protobuf" {
		if a.status/100 != 2 && len(raw) > 0 {
			a.message = firstLine(string(raw))
		}
	} else if a.status/100 == 2 {
		a.rejected, a.message = partialSuccess(raw)
	} else {
		var st statuspb.Status
		if proto.Unmarshal(raw, &st) == nil {
			a.message = firstLine(st.GetMessage())
		}
	}
	if a.status == http.StatusTooManyRequests || a.status == http.StatusServiceUnavailable {
		a.retryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return a
}

// retryAfter reads a Retry-After header: delay-seconds or an HTTP-date.
// 0 means none (or unreadable): the pipeline's jittered exponential
// backoff applies.
func retryAfter(h string, now time.Time) time.Duration {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseInt(h, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		d = time.Duration(min(n, int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(h); err == nil {
		d = t.Sub(now)
	} else {
		return 0
	}
	return min(max(d, 0), maxRetryAfter)
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// endpoint resolves the request URL: the YAML endpoint (a base URL, or a
// full one when it has a path), else OTEL_EXPORTER_OTLP_METRICS_ENDPOINT
// (as is), else OTEL_EXPORTER_OTLP_ENDPOINT (base), else
// https://localhost:4318 (http:// with insecure).
func endpoint(cfg Config) (string, error) {
	if cfg.Endpoint != "" {
		return endpointURL(cfg.Endpoint), nil
	}
	if v := os.Getenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"); v != "" {
		if _, err := checkURL(v); err != nil {
			return "", fmt.Errorf("otlp: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: %w", err)
		}
		return v, nil
	}
	if v := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); v != "" {
		u, err := checkURL(v)
		if err != nil {
			return "", fmt.Errorf("otlp: OTEL_EXPORTER_OTLP_ENDPOINT: %w", err)
		}
		u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/metrics"
		return u.String(), nil
	}
	if cfg.Insecure {
		return "http://localhost:4318/v1/metrics", nil
	}
	return "https://localhost:4318/v1/metrics", nil
}

func checkURL(v string) (*url.URL, error) {
	u, err := url.Parse(v)
	if err != nil {
		return nil, err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q: want an http:// or https:// URL", v)
	}
	return u, nil
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

// envHeaders reads OTEL_EXPORTER_OTLP_METRICS_HEADERS, else
// OTEL_EXPORTER_OTLP_HEADERS: key=value pairs separated by commas, values
// URL-encoded.
func envHeaders() (map[string]string, error) {
	for _, name := range []string{"OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"} {
		v := os.Getenv(name)
		if v == "" {
			continue
		}
		h := map[string]string{}
		for _, kv := range strings.Split(v, ",") {
			if strings.TrimSpace(kv) == "" {
				continue
			}
			k, val, ok := strings.Cut(kv, "=")
			k = strings.TrimSpace(k)
			if !ok || k == "" || strings.ContainsAny(k, " :\r\n") {
				return nil, fmt.Errorf("otlp: %s: bad entry %q (want key=value)", name, kv)
			}
			dv, err := url.PathUnescape(strings.TrimSpace(val))
			if err != nil {
				return nil, fmt.Errorf("otlp: %s: value of %q: %w", name, k, err)
			}
			h[k] = dv
		}
		return h, nil
	}
	return nil, nil
}

// envCompression reads OTEL_EXPORTER_OTLP_[METRICS_]COMPRESSION.
func envCompression() (string, error) {
	for _, name := range []string{"OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"} {
		switch v := os.Getenv(name); v {
		case "":
			continue
		case "gzip", "none":
			return v, nil
		default:
			return "", fmt.Errorf("otlp: %s=%q: want gzip or none", name, v)
		}
	}
	return "none", nil
}

// httpClient builds the HTTP client, reading the timeout and TLS variables
// with the OpenTelemetry names and precedence.
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
	return &http.Client{Transport: tr, Timeout: timeout}, nil
}

// envTLS reads OTEL_EXPORTER_OTLP_[METRICS_]CERTIFICATE (CA bundle) and
// OTEL_EXPORTER_OTLP_[METRICS_]CLIENT_CERTIFICATE / _CLIENT_KEY (mutual
// TLS). A bad file is an error: better to refuse to start than to send in
// the clear or fail every request.
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

// partialSuccess reads an ExportMetricsServiceResponse: its field 1,
// partial_success, holds rejected_data_points (1, int64) and error_message
// (2, string). Read with protowire rather than the collector package's
// type, which would link gRPC. A response that does not parse is a full
// success, as before.
func partialSuccess(b []byte) (rejected int64, message string) {
	walk := func(b []byte, field func(num protowire.Number, typ protowire.Type, b []byte) int) bool {
		for len(b) > 0 {
			num, typ, n := protowire.ConsumeTag(b)
			if n < 0 {
				return false
			}
			b = b[n:]
			if n = field(num, typ, b); n < 0 {
				return false
			}
			b = b[n:]
		}
		return true
	}
	var ps []byte
	ok := walk(b, func(num protowire.Number, typ protowire.Type, b []byte) int {
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			ps = v
			return n
		}
		return protowire.ConsumeFieldValue(num, typ, b)
	})
	if !ok || ps == nil {
		return 0, ""
	}
	var r int64
	var m string
	ok = walk(ps, func(num protowire.Number, typ protowire.Type, b []byte) int {
		switch {
		case num == 1 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			r = int64(v)
			return n
		case num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeString(b)
			m = v
			return n
		}
		return protowire.ConsumeFieldValue(num, typ, b)
	})
	if !ok {
		return 0, ""
	}
	return r, m
}
