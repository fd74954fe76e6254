// Package boards writes ready-made dashboards and alerts for the platforms
// teams already use, from the same naming config as the sinks, so a name
// template or static tags carry through:
//
//   - Datadog: a dashboard (API v1 JSON, POST /api/v1/dashboard), three
//     monitors (POST /api/v1/monitor each) and the Agent's OpenMetrics check
//     config that brings flowmetrics' own malformed-names counter in;
//   - Grafana: a dashboard on a Prometheus data source, and Prometheus
//     alerting rules for the same three alerts.
//
// The alerts: an incident spike on a flow metric (its count in the last 5
// minutes far above its usual), a flow gone silent (nothing counted for 30
// minutes), malformed attribute names appearing in a flow, and, from the
// conversation paths, a slow step (its 90th percentile above a threshold)
// and an exit whose share of its flow's exits jumped against the same hour
// the day before.
//
// The boards also show the paths: where conversations left each flow, the
// step timings' percentiles, the timings, and the funnels' and
// experiments' conversion.
package boards

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/prometheus"
)

// FlowMetric names one flow metric.
type FlowMetric struct{ Flow, Metric string }

// ParseFlowMetric reads "Flow/Metric" (the flow may not contain "/"; the
// metric may).
func ParseFlowMetric(s string) (FlowMetric, error) {
	flow, metric, ok := strings.Cut(s, "/")
	if !ok || flow == "" || metric == "" {
		return FlowMetric{}, fmt.Errorf("%q: want FLOW/METRIC", s)
	}
	return FlowMetric{flow, metric}, nil
}

// Options say what the boards are for.
type Options struct {
	// Naming is the config's naming section.
	Naming naming.Config
	// PrometheusName is the counter's name (sinks.prometheus.name; default
	// genesys_flow_metric_total).
	PrometheusName string
	// Metrics lists the flow metrics. With a naming template that puts
	// {flow} or {metric} in the name, Datadog has one metric name per flow
	// metric and no query can match them all, so the Datadog board and
	// monitors need the list; otherwise it may be empty.
	Metrics []FlowMetric
	// Spike, if set, is the flow metric the spike alert watches (say
	// Billing Main/PaymentFailed); by default it watches every flow metric,
	// one alert per flow metric.
	Spike *FlowMetric
	// Title of the dashboards (default "Genesys flow metrics").
	Title string
	// DatadogMode is the Datadog sink's mode (sinks.datadog.mode): in
	// distribution mode the path counts (exits, funnels, experiments)
	// are distributions of 1s, counted with count: rather than
	// sum:…as_count().
	DatadogMode datadog.Mode
	// StepP90 is the slow-step alert's threshold in seconds (default
	// StepP90Seconds).
	StepP90 float64
}

// File is one generated file.
type File struct {
	Name string
	Data []byte
}

// The generated files.
const (
	DatadogDashboard   = "datadog-dashboard.json"
	DatadogMonitors    = "datadog-monitors.json"
	DatadogOpenMetrics = "datadog-openmetrics.yaml"
	GrafanaDashboard   = "grafana-dashboard.json"
	PrometheusRules    = "prometheus-rules.yml"
)

// The alert thresholds, shared by both platforms: the Datadog monitors and
// the Prometheus rules apply the same rule with the same numbers.
const (
	// SpikeFactor, SpikeWindow, SpikeMin: a flow metric spikes when its
	// count in the last SpikeWindow minutes is more than SpikeFactor times
	// its count in the SpikeWindow minutes before (which must not be 0: a
	// flow metric new in the window has no usual to compare with; Datadog's
	// change monitor cannot divide by it either) and at least SpikeMin, so
	// that the chance ups and downs of a small flow metric do not alert.
	SpikeFactor = 3
	SpikeWindow = 5
	SpikeMin    = 40
	// SilentMinutes: a flow with nothing counted for this long is silent.
	SilentMinutes = 30
	// MalformedMinutes: malformed names seen within this window alert.
	MalformedMinutes = 10
	// StepP90Seconds, StepWindow, StepMin: a step of a flow is slow when
	// the 90th percentile of its time (from the flow's first metric) over
	// the last StepWindow minutes is above the threshold (StepP90Seconds
	// unless Options.StepP90 says otherwise) and at least StepMin
	// conversations reached it then, so one long call does not alert.
	StepP90Seconds = 300
	StepWindow     = 30
	StepMin        = 10
	// ExitWindow, ExitShareJump, ExitMin: where conversations leave a
	// flow changed when an exit's share of the flow's exits in the last
	// ExitWindow minutes is more than ExitShareJump above its share in the
	// same window a day before (same hour: calls have a daily rhythm), and
	// the flow had at least ExitMin exits in both. An exit that did not
	// exist a day before counts from a share of 0. In Datadog, whose
	// monitors cannot divide by a total grouped differently, the monitor
	// watches the exit's count instead: more than ExitCountFactor times
	// the same hour a day before, and at least ExitMin.
	ExitWindow      = 60
	ExitShareJump   = 0.2
	ExitMin         = 20
	ExitCountFactor = 2
)

// MalformedMetric is the Datadog name of flowmetrics_malformed_attributes_total
// as the Agent's OpenMetrics check (latest version) submits it with the
// config in DatadogOpenMetrics: namespace "flowmetrics", the counter renamed
// to malformed_attributes, and counters sent as monotonic counts with a
// ".count" suffix.
const MalformedMetric = "flowmetrics.malformed_attributes.count"

// Generate returns the files, in the order of the constants above.
func Generate(o Options) ([]File, error) {
	if err := o.Naming.Validate(); err != nil {
		return nil, fmt.Errorf("naming.%w", err) // named as in the config file
	}
	if o.PrometheusName == "" {
		o.PrometheusName = prometheus.DefaultName
	}
	if err := (prometheus.Config{Name: o.PrometheusName}).Validate(); err != nil {
		return nil, fmt.Errorf("sinks.prometheus.%w", err)
	}
	if o.Title == "" {
		o.Title = "Genesys flow metrics"
	}
	if o.StepP90 == 0 {
		o.StepP90 = StepP90Seconds
	}
	if o.StepP90 < 0 || o.StepP90 != o.StepP90 {
		return nil, fmt.Errorf("step p90 threshold %v: want a positive number of seconds", o.StepP90)
	}
	if o.DatadogMode != "" {
		if err := o.DatadogMode.Validate(); err != nil {
			return nil, err
		}
	}
	b := &builder{o: o, namer: naming.New(o.Naming)}
	if err := b.datadogNames(); err != nil {
		return nil, err
	}
	var files []File
	for _, f := range []struct {
		name string
		gen  func() ([]byte, error)
	}{
		{DatadogDashboard, b.datadogDashboard},
		{DatadogMonitors, b.datadogMonitors},
		{DatadogOpenMetrics, b.datadogOpenMetrics},
		{GrafanaDashboard, b.grafanaDashboard},
		{PrometheusRules, b.prometheusRules},
	} {
		data, err := f.gen()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
		files = append(files, File{f.name, data})
	}
	return files, nil
}

type builder struct {
	o     Options
	namer *naming.Namer
	// ddNames are the Datadog metric names, sorted; ddPairs the flow metrics
	// of each (nil when one name holds every flow metric).
	ddNames []string
	ddPairs map[string][]FlowMetric
}

// perFlowMetric reports whether the name template gives flow metrics names
// of their own.
func (b *builder) perFlowMetric() bool {
	t := b.o.Naming.Template
	return t != "" && (strings.Contains(t, "{flow}") || strings.Contains(t, "{metric}"))
}

func (b *builder) datadogNames() error {
	if !b.perFlowMetric() {
		b.ddNames = []string{datadog.MetricName(b.namer.Name("", ""))}
		return nil
	}
	metrics := b.o.Metrics
	if b.o.Spike != nil && !slices.Contains(metrics, *b.o.Spike) {
		metrics = append(slices.Clone(metrics), *b.o.Spike)
	}
	if len(metrics) == 0 {
		return errors.New("naming.template gives each flow metric its own Datadog metric name: list the flow metrics the boards should show (FLOW/METRIC)")
	}
	b.ddPairs = map[string][]FlowMetric{}
	for _, fm := range metrics {
		n := datadog.MetricName(b.namer.Name(fm.Flow, fm.Metric))
		b.ddPairs[n] = append(b.ddPairs[n], fm)
	}
	for n := range b.ddPairs {
		b.ddNames = append(b.ddNames, n)
	}
	sort.Strings(b.ddNames)
	return nil
}

// ddScope is the Datadog tag scope of the static tags, plus extra tags.
func (b *builder) ddScope(extra ...string) string {
	var tags []string
	for _, t := range b.namer.Static() {
		if s := datadog.Tag(t.Key, t.Value); s != "" {
			tags = append(tags, s)
		}
	}
	tags = append(tags, extra...)
	if len(tags) == 0 {
		return "{*}"
	}
	return "{" + strings.Join(tags, ",") + "}"
}

// promSelector is the Prometheus label matcher of the static labels, plus
// extra matchers.
func (b *builder) promSelector(extra ...string) string {
	var m []string
	for _, t := range b.namer.Static() {
		m = append(m, fmt.Sprintf("%s=%s", prometheus.LabelName(t.Key), promQuote(t.Value)))
	}
	m = append(m, extra...)
	if len(m) == 0 {
		return ""
	}
	return "{" + strings.Join(m, ", ") + "}"
}

// promQuote is s as a PromQL string literal, which follows Go's escaping:
// every control character, line or paragraph separator and invisible
// format character is escaped, so operator text cannot end the line of a
// YAML block scalar it sits in.
func promQuote(s string) string { return strconv.Quote(s) }

// commentText is operator text made safe for a YAML comment (or a line of
// any generated file): escaped as in a Go string, without the quotes, so
// no line break (\n, \r, U+0085, U+2028, U+2029) or other control or
// invisible character can end the comment and start YAML of its own.
func commentText(s string) string {
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}

// marshal renders v as indented JSON with a final newline, without
// escaping <, > and & (queries use them).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
