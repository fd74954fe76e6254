package otlp

import (
	"context"
	"errors"
	"hash/fnv"
	"math"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
)

// The metrics of path points. Through the collector's Prometheus
// translation (unit suffixes on, the default) they become the Prometheus
// sink's names: genesys_flow_exit_total, genesys_flow_step_seconds (and
// _bucket, _sum, _count), genesys_flow_timing_seconds,
// genesys_flow_funnel_total, genesys_flow_experiment_total.
const (
	ExitName       = naming.PathExit
	StepName       = naming.PathStep
	TimingName     = naming.PathTiming
	FunnelName     = naming.PathFunnel
	ExperimentName = naming.PathExperiment
	// PathUnit is the sums' unit: an annotation, so Prometheus-style
	// backends add only _total.
	PathUnit = "{conversation}"
	// SecondsUnit is the histograms' unit (UCUM), translated to
	// _seconds.
	SecondsUnit = "s"
)

// ReasonLatePath: path points whose window was already sent, counted in
// their stream's next window. Paths close a grace period (or an idle
// timeout) after their last attribute, so most are: a path point is
// usually counted in the window of its close.
const ReasonLatePath = "late_path"

// pathWidth is the width of the path streams' windows.
const pathWidth = 10 * time.Second

// pathMetric is how each kind of path point is sent: its metric, whether
// it is a histogram, its attribute keys and its description.
var pathMetrics = map[flowmetrics.PathKind]struct {
	name  string
	hist  bool
	keys  []string
	descr string
}{
	flowmetrics.PathExit:       {ExitName, false, []string{"flow", "metric"}, "Conversations whose last metric in the flow was this one: where conversations left each flow. Once per conversation and flow, when its path closes."},
	flowmetrics.PathStep:       {StepName, true, []string{"flow", "metric"}, "Seconds from a flow's first metric to this metric's first occurrence in the conversation, once per closed conversation path."},
	flowmetrics.PathTiming:     {TimingName, true, []string{"timing"}, "Seconds from a configured timing's from step to its to step, once per closed conversation path."},
	flowmetrics.PathFunnel:     {FunnelName, false, []string{"funnel", "step"}, "Conversations that reached this step of a configured funnel after the steps before it."},
	flowmetrics.PathExperiment: {ExperimentName, false, []string{"experiment", "variant", "step"}, "Conversations that reached this step of an experiment variant after the steps before it."},
}

// pathAttrs are p's attributes as key and value pairs.
func pathAttrs(p flowmetrics.PathPoint) []string {
	switch p.Kind {
	case flowmetrics.PathExit, flowmetrics.PathStep:
		return []string{"flow", p.Flow, "metric", p.Metric}
	case flowmetrics.PathTiming:
		return []string{"timing", p.Name}
	case flowmetrics.PathFunnel:
		return []string{"funnel", p.Name, "step", p.Step}
	case flowmetrics.PathExperiment:
		return []string{"experiment", p.Name, "variant", p.Variant, "step", p.Step}
	}
	return nil
}

// SendPaths implements flowmetrics.PathSink. Exits, funnels and
// experiments are counted into monotonic sums, step timings and timings
// into explicit-bucket histograms, each stream's windows sent once, in
// order, never overlapping, like the counts' (see Send). A window Send
// closed in the same batch is not sent here: its closing is committed
// first.
func (s *Sink) SendPaths(ctx context.Context, points []flowmetrics.PathPoint) error {
	if s.closed {
		if len(points) == 0 {
			return nil
		}
		return errors.New("otlp: sink closed")
	}
	now := s.now()
	if len(points) > 0 {
		fp := pathFingerprint(points)
		if !s.pathsMerged || fp != s.pathsFP {
			s.mergePaths(points, now)
		}
		s.pathsMerged, s.pathsFP = true, fp
	}
	if !s.restored || !s.frozen {
		if err := s.flush(ctx); err != nil {
			return err
		}
	}
	s.closeDue(now)
	s.pathsMerged = false
	return nil
}

// mergePaths counts path points into their streams' open windows.
func (s *Sink) mergePaths(points []flowmetrics.PathPoint, now time.Time) {
	var a adjust
	for _, p := range points {
		pm, ok := pathMetrics[p.Kind]
		if !ok {
			s.m.PointsAdjusted.WithLabelValues(Name, "unknown_path_kind").Inc()
			continue
		}
		var ns int64
		if pm.hist {
			if math.IsNaN(p.Seconds) || math.IsInf(p.Seconds, 0) || p.Seconds < 0 || p.Seconds > 1e9 {
				s.m.PointsAdjusted.WithLabelValues(Name, "bad_duration").Inc()
				continue
			}
			ns = int64(math.Round(p.Seconds * 1e9))
		}
		attrs := pathAttrs(p)
		if identityLen(append([]string{pm.name}, attrs...)...) > maxIdentity {
			s.m.OutboxDropped.WithLabelValues(Name, "name_too_long").Inc()
			s.log.Error("path point names too long for a stream; dropped", "kind", p.Kind.String())
			continue
		}
		s.ws.addPath(pm.name, p.Kind.String(), attrs, pm.hist, p.Time, pathWidth, ns, now, &a)
	}
	s.adjusted(a, ReasonLatePath)
}

// pathFingerprint identifies a batch of path points, to recognise the
// pipeline sending again one already counted.
func pathFingerprint(points []flowmetrics.PathPoint) uint64 {
	h := fnv.New64a()
	var b [8]byte
	put := func(v uint64) {
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		h.Write(b[:])
	}
	for _, p := range points {
		h.Write([]byte{byte(p.Kind)})
		for _, s := range []string{p.Flow, p.Metric, p.Name, p.Variant, p.Step, p.Conversation} {
			h.Write([]byte(s))
			h.Write([]byte{0})
		}
		put(math.Float64bits(p.Seconds))
		put(uint64(p.Time.UnixNano()))
	}
	put(uint64(len(points)))
	return h.Sum64()
}

var _ flowmetrics.PathSink = (*Sink)(nil)

// pathKind is the kind a stream's Kind names.
func pathKind(name string) flowmetrics.PathKind {
	for k := range pathMetrics {
		if k.String() == name {
			return k
		}
	}
	return 0
}
