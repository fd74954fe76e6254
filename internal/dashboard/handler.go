package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"math"
	"mime"
	"net"
	"net/http"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// The page: index.html at GET /, and its script and style (everything
// else in web/) under AssetsPrefix. No script or style is inline, so the
// Content-Security-Policy can forbid inline code.
//
//go:embed web
var web embed.FS

// APIPrefix is the path under which the JSON endpoints live.
const APIPrefix = "/api/v1/"

// AssetsPrefix is the path under which the page's script and style live.
const AssetsPrefix = "/assets/"

// securityPolicy lets the page run only its own script and style from this
// server, fetch only from it, and never be framed (clickjacking).
const securityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

type asset struct {
	body  []byte
	ctype string
	etag  string
}

// assets are the files of web/ by their path under it.
var assets = func() map[string]asset {
	out := map[string]asset{}
	fs.WalkDir(web, "web", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := web.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		out[strings.TrimPrefix(p, "web/")] = asset{b, mime.TypeByExtension(path.Ext(p)), `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	return out
}()

// The JSON endpoints, documented in README.md.
const (
	SeriesPath    = APIPrefix + "series"
	FlowsPath     = APIPrefix + "flows"
	MalformedPath = APIPrefix + "malformed"
	HealthPath    = APIPrefix + "health"
	StreamPath    = APIPrefix + "stream"
)

// Event streams (one per open page) are bounded in number, per client and
// in time, so that no client can hold the slots: at most MaxStreams open, at
// most MaxStreamsPerClient from one remote address, each ended after
// StreamLifetime (the page reconnects at once), and a write that the client
// does not take within streamWriteTimeout ends it.
const (
	MaxStreams          = 64
	MaxStreamsPerClient = 8
	StreamLifetime      = 10 * time.Minute
	streamWriteTimeout  = 10 * time.Second
)

// Handler serves the dashboard page at GET / and its JSON under /api/v1/.
type Handler struct {
	rec *Recorder
	m   *telemetry.Metrics
	mux *http.ServeMux

	slotMu     sync.Mutex
	open       int            // streams open
	perClient  map[string]int // streams open by remote address
	streamLife time.Duration  // StreamLifetime, shorter in tests
	done       chan struct{}  // closed by CloseStreams
	closeOnce  sync.Once

	rateMu  sync.Mutex
	samples []rateSample // records read, for events/s
}

type rateSample struct {
	at   time.Time
	read int64
}

// New returns the handler of rec's dashboard; m may be nil: the health
// endpoint then has no pipeline counters.
func New(rec *Recorder, m *telemetry.Metrics) *Handler {
	h := &Handler{rec: rec, m: m, mux: http.NewServeMux(), perClient: map[string]int{}, streamLife: StreamLifetime, done: make(chan struct{})}
	h.mux.HandleFunc("GET /{$}", h.page)
	h.mux.HandleFunc("GET "+AssetsPrefix, h.asset)
	h.mux.HandleFunc("GET "+SeriesPath, h.series)
	h.mux.HandleFunc("GET "+FlowsPath, h.flows)
	h.mux.HandleFunc("GET "+MalformedPath, h.malformed)
	h.mux.HandleFunc("GET "+HealthPath, h.health)
	h.mux.HandleFunc("GET "+StreamPath, h.stream)
	h.mux.HandleFunc("GET "+PathsPath, h.pathsJSON)
	return h
}

// SetStreamLifetime changes how long an event stream lasts before the
// server ends it and the page reconnects (StreamLifetime by default), e.g.
// below a proxy's own limit. It must be called before the handler serves.
func (h *Handler) SetStreamLifetime(d time.Duration) { h.streamLife = d }

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", securityPolicy)
	hd.Set("X-Frame-Options", "DENY") // for browsers without frame-ancestors
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	h.mux.ServeHTTP(w, r)
}

// CloseStreams ends every open event stream, now and later, so that
// http.Server.Shutdown need not wait for them; register it with
// http.Server.RegisterOnShutdown.
func (h *Handler) CloseStreams() { h.closeOnce.Do(func() { close(h.done) }) }

func (h *Handler) page(w http.ResponseWriter, r *http.Request) {
	serveAsset(w, r, assets["index.html"])
}

func (h *Handler) asset(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, AssetsPrefix)
	a, ok := assets[name]
	if !ok || name == "index.html" {
		http.NotFound(w, r)
		return
	}
	serveAsset(w, r, a)
}

// serveAsset answers with a, revalidated by its ETag on every load, so a
// new binary's page never runs an old script.
func serveAsset(w http.ResponseWriter, r *http.Request, a asset) {
	hd := w.Header()
	hd.Set("Content-Type", a.ctype)
	hd.Set("Cache-Control", "no-cache")
	hd.Set("ETag", a.etag)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}

func jsonError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// SeriesBody is the JSON of GET /api/v1/series.
type SeriesBody struct {
	GeneratedAt time.Time `json:"generated_at"`
	Range       string    `json:"range"`
	StepSeconds int64     `json:"step_seconds"`
	// Start is the start of the first bucket; every metric's Counts has
	// Buckets counts (or none, when nothing fell in the range).
	Start   time.Time  `json:"start"`
	Buckets int        `json:"buckets"`
	Total   int64      `json:"total"`
	Flows   []FlowBody `json:"flows"`
	// Attention lists the flow metrics flagged up or down (see Assess),
	// furthest from their usual rate first.
	Attention []AttentionBody `json:"attention"`
}

// AttentionBody is one flagged flow metric.
type AttentionBody struct {
	Flow      string   `json:"flow"`
	Metric    string   `json:"metric"`
	Trend     string   `json:"trend"`
	Ratio     *float64 `json:"ratio"`
	RateNow   float64  `json:"rate_now"`
	RateUsual float64  `json:"rate_usual"`
}

// FlowBody is one flow of GET /api/v1/series or /api/v1/flows.
type FlowBody struct {
	Flow    string       `json:"flow"`
	InRange int64        `json:"in_range"`
	Metrics []MetricBody `json:"metrics"`
}

// MetricBody is one flow metric.
type MetricBody struct {
	Metric  string  `json:"metric"`
	Counts  []int64 `json:"counts,omitempty"`
	InRange int64   `json:"in_range"`
	// Occurrences per minute: over the last minute, and usually (over the
	// hour before it; null with less than 5 min of history). Trend and
	// Ratio (now/usual rounded to one decimal, null without a usual rate
	// or when it is 0) say how they compare: see Assess.
	RateNow   float64   `json:"rate_now"`
	RateUsual *float64  `json:"rate_usual"`
	Trend     string    `json:"trend"`
	Ratio     *float64  `json:"ratio"`
	Total     int64     `json:"total"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
}

func (h *Handler) series(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("range")
	if name == "" {
		name = "1h"
	}
	rg, ok := RangeByName(name)
	if !ok {
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("range %q: want one of 15m, 1h, 6h, 24h", name))
		return
	}
	writeJSON(w, seriesBody(h.rec.Read(rg), true))
}

func (h *Handler) flows(w http.ResponseWriter, _ *http.Request) {
	rg, _ := RangeByName("24h")
	b := seriesBody(h.rec.Read(rg), false)
	writeJSON(w, struct {
		GeneratedAt time.Time       `json:"generated_at"`
		Flows       []FlowBody      `json:"flows"`
		Attention   []AttentionBody `json:"attention"`
	}{b.GeneratedAt, b.Flows, b.Attention})
}

func seriesBody(s Series, counts bool) SeriesBody {
	b := SeriesBody{
		GeneratedAt: s.Now, Range: s.Range.Name, StepSeconds: int64(s.Range.Step / time.Second),
		Start: s.Start, Buckets: int(s.Range.Span / s.Range.Step), Total: s.Total, Flows: []FlowBody{},
		Attention: []AttentionBody{},
	}
	for _, p := range Attention(s) {
		t := Assess(p)
		b.Attention = append(b.Attention, AttentionBody{Flow: p.Flow, Metric: p.Metric, Trend: t.Trend, Ratio: ratio(t), RateNow: round(p.RateNow), RateUsual: round(p.RateUsual)})
	}
	for _, p := range s.Pairs {
		if n := len(b.Flows); n == 0 || b.Flows[n-1].Flow != p.Flow {
			b.Flows = append(b.Flows, FlowBody{Flow: p.Flow})
		}
		f := &b.Flows[len(b.Flows)-1]
		t := Assess(p)
		m := MetricBody{Metric: p.Metric, InRange: p.InRange, RateNow: round(p.RateNow), Trend: t.Trend, Ratio: ratio(t), Total: p.Total, LastSeen: p.Last}
		if counts && p.InRange > 0 {
			m.Counts = p.Counts
		}
		if p.RateUsual >= 0 {
			u := round(p.RateUsual)
			m.RateUsual = &u
		}
		f.InRange += p.InRange
		f.Metrics = append(f.Metrics, m)
	}
	return b
}

func round(f float64) float64 { return math.Round(f*1000) / 1000 }

func ratio(t Trend) *float64 {
	if t.Ratio < 0 {
		return nil
	}
	return &t.Ratio
}

// MalformedBody is the JSON of GET /api/v1/malformed.
type MalformedBody struct {
	GeneratedAt time.Time       `json:"generated_at"`
	Flows       []MalformedFlow `json:"flows"`
	// Distinct is the number of names listed; NotKept counts sightings of
	// names beyond the caps (per flow and in all).
	Distinct int   `json:"distinct"`
	NotKept  int64 `json:"not_kept"`
}

func (h *Handler) malformed(w http.ResponseWriter, _ *http.Request) {
	flows, lost := h.rec.MalformedNames()
	b := MalformedBody{GeneratedAt: h.rec.now().UTC(), Flows: flows, NotKept: lost}
	for _, f := range flows {
		b.Distinct += len(f.Names)
		b.NotKept += f.NotKept
	}
	writeJSON(w, b)
}

// HealthBody is the JSON of GET /api/v1/health: the pipeline's counters
// since start (the numbers /metrics exposes), and every sink but the
// dashboard itself.
type HealthBody struct {
	GeneratedAt time.Time `json:"generated_at"`
	// EventsPerSecond is records read per second over the last ~10 s of
	// requests to this endpoint; null on the first request.
	EventsPerSecond  *float64         `json:"events_per_second"`
	RecordsRead      int64            `json:"records_read"`
	RecordsAccepted  int64            `json:"records_accepted"`
	RecordsSkipped   int64            `json:"records_skipped"`
	RecordsRejected  int64            `json:"records_rejected"`
	RejectedByReason map[string]int64 `json:"rejected_by_reason"`
	Occurrences      int64            `json:"occurrences"`
	Malformed        int64            `json:"malformed"`
	Sinks            []SinkHealth     `json:"sinks"`
}

// SinkHealth is one sink's delivery state.
type SinkHealth struct {
	Name string `json:"name"`
	// Pending is the occurrences waiting for this sink (outbox depth).
	Pending int64 `json:"pending"`
	// Points delivered, batches that failed (retried or dropped) and
	// occurrences dropped from the outbox, since start.
	Points        int64     `json:"points"`
	BatchFailures int64     `json:"batch_failures"`
	Dropped       int64     `json:"dropped"`
	LastSuccess   time.Time `json:"last_success,omitzero"`
	LastError     time.Time `json:"last_error,omitzero"`
	Error         string    `json:"error,omitempty"`
}

func (h *Handler) health(w http.ResponseWriter, _ *http.Request) {
	now := h.rec.now()
	b := HealthBody{GeneratedAt: now.UTC(), RejectedByReason: map[string]int64{}, Sinks: []SinkHealth{}}
	sinks := map[string]*SinkHealth{}
	sink := func(name string) *SinkHealth {
		s, ok := sinks[name]
		if !ok {
			s = &SinkHealth{Name: name}
			sinks[name] = s
		}
		return s
	}
	for _, st := range h.rec.Statuses() {
		s := sink(st.Name)
		s.LastSuccess, s.LastError, s.Error = st.LastSuccess, st.LastError, st.Error
	}
	if h.m != nil {
		fams, _ := h.m.Registry.Gather() // a partial result is still worth showing
		for _, f := range fams {
			for _, mt := range f.GetMetric() {
				v := value(mt)
				switch f.GetName() {
				case "flowmetrics_records_read_total":
					b.RecordsRead += v
				case "flowmetrics_records_accepted_total":
					b.RecordsAccepted += v
				case "flowmetrics_records_skipped_total":
					b.RecordsSkipped += v
				case "flowmetrics_records_rejected_total":
					b.RecordsRejected += v
					b.RejectedByReason[label(mt, "reason")] += v
				case "flowmetrics_occurrences_total":
					b.Occurrences += v
				case "flowmetrics_malformed_attributes_total":
					b.Malformed += v
				case "flowmetrics_outbox_depth":
					sink(label(mt, "sink")).Pending += v
				case "flowmetrics_sink_points_total":
					sink(label(mt, "sink")).Points += v
				case "flowmetrics_sink_batch_failures_total":
					sink(label(mt, "sink")).BatchFailures += v
				case "flowmetrics_outbox_dropped_total":
					sink(label(mt, "sink")).Dropped += v
				}
			}
		}
		b.EventsPerSecond = h.rate(now, b.RecordsRead)
	}
	delete(sinks, SinkName) // the dashboard is not a sink the user configured
	for _, s := range sinks {
		b.Sinks = append(b.Sinks, *s)
	}
	sort.Slice(b.Sinks, func(i, j int) bool { return b.Sinks[i].Name < b.Sinks[j].Name })
	writeJSON(w, b)
}

// rate keeps the records-read samples of the last 30 s and returns the
// rate since the oldest sample at most 10 s old (at least 1 s old).
func (h *Handler) rate(now time.Time, read int64) *float64 {
	h.rateMu.Lock()
	defer h.rateMu.Unlock()
	if n := len(h.samples); n == 0 || now.Sub(h.samples[n-1].at) >= 500*time.Millisecond {
		h.samples = append(h.samples, rateSample{now, read})
	}
	i := 0
	for i < len(h.samples) && now.Sub(h.samples[i].at) > 30*time.Second {
		i++
	}
	h.samples = h.samples[i:]
	for _, s := range h.samples {
		dt := now.Sub(s.at)
		if dt <= 10*time.Second && dt >= time.Second {
			r := round(float64(read-s.read) / dt.Seconds())
			return &r
		}
	}
	return nil
}

// acquire takes a stream slot for client, if one is free.
func (h *Handler) acquire(client string) (ok bool, why string) {
	h.slotMu.Lock()
	defer h.slotMu.Unlock()
	switch {
	case h.open >= MaxStreams:
		return false, fmt.Sprintf("%d streams open, the most this server keeps", MaxStreams)
	case h.perClient[client] >= MaxStreamsPerClient:
		return false, fmt.Sprintf("%d streams open from %s, the most one client may hold", MaxStreamsPerClient, client)
	}
	h.open++
	h.perClient[client]++
	return true, ""
}

func (h *Handler) release(client string) {
	h.slotMu.Lock()
	defer h.slotMu.Unlock()
	h.open--
	if h.perClient[client]--; h.perClient[client] <= 0 {
		delete(h.perClient, client)
	}
}

// clientOf is the remote address of r without its port.
func clientOf(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// stream sends an event "change" whenever the Recorder changes (at most
// five a second), and a comment every 15 s to keep the connection open. It
// ends after streamLife; the browser's EventSource then reconnects after
// the "retry" of 1 s, and the page reads everything again.
func (h *Handler) stream(w http.ResponseWriter, r *http.Request) {
	client := clientOf(r)
	if ok, why := h.acquire(client); !ok {
		w.Header().Set("Retry-After", "30")
		jsonError(w, http.StatusServiceUnavailable, why+"; poll the other endpoints instead")
		return
	}
	defer h.release(client)
	rc := http.NewResponseController(w)
	// A stream outlives the server's write timeout; each write gets its
	// own, so a client that stops reading frees its slot.
	send := func(msg string) bool {
		rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
		_, err := strings.NewReader(msg).WriteTo(w)
		return err == nil && rc.Flush() == nil
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	ch, v := h.rec.Changed()
	if !send(fmt.Sprintf("retry: 1000\nevent: change\ndata: {\"version\":%d}\n\n", v)) {
		return
	}
	beat := time.NewTicker(15 * time.Second)
	defer beat.Stop()
	end := time.NewTimer(h.streamLife)
	defer end.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-h.done:
			return
		case <-end.C:
			return
		case <-beat.C:
			if !send(": keep-alive\n\n") {
				return
			}
		case <-ch:
			select { // coalesce a burst of changes
			case <-time.After(200 * time.Millisecond):
			case <-r.Context().Done():
				return
			case <-h.done:
				return
			}
			ch, v = h.rec.Changed()
			if !send(fmt.Sprintf("event: change\ndata: {\"version\":%d}\n\n", v)) {
				return
			}
		}
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) int64 {
	switch {
	case m.Counter != nil:
		return int64(m.Counter.GetValue())
	case m.Gauge != nil:
		return int64(m.Gauge.GetValue())
	}
	return 0
}
