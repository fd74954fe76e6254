package prometheus

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/paths"
)

// The series of conversation paths. Counters count conversations (one per
// closed path); histograms observe one duration per closed path.
const (
	ExitName       = "genesys_flow_exit_total"
	StepName       = "genesys_flow_step_seconds"
	TimingName     = "genesys_flow_timing_seconds"
	FunnelName     = "genesys_flow_funnel_total"
	ExperimentName = "genesys_flow_experiment_total"
)

// DefaultDurationBuckets are the histogram buckets of step timings and
// timings, in seconds (1 s to 4 h): paths.DefaultDurationBuckets, which
// the OTLP sink shares.
var DefaultDurationBuckets = paths.DefaultDurationBuckets

// ValidBuckets checks a bucket list: increasing, finite, at most 50.
func ValidBuckets(b []float64) error { return paths.ValidBuckets(b) }

// pathKind is how each kind of path point shows in Prometheus.
var pathKinds = map[flowmetrics.PathKind]struct {
	name, help string
	labels     []string
}{
	flowmetrics.PathExit:       {ExitName, "Conversations whose last metric in the flow was this one: where conversations left each flow. Counted once per conversation and flow, when its path closes (customer.end and a grace period, or the idle timeout).", []string{"flow", "metric"}},
	flowmetrics.PathStep:       {StepName, "Seconds from a flow's first metric to this metric's first occurrence in the conversation, once per closed conversation path.", []string{"flow", "metric"}},
	flowmetrics.PathTiming:     {TimingName, "Seconds from a configured timing's from step to its to step (paths.timings), once per closed conversation path.", []string{"timing"}},
	flowmetrics.PathFunnel:     {FunnelName, "Conversations that reached this step of a configured funnel (paths.funnels) after the steps before it.", []string{"funnel", "step"}},
	flowmetrics.PathExperiment: {ExperimentName, "Conversations that reached this step of an experiment variant (paths.experiments) after the steps before it; a variant's first step counts its conversations.", []string{"experiment", "variant", "step"}},
}

// labelsOf returns a point's label values, in the order of its kind's
// labels.
func labelsOf(p flowmetrics.PathPoint) []string {
	switch p.Kind {
	case flowmetrics.PathExit, flowmetrics.PathStep:
		return []string{p.Flow, p.Metric}
	case flowmetrics.PathTiming:
		return []string{p.Name}
	case flowmetrics.PathFunnel:
		return []string{p.Name, p.Step}
	case flowmetrics.PathExperiment:
		return []string{p.Name, p.Variant, p.Step}
	}
	return nil
}

// pathSeries is one series: its kind and label values joined by NUL.
type pathSeries struct {
	kind   flowmetrics.PathKind
	labels string
}

// pathValue is a counter's total or a histogram's bucket counts (not
// cumulative; the last one is +Inf), sum and count, and the latest
// conversation seen (the exemplar).
type pathValue struct {
	Kind    flowmetrics.PathKind `json:"kind"`
	Labels  []string             `json:"labels"`
	Count   uint64               `json:"count"`
	Sum     float64              `json:"sum,omitempty"`
	Buckets []uint64             `json:"buckets,omitempty"`
	Conv    string               `json:"conversation,omitempty"`
	ConvAt  time.Time            `json:"conversation_time,omitzero"`
}

func (v *pathValue) add(p flowmetrics.PathPoint, bounds []float64) {
	v.Count++
	if p.Kind.IsDuration() {
		if len(v.Buckets) != len(bounds)+1 {
			v.Buckets = make([]uint64, len(bounds)+1)
		}
		v.Sum += p.Seconds
		v.Buckets[sort.SearchFloat64s(bounds, p.Seconds)]++
	}
	if p.Conversation != "" && !p.Time.Before(v.ConvAt) {
		v.Conv, v.ConvAt = p.Conversation, p.Time
	}
}

// pathMetrics is the collector of the path series: the values /metrics
// shows (shown) and the delivered values the sink state keeps
// (delivered); they differ by the pending points counted ahead at a
// restart (see ResumeFrom).
type pathMetrics struct {
	bounds []float64
	descs  map[flowmetrics.PathKind]*prometheus.Desc

	mu        sync.Mutex
	shown     map[pathSeries]*pathValue
	delivered map[pathSeries]*pathValue
	dirty     map[pathSeries]struct{}
	ahead     map[aheadKey]int
}

// aheadKey identifies a pending point counted at a restart.
type aheadKey struct {
	s    pathSeries
	sec  float64
	conv string
	at   int64
}

func newPathMetrics(bounds []float64, constLabels prometheus.Labels) *pathMetrics {
	pm := &pathMetrics{
		bounds: bounds, descs: map[flowmetrics.PathKind]*prometheus.Desc{},
		shown: map[pathSeries]*pathValue{}, delivered: map[pathSeries]*pathValue{},
		dirty: map[pathSeries]struct{}{}, ahead: map[aheadKey]int{},
	}
	for k, d := range pathKinds {
		pm.descs[k] = prometheus.NewDesc(d.name, d.help, d.labels, constLabels)
	}
	return pm
}

func seriesOf(p flowmetrics.PathPoint) (pathSeries, []string) {
	l := labelsOf(p)
	return pathSeries{p.Kind, strings.Join(l, "\x00")}, l
}

func valueIn(m map[pathSeries]*pathValue, s pathSeries, kind flowmetrics.PathKind, labels []string) *pathValue {
	v := m[s]
	if v == nil {
		v = &pathValue{Kind: kind, Labels: labels}
		m[s] = v
	}
	return v
}

// deliver adds delivered points; those counted ahead are shown already.
func (pm *pathMetrics) deliver(points []flowmetrics.PathPoint) {
	pm.each(points, func(p flowmetrics.PathPoint, s pathSeries, l []string, k aheadKey) {
		valueIn(pm.delivered, s, p.Kind, l).add(p, pm.bounds)
		pm.dirty[s] = struct{}{}
		if pm.ahead[k] > 0 {
			if pm.ahead[k]--; pm.ahead[k] == 0 {
				delete(pm.ahead, k)
			}
			return
		}
		valueIn(pm.shown, s, p.Kind, l).add(p, pm.bounds)
	})
}

// countAhead shows pending points before they are delivered.
func (pm *pathMetrics) countAhead(points []flowmetrics.PathPoint) {
	pm.each(points, func(p flowmetrics.PathPoint, s pathSeries, l []string, k aheadKey) {
		valueIn(pm.shown, s, p.Kind, l).add(p, pm.bounds)
		pm.ahead[k]++
	})
}

// each calls fn, under pm's lock, for every point of a kind Prometheus
// shows, with its series, labels and the key that matches a point shown
// ahead to its delivery.
func (pm *pathMetrics) each(points []flowmetrics.PathPoint, fn func(p flowmetrics.PathPoint, s pathSeries, l []string, k aheadKey)) {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	for _, p := range points {
		if _, ok := pathKinds[p.Kind]; !ok {
			continue
		}
		s, l := seriesOf(p)
		fn(p, s, l, aheadKey{s, p.Seconds, p.Conversation, p.Time.UnixNano()})
	}
}

// Describe implements prometheus.Collector.
func (pm *pathMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range pm.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector: counters carry the latest
// conversation id as an OpenMetrics exemplar.
func (pm *pathMetrics) Collect(ch chan<- prometheus.Metric) {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	for _, v := range pm.shown {
		desc := pm.descs[v.Kind]
		if v.Kind.IsDuration() {
			cum := map[float64]uint64{}
			var n uint64
			for i, b := range pm.bounds {
				if i < len(v.Buckets) {
					n += v.Buckets[i]
				}
				cum[b] = n
			}
			ch <- prometheus.MustNewConstHistogram(desc, v.Count, v.Sum, cum, v.Labels...)
			continue
		}
		m := prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(v.Count), v.Labels...)
		if v.Conv != "" {
			if e, err := prometheus.NewMetricWithExemplars(m, prometheus.Exemplar{Value: 1, Labels: prometheus.Labels{"conversation_id": exemplarID(v.Conv)}, Timestamp: v.ConvAt}); err == nil {
				m = e
			}
		}
		ch <- m
	}
}

// exemplarID keeps a conversation id within OpenMetrics' 128 runes of
// exemplar labels.
func exemplarID(id string) string {
	const max = 100
	if len(id) <= max {
		return id
	}
	return id[:max]
}

// pathStateKey is "p/" and the first 16 bytes of the SHA-256 of the
// series, in hex.
func pathStateKey(s pathSeries) string {
	h := sha256.Sum256([]byte{byte(s.kind)})
	h = sha256.Sum256(append(h[:], s.labels...))
	return "p/" + hex.EncodeToString(h[:16])
}

// restore loads one state key; false when it is not a valid path series.
func (pm *pathMetrics) restore(key string, b []byte) bool {
	var v pathValue
	if err := json.Unmarshal(b, &v); err != nil {
		return false
	}
	d, ok := pathKinds[v.Kind]
	if !ok || len(v.Labels) != len(d.labels) || (v.Kind.IsDuration() && len(v.Buckets) != len(pm.bounds)+1) {
		return false
	}
	s := pathSeries{v.Kind, strings.Join(v.Labels, "\x00")}
	if pathStateKey(s) != key {
		return false
	}
	pm.mu.Lock()
	defer pm.mu.Unlock()
	dv := v
	dv.Buckets = slices.Clone(v.Buckets)
	pm.delivered[s] = &dv
	sv := valueIn(pm.shown, s, v.Kind, v.Labels)
	sv.Count += v.Count
	sv.Sum += v.Sum
	if v.Kind.IsDuration() {
		if len(sv.Buckets) != len(v.Buckets) {
			sv.Buckets = make([]uint64, len(v.Buckets))
		}
		for i, n := range v.Buckets {
			sv.Buckets[i] += n
		}
	}
	if v.ConvAt.After(sv.ConvAt) {
		sv.Conv, sv.ConvAt = v.Conv, v.ConvAt
	}
	return true
}

// take returns the state of the series changed since the last call.
func (pm *pathMetrics) take(u flowmetrics.StateUpdate) {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	for s := range pm.dirty {
		b, _ := json.Marshal(pm.delivered[s])
		u[pathStateKey(s)] = b
	}
	clear(pm.dirty)
}

func (pm *pathMetrics) changed() bool {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	return len(pm.dirty) > 0
}

// SendPaths implements flowmetrics.PathSink; it never fails.
func (s *Sink) SendPaths(ctx context.Context, points []flowmetrics.PathPoint) error {
	s.paths.deliver(points)
	return nil
}
