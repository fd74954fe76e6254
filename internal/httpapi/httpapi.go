// Package httpapi is the HTTP face of serve: POST /v1/events for EventBridge
// API destinations (or anything that posts events), /metrics, /healthz and
// the live dashboard at /.
//
// An ingest request is answered only after the pipeline has made its claims
// and pending points durable: 202 means the occurrences will be delivered, a
// 5xx means nothing was acknowledged and the sender should retry (EventBridge
// does), which is safe because claims are idempotent.
//
// Every resource a request can drive is bounded: the body (on the wire and
// once gunzipped) by MaxBodyBytes, the records held at once by ingestChunk,
// the errors named in the answer by MaxErrors. Only JSON and NDJSON media
// types are accepted, so a browser cannot post cross-site without a CORS
// preflight; ProtectReads puts /metrics and the dashboard behind the secret.
package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// Ingester is what the API needs of the pipeline.
type Ingester interface {
	Ingest(ctx context.Context, recs []genesys.Record) (pipeline.Result, error)
}

// Options configure the handler.
type Options struct {
	// AuthHeader carries Secret; an empty Secret turns auth off.
	AuthHeader string
	Secret     string
	// MaxBodyBytes bounds a request body; larger bodies get 413.
	MaxBodyBytes int64
	// MaxBytesInFlight bounds the request bytes of the ingest requests
	// served at once (default 4 × MaxBodyBytes). A request reserves its
	// Content-Length (MaxBodyBytes when it has none or is gzipped, at
	// least 16 KiB) before reading; one that does not fit gets 503 with
	// Retry-After at once, so concurrent senders cannot grow memory or a
	// queue without bound.
	MaxBytesInFlight int64
	// AllowedHosts are the host names, besides loopback names and IP
	// literals, that requests may name in Host; any other Host gets 421
	// (DNS rebinding, see hostAllowed).
	AllowedHosts []string
	// Health, if set, is asked by /healthz.
	Health func(ctx context.Context) error
	// Admit, if set, is asked before each ingest request is read; an error
	// answers 503 with Retry-After (nothing acknowledged), e.g. while the
	// disk is low. It must be cheap.
	Admit func() error
	// RetryAfter is the Retry-After of a refused request (default 2 s).
	RetryAfter time.Duration
	// Dashboard, if set, serves the live dashboard at /, its JSON under
	// DashboardAPI and its script and style under DashboardAssets.
	Dashboard       http.Handler
	DashboardAPI    string
	DashboardAssets string
	// ProtectReads makes /metrics and the dashboard ask for Secret too:
	// in AuthHeader, as "Authorization: Bearer <secret>" (what Prometheus
	// sends), or as the password of HTTP Basic auth (what a browser asks
	// for). /healthz stays open. It needs a Secret.
	ProtectReads bool
}

// MaxErrors is how many rejected records one response names; the rest are
// only counted (Response.ErrorsTotal), so a body of millions of bad records
// gets a small answer.
const MaxErrors = 100

// MaxHeaderBytes bounds a request's header (its request line, names and
// values; Go's server allows 4 KiB of slack on top), where Go's default is
// 1 MiB. A request with a larger header is answered 431 before any handler
// runs. EventBridge's API destination sends a handful of short headers (the
// secret, the content type, its own ids), a browser a few KiB of cookies.
const MaxHeaderBytes = 64 << 10

// ingestChunk is how many records one Ingest call takes, so a body of
// millions of tiny records never holds them all at once.
const ingestChunk = 1000

// Response is the JSON body of POST /v1/events.
type Response struct {
	Accepted    int `json:"accepted"`
	Skipped     int `json:"skipped"`
	Rejected    int `json:"rejected"`
	Occurrences int `json:"occurrences"`
	// Errors names the first MaxErrors rejected records; ErrorsTotal
	// counts them all.
	Errors      []pipeline.RecordError `json:"errors"`
	ErrorsTotal int                    `json:"errors_total"`
}

// New returns the handler serving every endpoint.
func New(p Ingester, m *telemetry.Metrics, opts Options, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 10 << 20
	}
	if opts.MaxBytesInFlight <= 0 {
		opts.MaxBytesInFlight = 4 * opts.MaxBodyBytes
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = 2 * time.Second
	}
	mux := http.NewServeMux()
	h := &handler{p: p, m: m, opts: opts, log: log, inflight: &inflight{max: opts.MaxBytesInFlight}, work: make(chan struct{}, maxDecoding())}
	mux.Handle("POST /v1/events", h.auth(http.HandlerFunc(h.events)))
	mux.Handle("GET /metrics", h.readAuth(promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry, EnableOpenMetrics: true})))
	mux.HandleFunc("GET /healthz", h.healthz)
	if opts.Dashboard != nil {
		mux.Handle("GET /{$}", h.readAuth(opts.Dashboard))
		mux.Handle("GET "+opts.DashboardAPI, h.readAuth(opts.Dashboard))
		if opts.DashboardAssets != "" {
			mux.Handle("GET "+opts.DashboardAssets, h.readAuth(opts.Dashboard))
		}
	}
	return h.checkHost(mux)
}

type handler struct {
	p        Ingester
	m        *telemetry.Metrics
	opts     Options
	log      *slog.Logger
	inflight *inflight
	// work holds a place for each ingest request being decoded and
	// claimed (maxDecoding).
	work chan struct{}
}

// maxDecoding is how many ingest requests are decoded and claimed at once:
// enough to keep every core busy and to let concurrent requests share a
// claim, few enough that a crowd of requests waits as bodies (bounded by
// MaxBytesInFlight) rather than as decoded events, which take several
// times their bytes.
func maxDecoding() int { return 8 * runtime.GOMAXPROCS(0) }

func (h *handler) refuse(w http.ResponseWriter, err *bodyError) {
	if err.reason != "" {
		h.m.Limits.WithLabelValues(err.reason).Inc()
	}
	writeJSON(w, err.status, map[string]string{"error": err.msg})
}

func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	if msg := checkType(r.Header.Get("Content-Type")); msg != "" {
		h.refuse(w, &bodyError{status: http.StatusUnsupportedMediaType, msg: msg})
		return
	}
	if h.opts.Admit != nil {
		if err := h.opts.Admit(); err != nil {
			h.retryLater(w, "not accepting events, retry later: "+err.Error())
			return
		}
	}
	limit := h.opts.MaxBodyBytes
	reserved := bodyReservation(r.ContentLength, isGzipEncoding(r.Header.Get("Content-Encoding")), limit)
	if r.ContentLength <= limit {
		// (A declared length over the limit is refused by readBody
		// without reading, so it needs no reservation.)
		if !h.inflight.reserve(reserved) {
			h.m.HTTPRefused.WithLabelValues("bytes_in_flight").Inc()
			h.retryLater(w, fmt.Sprintf("busy: requests holding %d bytes are being served (http.max_bytes_in_flight); retry later", h.opts.MaxBytesInFlight))
			return
		}
		defer h.inflight.release(reserved)
	}
	body, err := readBody(w, r, limit)
	if err != nil {
		h.refuse(w, err.(*bodyError))
		return
	}
	// Decoding copies what it keeps, so the buffer is free for the next
	// request once this one is answered.
	defer releaseBody(body)
	select {
	case h.work <- struct{}{}:
		defer func() { <-h.work }()
	case <-r.Context().Done():
		// The sender is gone; nothing of its request was claimed.
		h.retryLater(w, "request ended before it was served; retry")
		return
	}
	// Records go to the pipeline a chunk at a time, so a body of millions
	// of tiny bad records holds no more than a chunk of them. The request
	// is acknowledged only once every chunk is claimed; if one fails, the
	// sender retries the whole body, and what was claimed is not counted
	// twice.
	var res pipeline.Result
	recs := recordsBuffer()
	defer releaseRecords(recs)
	resp := Response{Errors: []pipeline.RecordError{}}
	ingest := func() error {
		part, err := h.p.Ingest(r.Context(), recs)
		if err != nil {
			return err
		}
		recs = recs[:0]
		for _, e := range part.Errors {
			if len(resp.Errors) < MaxErrors {
				e.Error = fmt.Sprintf("record %d: %s", e.Index, e.Error)
				resp.Errors = append(resp.Errors, e)
			}
		}
		resp.ErrorsTotal += len(part.Errors)
		part.Errors = nil
		res.Add(part)
		return nil
	}
	var ingestErr error
	decodeErr := genesys.DecodeBytes(body, func(rec genesys.Record) error {
		recs = append(recs, rec)
		if len(recs) < ingestChunk {
			return nil
		}
		ingestErr = ingest()
		return ingestErr
	})
	if decodeErr == nil && len(recs) > 0 {
		ingestErr = ingest()
	}
	if ingestErr != nil {
		h.log.Error("ingest failed; request not acknowledged", "records", res.Read+len(recs), "err", ingestErr)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "store unavailable, retry: " + ingestErr.Error()})
		return
	}
	if decodeErr != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "reading body: " + decodeErr.Error()})
		return
	}
	if res.Read == 0 {
		// Nothing to accept or reject: say why rather than answer an empty
		// list of errors (curl's --data-binary @missing-file posts nothing).
		msg := "empty body: want one or more events, as JSON or newline-delimited JSON"
		if len(bytes.TrimSpace(body)) > 0 {
			msg = "no events in the body: want one or more events, as JSON or newline-delimited JSON"
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": msg})
		return
	}
	if n := resp.ErrorsTotal - len(resp.Errors); n > 0 {
		h.m.Limits.WithLabelValues("errors_truncated").Add(float64(n))
	}
	resp.Accepted, resp.Skipped, resp.Rejected, resp.Occurrences = res.Accepted, res.Skipped, res.Rejected, res.Occurrences
	status := http.StatusAccepted
	if res.Accepted+res.Skipped == 0 {
		status = http.StatusBadRequest
		if len(resp.Errors) > 0 && isGzip(body) {
			resp.Errors[0].Error += " (the body looks gzip-compressed: send Content-Encoding: gzip)"
		}
	}
	writeJSON(w, status, resp)
}

// retryLater answers 503 with Retry-After: nothing of the request was
// read or acknowledged.
func (h *handler) retryLater(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", strconv.Itoa(int(max(h.opts.RetryAfter.Round(time.Second), time.Second)/time.Second)))
	writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": msg})
}

func (h *handler) healthz(w http.ResponseWriter, r *http.Request) {
	if h.opts.Health != nil {
		if err := h.opts.Health(r.Context()); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unhealthy", "error": err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
