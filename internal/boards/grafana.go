package boards

import (
	"fmt"
	"strings"

	"github.com/flowmetrics/flowmetrics/internal/sink/prometheus"
)

// GrafanaSchemaVersion is the dashboard JSON schema version the Grafana
// dashboard is written in (Grafana 10.4 and later read it; newer versions
// migrate it on load).
const GrafanaSchemaVersion = 39

type gfDashboard struct {
	UID           string        `json:"uid"`
	Title         string        `json:"title"`
	Description   string        `json:"description"`
	Tags          []string      `json:"tags"`
	Editable      bool          `json:"editable"`
	GraphTooltip  int           `json:"graphTooltip"`
	Time          gfTime        `json:"time"`
	Refresh       string        `json:"refresh"`
	SchemaVersion int           `json:"schemaVersion"`
	Version       int           `json:"version"`
	Timezone      string        `json:"timezone"`
	Templating    gfTemplating  `json:"templating"`
	Annotations   gfAnnotations `json:"annotations"`
	Links         []any         `json:"links"`
	Panels        []gfPanel     `json:"panels"`
}

type gfTime struct {
	From string `json:"from"`
	To   string `json:"to"`
}

type gfTemplating struct {
	List []gfVar `json:"list"`
}

type gfAnnotations struct {
	List []any `json:"list"`
}

type gfVar struct {
	Name       string         `json:"name"`
	Label      string         `json:"label"`
	Type       string         `json:"type"`
	Query      any            `json:"query"`
	Datasource *gfDatasource  `json:"datasource,omitempty"`
	Definition string         `json:"definition,omitempty"`
	Refresh    int            `json:"refresh"`
	IncludeAll bool           `json:"includeAll"`
	Multi      bool           `json:"multi"`
	AllValue   string         `json:"allValue,omitempty"`
	Current    map[string]any `json:"current"`
	Hide       int            `json:"hide"`
	Sort       int            `json:"sort,omitempty"`
}

type gfDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type gfGridPos struct {
	H int `json:"h"`
	W int `json:"w"`
	X int `json:"x"`
	Y int `json:"y"`
}

type gfPanel struct {
	ID          int    `json:"id"`
	Type        string `json:"type"`
	Title       string `json:"title"`
	Description string `json:"description,omitempty"`
	// Interval is the panel's minimum interval: the step, and
	// $__interval, are never shorter.
	Interval    string        `json:"interval,omitempty"`
	GridPos     gfGridPos     `json:"gridPos"`
	Datasource  *gfDatasource `json:"datasource"`
	Targets     []gfTarget    `json:"targets"`
	FieldConfig gfFieldConfig `json:"fieldConfig"`
	Options     any           `json:"options"`
}

type gfTarget struct {
	RefID        string        `json:"refId"`
	Datasource   *gfDatasource `json:"datasource"`
	Expr         string        `json:"expr"`
	LegendFormat string        `json:"legendFormat,omitempty"`
	Instant      bool          `json:"instant,omitempty"`
	Range        bool          `json:"range"`
	Format       string        `json:"format,omitempty"`
}

type gfFieldConfig struct {
	Defaults  map[string]any `json:"defaults"`
	Overrides []any          `json:"overrides"`
}

// grafanaExprs returns every PromQL expression of the Grafana dashboard,
// for tests that check them with promtool.
func grafanaExprs(dashboard []byte) []string {
	var out []string
	for _, line := range strings.Split(string(dashboard), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), `"expr": `); ok {
			out = append(out, strings.TrimSuffix(v, ","))
		}
	}
	return out
}

// growth is the PromQL for how much counter sel grew in the window of length
// w ending `ago` before the evaluation time (ago "" for now), summed by the
// labels in by: the difference of the counter's values, so that windows
// laid end to end add up to exactly the counter's growth, where increase()
// would extrapolate each window to its edges. A series that did not exist
// at the window's start counts from 0. (flowmetrics' counters never go
// down, not even across a restart, so no reset needs handling.)
func growth(by, sel, w, ago string) string {
	at, before := sel, sel+" offset "+w
	if ago != "" {
		at = sel + " offset " + ago
		before = sel + " offset " + addMinutes(ago, w)
	}
	return fmt.Sprintf("sum by (%s) (%s - (%s or %s * 0))", by, at, before, at)
}

// addMinutes adds two PromQL durations given in whole minutes ("5m").
func addMinutes(a, b string) string {
	var x, y int
	fmt.Sscanf(a, "%dm", &x)
	fmt.Sscanf(b, "%dm", &y)
	return fmt.Sprintf("%dm", x+y)
}

func (b *builder) grafanaDashboard() ([]byte, error) {
	ds := &gfDatasource{Type: "prometheus", UID: "${datasource}"}
	counter := b.o.PrometheusName + b.promSelector(`flow=~"$flow"`)
	malformed := `flowmetrics_malformed_attributes_total{flow=~"$flow"}`
	// Each point of a time series panel is the growth over the interval
	// that ends at it, and the interval is the step, so the points lie end
	// to end: the legend's sum is the count in the time range. At least a
	// minute; longer ranges get longer intervals, which the title names.
	const bucketsDesc = "Each point counts the interval that ends at it (at least 1 minute, longer for long ranges), so the legend's sum is the count in the time range."
	perInterval := func(p gfPanel) gfPanel {
		p.Interval = "1m"
		return p
	}
	id := 0
	panel := func(typ, title, desc string, pos gfGridPos, unit string, options any, custom map[string]any, targets ...gfTarget) gfPanel {
		id++
		for i := range targets {
			targets[i].RefID = string(rune('A' + i))
			targets[i].Datasource = ds
			targets[i].Range = !targets[i].Instant
		}
		defaults := map[string]any{"unit": unit}
		if custom != nil {
			defaults["custom"] = custom
		}
		return gfPanel{ID: id, Type: typ, Title: title, Description: desc, GridPos: pos, Datasource: ds, Targets: targets,
			FieldConfig: gfFieldConfig{Defaults: defaults, Overrides: []any{}}, Options: options}
	}
	stat := map[string]any{"reduceOptions": map[string]any{"calcs": []string{"lastNotNull"}, "fields": "", "values": false},
		"colorMode": "value", "graphMode": "none", "justifyMode": "auto", "textMode": "auto", "orientation": "auto"}
	series := func(calcs ...string) map[string]any {
		return map[string]any{
			"legend":  map[string]any{"showLegend": true, "displayMode": "table", "placement": "right", "calcs": calcs},
			"tooltip": map[string]any{"mode": "multi", "sort": "desc"},
		}
	}
	bars := map[string]any{"drawStyle": "bars", "fillOpacity": 80, "stacking": map[string]any{"mode": "normal", "group": "A"}, "lineWidth": 1}
	lines := map[string]any{"drawStyle": "line", "fillOpacity": 10, "lineWidth": 2, "showPoints": "never"}
	table := map[string]any{"showHeader": true, "sortBy": []map[string]any{{"displayName": "Value", "desc": true}}}

	d := gfDashboard{
		UID:   "flowmetrics",
		Title: b.o.Title,
		Description: "Occurrences of Genesys Cloud flow metrics, counted once per conversation by flowmetrics " +
			"(Prometheus counts them when they are delivered). Generated by flowmetrics boards.",
		Tags:     []string{"flowmetrics", "genesys"},
		Editable: true, GraphTooltip: 1,
		Time: gfTime{From: "now-1h", To: "now"}, Refresh: "10s",
		SchemaVersion: GrafanaSchemaVersion, Version: 1, Timezone: "browser",
		Templating: gfTemplating{List: []gfVar{
			{Name: "datasource", Label: "Prometheus", Type: "datasource", Query: "prometheus", Refresh: 1, Current: map[string]any{}},
			{Name: "flow", Label: "Flow", Type: "query", Datasource: ds,
				Definition: fmt.Sprintf("label_values(%s, flow)", b.o.PrometheusName),
				Query:      map[string]any{"query": fmt.Sprintf("label_values(%s, flow)", b.o.PrometheusName), "refId": "flow"},
				Refresh:    2, IncludeAll: true, Multi: true, AllValue: ".*", Sort: 1,
				Current: map[string]any{"selected": true, "text": []string{"All"}, "value": []string{"$__all"}}},
		}},
		Annotations: gfAnnotations{List: []any{}},
		Links:       []any{},
	}
	d.Panels = []gfPanel{
		panel("stat", "Occurrences in range", "Flow metric occurrences counted in the time range.", gfGridPos{4, 6, 0, 0}, "short", stat, nil,
			gfTarget{Expr: "sum(" + growth("flow, metric", counter, "$__range", "") + ")", Instant: true}),
		panel("stat", "Malformed names seen in range", "Sightings of metric-shaped attribute names that break the naming rules.", gfGridPos{4, 6, 6, 0}, "short", stat, nil,
			gfTarget{Expr: "sum(" + growth("flow", malformed, "$__range", "") + ")", Instant: true}),
		panel("stat", "Records rejected in range", "Input records flowmetrics could not read.", gfGridPos{4, 6, 12, 0}, "short", stat, nil,
			gfTarget{Expr: "sum(" + growth("reason", "flowmetrics_records_rejected_total", "$__range", "") + ")", Instant: true}),
		panel("stat", "Pending points", "Occurrences waiting for delivery, all sinks.", gfGridPos{4, 6, 18, 0}, "short", stat, nil,
			gfTarget{Expr: `sum(flowmetrics_outbox_depth)`, Instant: true}),
		perInterval(panel("timeseries", "Occurrences per $__interval by flow metric", bucketsDesc, gfGridPos{10, 24, 0, 4}, "short", series("sum", "max", "lastNotNull"), bars,
			gfTarget{Expr: growth("flow, metric", counter, "$__interval", ""), LegendFormat: "{{flow}} / {{metric}}"})),
		panel("table", "Flow metrics in range", "Each flow metric's count in the time range.", gfGridPos{10, 12, 0, 14}, "short", table, nil,
			gfTarget{Expr: "sort_desc(" + growth("flow, metric", counter, "$__range", "") + ")", Instant: true, Format: "table"}),
		perInterval(panel("timeseries", "Malformed attribute names by flow, per $__interval", "Sightings; the names themselves are on flowmetrics' dashboard at /. "+bucketsDesc, gfGridPos{10, 12, 12, 14}, "short", series("sum"), bars,
			gfTarget{Expr: growth("flow", malformed, "$__interval", ""), LegendFormat: "{{flow}}"})),
		perInterval(panel("timeseries", "Occurrences per $__interval by flow", bucketsDesc, gfGridPos{8, 12, 0, 24}, "short", series("sum", "mean", "max"), lines,
			gfTarget{Expr: growth("flow", counter, "$__interval", ""), LegendFormat: "{{flow}}"})),
		panel("timeseries", "Pending points per sink", "Occurrences in the outbox not yet delivered, per sink.", gfGridPos{8, 12, 12, 24}, "short", series("lastNotNull", "max"), lines,
			gfTarget{Expr: `sum by (sink) (flowmetrics_outbox_depth)`, LegendFormat: "{{sink}}"}),
	}
	// The conversation paths: each closed conversation counted once.
	exits := prometheus.ExitName + b.promSelector(`flow=~"$flow"`)
	exitsInRange := growth("flow, metric", exits, "$__range", "")
	quantile := func(q float64, name, by, sel string) string {
		return fmt.Sprintf("histogram_quantile(%g, sum by (%s, le) (rate(%s_bucket%s[$__rate_interval])))", q, by, name, sel)
	}
	stepSel, allSel := b.promSelector(`flow=~"$flow"`), b.promSelector()
	funnels := growth("funnel, step", prometheus.FunnelName+allSel, "$__range", "")
	variants := growth("experiment, variant, step", prometheus.ExperimentName+allSel, "$__range", "")
	pct := map[string]any{"showHeader": true, "sortBy": []map[string]any{{"displayName": "Value", "desc": true}}}
	percentiles := func(name, by, sel, legend string) []gfTarget {
		return []gfTarget{
			{Expr: quantile(0.5, name, by, sel), LegendFormat: legend + " p50"},
			{Expr: quantile(0.9, name, by, sel), LegendFormat: legend + " p90"},
		}
	}
	d.Panels = append(d.Panels,
		panel("table", "Where conversations left each flow: share of its exits in range",
			"Each flow's exits (its last metric in a conversation, once per closed conversation), as a share of the flow's exits in the time range.",
			gfGridPos{10, 12, 0, 32}, "percentunit", pct, nil,
			gfTarget{Expr: fmt.Sprintf("sort_desc(%s / ignoring (metric) group_left sum by (flow) (%s))", exitsInRange, exitsInRange), Instant: true, Format: "table"}),
		perInterval(panel("timeseries", "Exits per $__interval by flow metric", bucketsDesc, gfGridPos{10, 12, 12, 32}, "short", series("sum", "max"), bars,
			gfTarget{Expr: growth("flow, metric", exits, "$__interval", ""), LegendFormat: "{{flow}} / {{metric}}"})),
		panel("timeseries", "Step time p50 and p90 by flow metric",
			"Seconds from a flow's first metric to each later metric, once per closed conversation (a histogram: a percentile is as precise as its bucket).",
			gfGridPos{9, 12, 0, 42}, "s", series("lastNotNull", "max"), lines,
			percentiles(prometheus.StepName, "flow, metric", stepSel, "{{flow}} / {{metric}}")...),
		panel("timeseries", "Timings p50 and p90", "The configured timings (paths.timings), once per closed conversation.",
			gfGridPos{9, 12, 12, 42}, "s", series("lastNotNull", "max"), lines,
			percentiles(prometheus.TimingName, "timing", allSel, "{{timing}}")...),
		panel("table", "Funnels: conversion of each step in range",
			"Conversations that reached each step after the steps before it, over those that reached the funnel's first step, in the time range.",
			gfGridPos{10, 12, 0, 51}, "percentunit", pct, nil,
			gfTarget{Expr: fmt.Sprintf("%s / on (funnel) group_left max by (funnel) (%s)", funnels, funnels), Instant: true, Format: "table"}),
		panel("table", "Experiments: conversion per variant in range",
			"For each variant, the conversations that reached each step over those that reached the variant's first step, in the time range: compare the variants' last steps.",
			gfGridPos{10, 12, 12, 51}, "percentunit", pct, nil,
			gfTarget{Expr: fmt.Sprintf("%s / on (experiment, variant) group_left max by (experiment, variant) (%s)", variants, variants), Instant: true, Format: "table"}),
	)
	return marshal(d)
}

func (b *builder) prometheusRules() ([]byte, error) {
	spikeSel := b.promSelector()
	what := "every flow metric"
	if s := b.o.Spike; s != nil {
		spikeSel = b.promSelector("flow="+promQuote(s.Flow), "metric="+promQuote(s.Metric))
		what = commentText(s.Flow + "/" + s.Metric)
	}
	c := b.o.PrometheusName
	w := fmt.Sprintf("%dm", SpikeWindow)
	now := growth("flow, metric", c+spikeSel, w, "")
	before := growth("flow, metric", c+spikeSel, w, w)
	exitSel := prometheus.ExitName + b.promSelector()
	ew := fmt.Sprintf("%dm", ExitWindow)
	exitNow := growth("flow, metric", exitSel, ew, "")
	exitBefore := growth("flow, metric", exitSel, ew, "1440m")
	share := func(exits string) string {
		return fmt.Sprintf("(%s / ignoring (metric) group_left sum by (flow) (%s))", exits, exits)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `# Prometheus alerting rules for flowmetrics' counters (scraped from serve's
# /metrics). Generated by flowmetrics boards; check with
# promtool check rules %s
# The Datadog monitors of the same boards apply the same rules.
groups:
  - name: flowmetrics
    rules:
      # An incident spike on %s: the last %d minutes counted more than %d
      # times the %d minutes before (not 0) and at least %d.
      - alert: GenesysFlowMetricSpike
        expr: |
          %s
            > %d * %s
          and
          %s > 0
          and
          %s >= %d
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.flow }}/{{ $labels.metric }} spiked"
          description: "{{ $labels.flow }}/{{ $labels.metric }} counted more than %d times as many in the last %d minutes as in the %d before, and at least %d: an incident is likely affecting callers."
      # A flow gone silent: its counter exists but has not grown for %d minutes.
      - alert: GenesysFlowSilent
        expr: |
          %s == 0
        labels:
          severity: warning
        annotations:
          summary: "Flow {{ $labels.flow }} has counted nothing for %d minutes"
          description: "The flow, its EventBridge integration or flowmetrics may be down (quiet hours at night are normal: silence the alert then)."
      # Malformed names appearing: a flow writes metric-shaped attribute names
      # that break the rules (flowmetrics does not count them).
      - alert: GenesysFlowMalformedNames
        expr: |
          %s > 0
        labels:
          severity: warning
        annotations:
          summary: "Flow {{ $labels.flow }} writes malformed metric attribute names"
          description: "Seen in the last %d minutes; the names and what is wrong with them are on flowmetrics' dashboard at /."
      # A slow step (conversation paths): over the last %d minutes, the 90th
      # percentile of the seconds from a flow's first metric to this metric
      # is above %g, with at least %d conversations.
      - alert: GenesysFlowStepSlow
        expr: |
          histogram_quantile(0.9, sum by (flow, metric, le) (rate(%s_bucket%s[%dm]))) > %g
          and
          %s >= %d
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.flow }}/{{ $labels.metric }} is slow to reach"
          description: "In the last %d minutes 90%% of the conversations took more than %g s from the flow's first metric to {{ $labels.metric }}: callers wait at that step."
      # An exit's share jumping (conversation paths): the share of a flow's
      # exits at this metric in the last %d minutes is more than %g above
      # its share in the same hour a day before, with at least %d exits
      # from the flow in both.
      - alert: GenesysFlowExitShareJump
        expr: |
          %s
            - (%s or %s * 0)
            > %g
          and on (flow)
          sum by (flow) (%s) >= %d
          and on (flow)
          sum by (flow) (%s) >= %d
        labels:
          severity: warning
        annotations:
          summary: "More conversations leave {{ $labels.flow }} at {{ $labels.metric }}"
          description: "This exit's share of the flow's exits in the last %d minutes is more than %g above its share in the same hour yesterday: a menu, a queue or a data dip may be sending callers away."
`, PrometheusRules, what, SpikeWindow, SpikeFactor, SpikeWindow, SpikeMin,
		now, SpikeFactor, before, before, now, SpikeMin, SpikeFactor, SpikeWindow, SpikeWindow, SpikeMin,
		SilentMinutes, growth("flow", c+b.promSelector(), fmt.Sprintf("%dm", SilentMinutes), ""), SilentMinutes,
		growth("flow", "flowmetrics_malformed_attributes_total", fmt.Sprintf("%dm", MalformedMinutes), ""), MalformedMinutes,
		StepWindow, b.o.StepP90, StepMin,
		prometheus.StepName, b.promSelector(), StepWindow, b.o.StepP90,
		growth("flow, metric", prometheus.StepName+"_count"+b.promSelector(), fmt.Sprintf("%dm", StepWindow), ""), StepMin,
		StepWindow, b.o.StepP90,
		ExitWindow, ExitShareJump, ExitMin,
		share(exitNow), share(exitBefore), share(exitNow), ExitShareJump,
		exitNow, ExitMin, exitBefore, ExitMin,
		ExitWindow, ExitShareJump)
	return []byte(sb.String()), nil
}
