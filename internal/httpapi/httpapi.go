// Package httpapi is the HTTP face of serve: POST /v1/events for EventBridge
// API destinations (or anything that posts events), /metrics, /healthz and
// the live dashboard at /.
//
// An ingest request is answered only after the pipeline has made its claims
// and pending points durable: 202 means the occurrences will be delivered, a
// 5xx means nothing was acknowledged and the sender should retry (EventBridge
// does), which is safe because claims are idempotent.
package httpapi

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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
	// Health, if set, is asked by /healthz.
	Health func(ctx context.Context) error
	// Admit, if set, is asked before each ingest request is read; an error
	// answers 503 with Retry-After (nothing acknowledged), e.g. while the
	// disk is low. It must be cheap.
	Admit func() error
	// RetryAfter is the Retry-After of a refused request (default 2 s).
	RetryAfter time.Duration
	// Dashboard, if set, serves the live dashboard at / and its JSON at
	// DashboardAPI.
	Dashboard    http.Handler
	DashboardAPI string
}

// Response is the JSON body of POST /v1/events.
type Response struct {
	Accepted    int                    `json:"accepted"`
	Skipped     int                    `json:"skipped"`
	Rejected    int                    `json:"rejected"`
	Occurrences int                    `json:"occurrences"`
	Errors      []pipeline.RecordError `json:"errors"`
}

// New returns the handler serving every endpoint.
func New(p Ingester, m *telemetry.Metrics, opts Options, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	mux := http.NewServeMux()
	h := &handler{p: p, opts: opts, log: log}
	mux.Handle("POST /v1/events", h.auth(http.HandlerFunc(h.events)))
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.HandleFunc("GET /healthz", h.healthz)
	if opts.Dashboard != nil {
		mux.Handle("GET /{$}", opts.Dashboard)
		mux.Handle("GET "+opts.DashboardAPI, opts.Dashboard)
	}
	return mux
}

type handler struct {
	p    Ingester
	opts Options
	log  *slog.Logger
}

func (h *handler) auth(next http.Handler) http.Handler {
	if h.opts.Secret == "" {
		return next
	}
	secret := []byte(h.opts.Secret)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get(h.opts.AuthHeader))
		if subtle.ConstantTimeCompare(got, secret) != 1 {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong " + h.opts.AuthHeader + " header"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	if h.opts.Admit != nil {
		if err := h.opts.Admit(); err != nil {
			retry := h.opts.RetryAfter
			if retry <= 0 {
				retry = 2 * time.Second
			}
			w.Header().Set("Retry-After", strconv.Itoa(int(max(retry.Round(time.Second), time.Second)/time.Second)))
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "not accepting events, retry later: " + err.Error()})
			return
		}
	}
	limit := h.opts.MaxBodyBytes
	if limit <= 0 {
		limit = 10 << 20
	}
	if r.ContentLength > limit {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "body larger than " + strconv.FormatInt(limit, 10) + " bytes"})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "body larger than " + strconv.FormatInt(limit, 10) + " bytes"})
			return
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "reading body: " + err.Error()})
		return
	}
	var recs []genesys.Record
	if err := genesys.Decode(bytes.NewReader(body), func(rec genesys.Record) error {
		recs = append(recs, rec)
		return nil
	}); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "reading body: " + err.Error()})
		return
	}
	res, err := h.p.Ingest(r.Context(), recs)
	if err != nil {
		h.log.Error("ingest failed; request not acknowledged", "records", len(recs), "err", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "store unavailable, retry: " + err.Error()})
		return
	}
	resp := Response{Accepted: res.Accepted, Skipped: res.Skipped, Rejected: res.Rejected, Occurrences: res.Occurrences, Errors: res.Errors}
	if resp.Errors == nil {
		resp.Errors = []pipeline.RecordError{}
	}
	for i := range resp.Errors {
		resp.Errors[i].Error = fmt.Sprintf("record %d: %s", resp.Errors[i].Index, resp.Errors[i].Error)
	}
	status := http.StatusAccepted
	if res.Accepted+res.Skipped == 0 {
		status = http.StatusBadRequest
	}
	writeJSON(w, status, resp)
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
