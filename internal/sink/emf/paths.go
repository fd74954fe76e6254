package emf

import (
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
)

// MaxValuesPerMetric is the EMF limit on the values of one metric in one
// line: a target member may be an array of at most 100 numbers.
const MaxValuesPerMetric = 100

// The CloudWatch metrics of path points. Their names do not follow
// naming.template: one metric per kind, told apart by dimensions.
const (
	ExitName       = naming.PathExit
	StepName       = naming.PathStep
	TimingName     = naming.PathTiming
	FunnelName     = naming.PathFunnel
	ExperimentName = naming.PathExperiment
)

// pathDimensions are the dimension names the points use; static tags may
// not take them.
var pathDimensions = []string{"flow", "metric", "timing", "funnel", "experiment", "variant", "step"}

// PathLines renders path points as EMF lines. Exits, funnels and
// experiments are counts (unit Count) summed per dimensions and time;
// step timings and timings are durations (unit Seconds) written as an
// array of every value observed, so CloudWatch's percentiles see each one:
// at most 100 values a metric and a line (the EMF limit), more values of
// one series go to further lines. Each point is stamped at its time
// truncated to the storage resolution (the minute, or the second), the
// period CloudWatch stores. Path metrics keep their dimensions with
// omit_flow_dimensions, since their name does not say which flow.
func (s *Sink) PathLines(points []flowmetrics.PathPoint) []byte {
	res := time.Duration(s.cfg.StorageResolution) * time.Second
	byKey := map[string]*series{}
	var all []*series
	for _, p := range points {
		name, unit, keys, vals := ExitName, "Count", []string{"flow", "metric"}, []string{p.Flow, p.Metric}
		switch p.Kind {
		case flowmetrics.PathExit:
		case flowmetrics.PathStep:
			name, unit = StepName, "Seconds"
		case flowmetrics.PathTiming:
			name, unit, keys, vals = TimingName, "Seconds", []string{"timing"}, []string{p.Name}
		case flowmetrics.PathFunnel:
			name, keys, vals = FunnelName, []string{"funnel", "step"}, []string{p.Name, p.Step}
		case flowmetrics.PathExperiment:
			name, keys, vals = ExperimentName, []string{"experiment", "variant", "step"}, []string{p.Name, p.Variant, p.Step}
		default:
			s.m.PointsAdjusted.WithLabelValues(Name, "unknown_path_kind").Inc()
			continue
		}
		if p.Kind.IsDuration() && (math.IsNaN(p.Seconds) || math.IsInf(p.Seconds, 0) || p.Seconds < 0) {
			s.m.PointsAdjusted.WithLabelValues(Name, "bad_duration").Inc()
			continue
		}
		dims := make([]string, 0, len(vals)+len(s.static))
		for _, v := range vals {
			dims = append(dims, dimensionValue(v))
		}
		for _, t := range s.static {
			keys = append(keys[:len(keys):len(keys)], t.Key)
			dims = append(dims, t.Value)
		}
		b := p.Time.UTC().Truncate(res)
		k := strconv.FormatInt(b.UnixMilli(), 10) + "\x00" + name + "\x00" + strings.Join(dims, "\x00")
		se := byKey[k]
		if se == nil {
			se = &series{bucket: b, keys: keys, dims: dims, name: name, unit: unit}
			if p.Kind.IsDuration() {
				se.values = []float64{}
			}
			byKey[k] = se
			all = append(all, se)
		}
		se.count++
		if se.values != nil {
			se.values = append(se.values, p.Seconds)
		}
	}
	// A duration series of more than 100 values is cut into several,
	// each on a line of its own (render puts a name once a line).
	var out []*series
	for _, se := range all {
		if se.values == nil {
			out = append(out, se)
			continue
		}
		sort.Float64s(se.values)
		for len(se.values) > 0 {
			n := min(len(se.values), MaxValuesPerMetric)
			part := *se
			part.values, part.count = se.values[:n:n], int64(n)
			out = append(out, &part)
			se.values = se.values[n:]
		}
	}
	return s.render(out)
}

var _ flowmetrics.PathSink = (*Sink)(nil)
