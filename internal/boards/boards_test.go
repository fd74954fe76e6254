package boards

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/flowmetrics/flowmetrics/internal/naming"
)

// examples are the option sets the tests check: the default naming, and a
// name template with static tags.
var examples = map[string]Options{
	"default": {},
	"template": {
		Naming: naming.Config{Template: "genesys.{flow}.{metric}", Tags: map[string]string{"env": "prod", "team": "cx"}},
		Metrics: []FlowMetric{{"Billing Main", "PaymentFailed"}, {"Billing Main", "PaymentTaken"},
			{"CustomerRouting", "Transferred"}, {"Après Vente", "SurveyDone"}},
		Spike: &FlowMetric{"Billing Main", "PaymentFailed"},
	},
}

func generate(t *testing.T, o Options) map[string][]byte {
	t.Helper()
	files, err := Generate(o)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		out[f.Name] = f.Data
	}
	for _, name := range []string{DatadogDashboard, DatadogMonitors, DatadogOpenMetrics, GrafanaDashboard, PrometheusRules} {
		if len(out[name]) == 0 {
			t.Fatalf("no %s", name)
		}
	}
	return out
}

func TestParseFlowMetric(t *testing.T) {
	tests := []struct {
		in      string
		want    FlowMetric
		wantErr bool
	}{
		{"Billing Main/PaymentFailed", FlowMetric{"Billing Main", "PaymentFailed"}, false},
		{"Bot/Intent/Matched", FlowMetric{"Bot", "Intent/Matched"}, false},
		{"NoSlash", FlowMetric{}, true},
		{"/Metric", FlowMetric{}, true},
		{"Flow/", FlowMetric{}, true},
	}
	for _, tt := range tests {
		got, err := ParseFlowMetric(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("ParseFlowMetric(%q): got %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestNamingCarriesThrough(t *testing.T) {
	def := generate(t, examples["default"])
	tpl := generate(t, examples["template"])
	tests := []struct {
		name, file string
		files      map[string][]byte
		want, not  []string
	}{
		{"default Datadog board", DatadogDashboard, def, []string{`"sum:genesys.flow.metric{$flow} by {flow,metric}.as_count()"`, MalformedMetric}, []string{"env:"}},
		{"default monitors", DatadogMonitors, def, []string{"genesys.flow.metric{*} by {flow,metric}", "genesys.flow.metric{*} by {flow}", MalformedMetric + "{*} by {flow}"}, nil},
		{"default rules", PrometheusRules, def, []string{"(genesys_flow_metric_total - (genesys_flow_metric_total offset 5m or genesys_flow_metric_total * 0))", "(genesys_flow_metric_total offset 5m - (genesys_flow_metric_total offset 10m or", "genesys_flow_metric_total offset 30m", ">= 40"}, []string{"env="}},
		{"template Datadog board", DatadogDashboard, tpl, []string{
			"sum:genesys.Billing_Main.PaymentFailed{env:prod,team:cx,$flow} by {flow,metric}.as_count()",
			"sum:genesys.Apres_Vente.SurveyDone{", "sum:genesys.CustomerRouting.Transferred{",
			MalformedMetric + "{env:prod,team:cx,$flow}"}, []string{"genesys.flow.metric"}},
		{"template monitors", DatadogMonitors, tpl, []string{
			"pct_change(sum(last_5m),last_5m):sum:genesys.Billing_Main.PaymentFailed{env:prod,team:cx,flow:billing_main,metric:paymentfailed} by {flow,metric}.as_count() > 200",
			"sum(last_5m):sum:genesys.Billing_Main.PaymentFailed{env:prod,team:cx,flow:billing_main,metric:paymentfailed} by {flow,metric}.as_count() >= 40",
			`"query": "MONITOR_0 && MONITOR_1"`,
			`"env:prod"`, `"team:cx"`, "Genesys flow gone silent (genesys.Billing_Main.PaymentTaken)"}, []string{"genesys.flow.metric"}},
		{"template OpenMetrics tags", DatadogOpenMetrics, tpl, []string{`- "env:prod"`, `- "team:cx"`}, nil},
		// Prometheus has one counter whatever the template; the static tags
		// are its constant labels.
		{"template rules", PrometheusRules, tpl, []string{
			`genesys_flow_metric_total{env="prod", team="cx", flow="Billing Main", metric="PaymentFailed"} offset 5m`,
			`genesys_flow_metric_total{env="prod", team="cx"} offset 30m`}, nil},
		{"template Grafana", GrafanaDashboard, tpl, []string{`genesys_flow_metric_total{env=\"prod\", team=\"cx\", flow=~\"$flow\"}`}, nil},
	}
	for _, tt := range tests {
		got := string(tt.files[tt.file])
		for _, w := range tt.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %s lacks %s:\n%s", tt.name, tt.file, w, got)
			}
		}
		for _, n := range tt.not {
			if strings.Contains(got, n) {
				t.Errorf("%s: %s has %s", tt.name, tt.file, n)
			}
		}
	}
}

func TestBadOptions(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"template without flow metrics", Options{Naming: naming.Config{Template: "genesys.{flow}.{metric}"}}, "list the flow metrics"},
		{"bad template", Options{Naming: naming.Config{Template: "genesys.{team}"}}, "naming.template"},
		{"bad Prometheus name", Options{PrometheusName: "not-valid"}, "sinks.prometheus.name"},
	}
	for _, tt := range tests {
		_, err := Generate(tt.o)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error about %q", tt.name, err, tt.want)
		}
	}
}

// TestGrafanaDashboardStructure checks what Grafana needs to import and
// draw the dashboard: a schemaVersion, a title and uid, panels with unique
// ids, a known type, a gridPos inside the 24-column grid that overlaps no
// other panel, a datasource that the templating defines, and targets with
// refIds and expressions.
func TestGrafanaDashboardStructure(t *testing.T) {
	for name, o := range examples {
		var d struct {
			UID           string `json:"uid"`
			Title         string `json:"title"`
			SchemaVersion int    `json:"schemaVersion"`
			Time          struct{ From, To string }
			Templating    struct {
				List []struct {
					Name, Type string
					Query      any
				} `json:"list"`
			} `json:"templating"`
			Panels []struct {
				ID         int                         `json:"id"`
				Type       string                      `json:"type"`
				Title      string                      `json:"title"`
				GridPos    *struct{ H, W, X, Y int }   `json:"gridPos"`
				Datasource *struct{ Type, UID string } `json:"datasource"`
				Targets    []struct {
					RefID      string                      `json:"refId"`
					Expr       string                      `json:"expr"`
					Datasource *struct{ Type, UID string } `json:"datasource"`
				} `json:"targets"`
				FieldConfig *struct {
					Defaults  map[string]any `json:"defaults"`
					Overrides []any          `json:"overrides"`
				} `json:"fieldConfig"`
			} `json:"panels"`
		}
		data := generate(t, o)[GrafanaDashboard]
		dec := json.NewDecoder(strings.NewReader(string(data)))
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d.UID == "" || d.Title == "" || d.SchemaVersion < 36 || d.Time.From == "" {
			t.Errorf("%s: uid %q, title %q, schemaVersion %d, time %v: want all set (schemaVersion ≥ 36)", name, d.UID, d.Title, d.SchemaVersion, d.Time)
		}
		vars := map[string]string{}
		for _, v := range d.Templating.List {
			vars[v.Name] = v.Type
		}
		if vars["datasource"] != "datasource" || vars["flow"] != "query" {
			t.Errorf("%s: template variables %v, want datasource (datasource) and flow (query)", name, vars)
		}
		if len(d.Panels) < 5 {
			t.Errorf("%s: %d panels", name, len(d.Panels))
		}
		ids := map[int]bool{}
		cells := map[[2]int]int{}
		for _, p := range d.Panels {
			if p.ID <= 0 || ids[p.ID] {
				t.Errorf("%s: panel %q: id %d missing or repeated", name, p.Title, p.ID)
			}
			ids[p.ID] = true
			switch p.Type {
			case "timeseries", "stat", "table":
			default:
				t.Errorf("%s: panel %q: type %q", name, p.Title, p.Type)
			}
			if p.GridPos == nil || p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("%s: panel %q: gridPos %+v outside the 24-column grid", name, p.Title, p.GridPos)
				continue
			}
			for x := p.GridPos.X; x < p.GridPos.X+p.GridPos.W; x++ {
				for y := p.GridPos.Y; y < p.GridPos.Y+p.GridPos.H; y++ {
					if other, ok := cells[[2]int{x, y}]; ok {
						t.Fatalf("%s: panel %q overlaps panel %d at %d,%d", name, p.Title, other, x, y)
					}
					cells[[2]int{x, y}] = p.ID
				}
			}
			if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
				t.Errorf("%s: panel %q: datasource %+v, want the ${datasource} variable", name, p.Title, p.Datasource)
			}
			if p.FieldConfig == nil || p.FieldConfig.Defaults == nil || p.FieldConfig.Overrides == nil {
				t.Errorf("%s: panel %q: fieldConfig without defaults and overrides", name, p.Title)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q: no targets", name, p.Title)
			}
			for _, tg := range p.Targets {
				if tg.RefID == "" || tg.Expr == "" || tg.Datasource == nil || tg.Datasource.UID != "${datasource}" {
					t.Errorf("%s: panel %q: target %+v needs a refId, an expr and the datasource", name, p.Title, tg)
				}
			}
		}
	}
}

// promtool finds Debian's promtool (apt-get install prometheus), or skips.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not found; .ci/run installs Debian's prometheus package")
		}
		t.Skip("promtool not found (apt-get install prometheus); the rules are not checked")
	}
	return path
}

// TestPrometheusRulesWithPromtool: promtool accepts the alerting rules, and
// the default ones fire when and only when they should (testdata/rules_test.yml).
func TestPrometheusRulesWithPromtool(t *testing.T) {
	bin := promtool(t)
	for name, o := range examples {
		dir := t.TempDir()
		rules := filepath.Join(dir, PrometheusRules)
		if err := os.WriteFile(rules, generate(t, o)[PrometheusRules], 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "check", "rules", rules).CombinedOutput(); err != nil {
			t.Errorf("%s: promtool check rules: %v\n%s", name, err, out)
		}
		if name != "default" {
			continue
		}
		test, err := os.ReadFile("testdata/rules_test.yml")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "rules_test.yml"), test, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "test", "rules", filepath.Join(dir, "rules_test.yml")).CombinedOutput(); err != nil {
			t.Errorf("%s: promtool test rules: %v\n%s", name, err, out)
		}
	}
}

// TestGrafanaQueriesWithPromtool: every PromQL expression of the Grafana
// dashboard parses, checked by promtool as recording rules (with Grafana's
// variables replaced by what Grafana would put there).
func TestGrafanaQueriesWithPromtool(t *testing.T) {
	bin := promtool(t)
	for name, o := range examples {
		exprs := grafanaExprs(generate(t, o)[GrafanaDashboard])
		if len(exprs) < 5 {
			t.Fatalf("%s: found %d expressions", name, len(exprs))
		}
		var sb strings.Builder
		sb.WriteString("groups:\n  - name: grafana\n    rules:\n")
		vars := strings.NewReplacer("$__range", "1h", "$__rate_interval", "1m", "$__interval", "1m", "$flow", ".*")
		for i, e := range exprs {
			var expr string
			if err := json.Unmarshal([]byte(e), &expr); err != nil {
				t.Fatalf("%s: expr %s: %v", name, e, err)
			}
			q, _ := json.Marshal(vars.Replace(expr))
			fmt.Fprintf(&sb, "      - record: grafana:panel%d\n        expr: %s\n", i, q)
		}
		path := filepath.Join(t.TempDir(), "grafana-rules.yml")
		if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "check", "rules", path).CombinedOutput(); err != nil {
			t.Errorf("%s: promtool rejects a Grafana query: %v\n%s\n%s", name, err, out, sb.String())
		}
	}
}

// TestGrafanaLegendSumsEqualTheCounts: the per-interval panels' points, at
// the step Grafana gives them ($__interval), add up to exactly what the
// counter grew by, and the "in range" table says the same — checked by
// promtool on a counter scraped every 15 s that grows unevenly (where
// increase(…[1m]) at a 15 s step would count each occurrence four times,
// and extrapolates besides).
func TestGrafanaLegendSumsEqualTheCounts(t *testing.T) {
	bin := promtool(t)
	exprs := map[string]string{}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(generate(t, Options{})[GrafanaDashboard], &d); err != nil {
		t.Fatal(err)
	}
	for _, p := range d.Panels {
		exprs[p.Title] = p.Targets[0].Expr
	}
	perInterval, inRange := exprs["Occurrences per $__interval by flow metric"], exprs["Flow metrics in range"]
	if perInterval == "" || inRange == "" {
		t.Fatalf("panels not found: %v", exprs)
	}
	// 10 minutes of scrapes every 15 s.
	values := make([]int, 41)
	for i := 1; i < len(values); i++ {
		values[i] = values[i-1] + []int{0, 1, 0, 2, 0, 0, 3, 1, 5}[i%9]
	}
	at := func(minute int) int { return values[minute*4] }
	var series strings.Builder
	for _, v := range values {
		fmt.Fprintf(&series, "%d ", v)
	}
	vars := strings.NewReplacer("$__interval", "1m", "$__range", "10m", "$flow", ".*")
	q := func(e string) string { b, _ := json.Marshal(vars.Replace(e)); return string(b) }
	var sb strings.Builder
	fmt.Fprintf(&sb, "evaluation_interval: 1m\ntests:\n  - interval: 15s\n    input_series:\n      - series: 'genesys_flow_metric_total{flow=\"Billing Main\",metric=\"PaymentFailed\"}'\n        values: '%s'\n    promql_expr_test:\n", strings.TrimSpace(series.String()))
	sum := 0
	for m := 1; m <= 10; m++ {
		sum += at(m) - at(m-1)
		fmt.Fprintf(&sb, "      - expr: %s\n        eval_time: %dm\n        exp_samples:\n          - labels: '{flow=\"Billing Main\",metric=\"PaymentFailed\"}'\n            value: %d\n", q(perInterval), m, at(m)-at(m-1))
	}
	fmt.Fprintf(&sb, "      - expr: %s\n        eval_time: 10m\n        exp_samples:\n          - labels: '{flow=\"Billing Main\",metric=\"PaymentFailed\"}'\n            value: %d\n", q(inRange), at(10))
	if sum != at(10) || sum == 0 {
		t.Fatalf("the intervals add up to %d, the counter grew by %d", sum, at(10))
	}
	path := filepath.Join(t.TempDir(), "legend_test.yml")
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "test", "rules", path).CombinedOutput(); err != nil {
		t.Errorf("promtool: %v\n%s\n%s", err, out, sb.String())
	}
}

// Operator text (the -spike flow metric, static tag values) with line
// breaks and control characters cannot leave the YAML comment or string it
// is written into: the files parse to exactly the structure generated for
// plain text, nothing injected, and hold no line break but \n.
func TestOperatorTextStaysInComments(t *testing.T) {
	const inject = "\ninjected: true\n# "
	hostile := Options{
		Naming: naming.Config{Tags: map[string]string{"env": "prod" + inject + "\r\x00\x1b[31m"}},
		Spike: &FlowMetric{
			"Billing" + inject + "\r\ninjected2: true\u0085injected3: true\u2028injected4: true\u2029x\x7f\u202e",
			"Paid\n- alert: Injected\n",
		},
	}
	files := generate(t, hostile)
	for _, name := range []string{PrometheusRules, DatadogOpenMetrics} {
		data := files[name]
		for _, brk := range []string{"\r", "\u0085", "\u2028", "\u2029", "\x00", "\x1b", "\x7f"} {
			if strings.Contains(string(data), brk) {
				t.Errorf("%s: holds %q raw", name, brk)
			}
		}
		var doc any
		if err := yaml.Unmarshal(data, &doc); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, data)
		}
		b, _ := json.Marshal(doc)
		if strings.Contains(string(b), `"injected`) || strings.Contains(string(b), `"Injected"`) {
			t.Errorf("%s: operator text became YAML of its own: %s", name, b)
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	if err := yaml.Unmarshal(files[PrometheusRules], &rules); err != nil {
		t.Fatal(err)
	}
	if len(rules.Groups) != 1 || len(rules.Groups[0].Rules) != 5 {
		t.Fatalf("got %+v, want one group of the 5 alerts", rules)
	}
	if e := rules.Groups[0].Rules[0].Expr; !strings.Contains(e, `flow="Billing\ninjected: true\n# \r\ninjected2: true\u0085`) {
		t.Errorf("spike expression: got %s, want the flow as one escaped PromQL string", e)
	}
	t.Run("promtool", func(t *testing.T) {
		bin := promtool(t)
		path := filepath.Join(t.TempDir(), PrometheusRules)
		if err := os.WriteFile(path, files[PrometheusRules], 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "check", "rules", path).CombinedOutput(); err != nil {
			t.Errorf("promtool check rules: %v\n%s", err, out)
		}
	})
}

func TestCommentText(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"Billing Main/PaymentFailed", "Billing Main/PaymentFailed"},
		{"Après Vente/SurveyDone", "Après Vente/SurveyDone"},
		{"a\nb", `a\nb`},
		{"a\r\nb", `a\r\nb`},
		{"a\u0085b\u2028c\u2029d", `a\u0085b\u2028c\u2029d`},
		{"a\x00b\x1bc\x7fd", `a\x00b\x1bc\x7fd`},
		{"a\u202eb", `a\u202eb`},
		{"bad \xff byte", `bad \xff byte`},
	} {
		got := commentText(tt.in)
		if got != tt.want {
			t.Errorf("commentText(%q): got %s, want %s", tt.in, got, tt.want)
		}
		if strings.ContainsAny(got, "\n\r\u0085\u2028\u2029") {
			t.Errorf("commentText(%q) = %q holds a line break", tt.in, got)
		}
	}
}

// TestGrafanaPathPanelsWithPromtool: the paths panels say what their titles
// say, checked by promtool on synthetic counters over 10 minutes: each
// exit's share of its flow's exits, each funnel step's conversion from the
// funnel's first step, and each experiment step's conversion from its
// variant's first step.
func TestGrafanaPathPanelsWithPromtool(t *testing.T) {
	bin := promtool(t)
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(generate(t, Options{})[GrafanaDashboard], &d); err != nil {
		t.Fatal(err)
	}
	exprs := map[string]string{}
	for _, p := range d.Panels {
		exprs[p.Title] = p.Targets[0].Expr
	}
	type sample struct {
		labels string
		value  float64
	}
	checks := []struct {
		panel string
		want  []sample
	}{
		{"Where conversations left each flow: share of its exits in range", []sample{
			{`{flow="Main IVR",metric="Served"}`, 0.75}, {`{flow="Main IVR",metric="Abandoned"}`, 0.25}, {`{flow="Survey",metric="Done"}`, 1}}},
		{"Funnels: conversion of each step in range", []sample{
			{`{funnel="callback",step="Main IVR/Entered"}`, 1}, {`{funnel="callback",step="Callback/Offered"}`, 0.5}, {`{funnel="callback",step="Callback/Accepted"}`, 0.1}}},
		{"Experiments: conversion per variant in range", []sample{
			{`{experiment="offer",variant="A",step="Callback/OfferA"}`, 1}, {`{experiment="offer",variant="A",step="Callback/AcceptedA"}`, 0.2},
			{`{experiment="offer",variant="B",step="Callback/OfferB"}`, 1}, {`{experiment="offer",variant="B",step="Callback/AcceptedB"}`, 0.4}}},
	}
	var sb strings.Builder
	sb.WriteString("evaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n")
	// Per minute: 30 Served and 10 Abandoned exits, 5 Done; the funnel
	// 20, 10, 2; variant A 10 offered, 2 accepted; B 10 and 4.
	for _, s := range []struct {
		series string
		per    int
	}{
		{`genesys_flow_exit_total{flow="Main IVR",metric="Served"}`, 30},
		{`genesys_flow_exit_total{flow="Main IVR",metric="Abandoned"}`, 10},
		{`genesys_flow_exit_total{flow="Survey",metric="Done"}`, 5},
		{`genesys_flow_funnel_total{funnel="callback",step="Main IVR/Entered"}`, 20},
		{`genesys_flow_funnel_total{funnel="callback",step="Callback/Offered"}`, 10},
		{`genesys_flow_funnel_total{funnel="callback",step="Callback/Accepted"}`, 2},
		{`genesys_flow_experiment_total{experiment="offer",variant="A",step="Callback/OfferA"}`, 10},
		{`genesys_flow_experiment_total{experiment="offer",variant="A",step="Callback/AcceptedA"}`, 2},
		{`genesys_flow_experiment_total{experiment="offer",variant="B",step="Callback/OfferB"}`, 10},
		{`genesys_flow_experiment_total{experiment="offer",variant="B",step="Callback/AcceptedB"}`, 4},
	} {
		fmt.Fprintf(&sb, "      - series: '%s'\n        values: '0+%dx10'\n", s.series, s.per)
	}
	sb.WriteString("    promql_expr_test:\n")
	vars := strings.NewReplacer("$__range", "10m", "$flow", ".*")
	for _, c := range checks {
		e := exprs[c.panel]
		if e == "" {
			t.Fatalf("no panel %q", c.panel)
		}
		q, _ := json.Marshal(vars.Replace(e))
		fmt.Fprintf(&sb, "      - expr: %s\n        eval_time: 10m\n        exp_samples:\n", q)
		for _, w := range c.want {
			fmt.Fprintf(&sb, "          - labels: '%s'\n            value: %g\n", w.labels, w.value)
		}
	}
	path := filepath.Join(t.TempDir(), "paths_test.yml")
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "test", "rules", path).CombinedOutput(); err != nil {
		t.Errorf("promtool: %v\n%s\n%s", err, out, sb.String())
	}
}
