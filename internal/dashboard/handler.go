package dashboard

import (
	_ "embed"
	"encoding/json"
	"net/http"
	"sort"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

//go:embed page.html
var page []byte

// Path of the JSON the page polls.
const APIPath = "/api/v1/dashboard"

// Dashboard is the JSON body of GET /api/v1/dashboard.
type Dashboard struct {
	GeneratedAt   time.Time `json:"generated_at"`
	WindowSeconds int64     `json:"window_seconds"`
	// Every row's Counts has one count per slot of SlotSeconds, oldest
	// first; the first slot starts at SlotsStart.
	SlotSeconds int64     `json:"slot_seconds"`
	SlotsStart  time.Time `json:"slots_start"`
	// Total is every occurrence the dashboard received since start.
	Total int64 `json:"total"`
	// Flows are sorted by name; a flow with only malformed attributes has
	// no metrics but is listed, so its typo is seen.
	Flows []Flow `json:"flows"`
	// Other sums the flow/metric pairs beyond MaxSeries; null when none.
	Other *Row `json:"other"`
	// Health is null when the handler has no telemetry.
	Health *Health `json:"health"`
}

// Flow groups the metrics of one flow.
type Flow struct {
	Flow string `json:"flow"`
	// Malformed counts metric-shaped attribute names of this flow that
	// broke the naming rules, since start.
	Malformed int64 `json:"malformed"`
	Metrics   []Row `json:"metrics"`
}

// Row is one flow metric.
type Row struct {
	Metric   string `json:"metric"`
	Last5Min int64  `json:"last_5m"`
	InWindow int64  `json:"in_window"`
	Total    int64  `json:"total"`
	// Counts is empty when nothing fell in the window.
	Counts []int64 `json:"counts"`
}

// Health is the pipeline's own counters since start, read from the
// telemetry registry.
type Health struct {
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
	// OutboxDepth is the occurrences waiting for this sink (as last
	// refreshed by the pipeline).
	OutboxDepth int64 `json:"outbox_depth"`
	// Points delivered, batches that failed (retried or dropped) and
	// occurrences dropped from the outbox, since start.
	Points        int64 `json:"points"`
	BatchFailures int64 `json:"batch_failures"`
	Dropped       int64 `json:"dropped"`
}

// Handler serves the dashboard page at GET / and its data at GET
// /api/v1/dashboard. rec must not be nil; m may be nil: the page then shows
// no health strip.
func Handler(rec *Recorder, m *telemetry.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		// The page is self-contained: nothing may load from elsewhere.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
		h.Set("X-Content-Type-Options", "nosniff")
		w.Write(page)
	})
	mux.HandleFunc("GET "+APIPath, func(w http.ResponseWriter, r *http.Request) {
		d := build(rec.Snapshot(), m)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(d)
	})
	return mux
}

// build turns a snapshot and the telemetry into the JSON body.
func build(s Snapshot, m *telemetry.Metrics) Dashboard {
	d := Dashboard{
		GeneratedAt:   s.Now,
		WindowSeconds: int64(s.Window / time.Second),
		SlotSeconds:   int64(s.Slot / time.Second),
		SlotsStart:    s.Start,
		Total:         s.Total,
		Flows:         []Flow{},
	}
	var malformed map[string]int64
	if m != nil {
		var h Health
		h, malformed = health(m)
		d.Health = &h
	}
	// Series are sorted by flow, so each flow's rows are contiguous.
	for _, ss := range s.Series {
		if n := len(d.Flows); n == 0 || d.Flows[n-1].Flow != ss.Flow {
			d.Flows = append(d.Flows, Flow{Flow: ss.Flow, Malformed: malformed[ss.Flow], Metrics: []Row{}})
			delete(malformed, ss.Flow)
		}
		f := &d.Flows[len(d.Flows)-1]
		f.Metrics = append(f.Metrics, row(ss))
	}
	for flow, n := range malformed {
		if n > 0 {
			d.Flows = append(d.Flows, Flow{Flow: flow, Malformed: n, Metrics: []Row{}})
		}
	}
	sort.Slice(d.Flows, func(i, j int) bool { return d.Flows[i].Flow < d.Flows[j].Flow })
	if s.Other != nil {
		r := row(*s.Other)
		d.Other = &r
	}
	return d
}

func row(ss SeriesSnapshot) Row {
	r := Row{Metric: ss.Metric, Last5Min: ss.Recent, InWindow: ss.InWindow, Total: ss.Total, Counts: ss.Counts}
	if ss.InWindow == 0 {
		r.Counts = []int64{} // a flat line; spares the bytes of 120 zeros
	}
	return r
}

// health reads the pipeline counters by name, and the malformed count per
// flow. Reading the registry (rather than holding the collectors) keeps the
// dashboard showing exactly what /metrics shows.
func health(m *telemetry.Metrics) (Health, map[string]int64) {
	h := Health{RejectedByReason: map[string]int64{}, Sinks: []SinkHealth{}}
	malformed := map[string]int64{}
	fams, _ := m.Registry.Gather() // a partial result is still worth showing
	sinks := map[string]*SinkHealth{}
	sink := func(mt *dto.Metric) *SinkHealth {
		name := label(mt, "sink")
		s, ok := sinks[name]
		if !ok {
			s = &SinkHealth{Name: name}
			sinks[name] = s
		}
		return s
	}
	for _, f := range fams {
		for _, mt := range f.GetMetric() {
			v := value(mt)
			switch f.GetName() {
			case "flowmetrics_records_read_total":
				h.RecordsRead += v
			case "flowmetrics_records_accepted_total":
				h.RecordsAccepted += v
			case "flowmetrics_records_skipped_total":
				h.RecordsSkipped += v
			case "flowmetrics_records_rejected_total":
				h.RecordsRejected += v
				h.RejectedByReason[label(mt, "reason")] += v
			case "flowmetrics_occurrences_total":
				h.Occurrences += v
			case "flowmetrics_malformed_attributes_total":
				h.Malformed += v
				malformed[label(mt, "flow")] += v
			case "flowmetrics_outbox_depth":
				sink(mt).OutboxDepth += v
			case "flowmetrics_sink_points_total":
				sink(mt).Points += v
			case "flowmetrics_sink_batch_failures_total":
				sink(mt).BatchFailures += v
			case "flowmetrics_outbox_dropped_total":
				sink(mt).Dropped += v
			}
		}
	}
	for _, s := range sinks {
		h.Sinks = append(h.Sinks, *s)
	}
	sort.Slice(h.Sinks, func(i, j int) bool { return h.Sinks[i].Name < h.Sinks[j].Name })
	return h, malformed
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
