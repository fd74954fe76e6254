package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/boards"
	"github.com/flowmetrics/flowmetrics/internal/config"
)

const boardsHelp = `Writes ready-made boards and alerts for the naming of a config (its name,
name template and static tags carry through), into -out:

  datadog-dashboard.json   Datadog dashboard (POST /api/v1/dashboard)
  datadog-monitors.json    Datadog monitors, an array (POST /api/v1/monitor each):
                           a flow metric spike, a flow gone silent, malformed names,
                           a slow step, an exit jumping (conversation paths)
  datadog-openmetrics.yaml the Agent's OpenMetrics check for flowmetrics' own
                           counters (the malformed-names monitor needs it)
  grafana-dashboard.json   Grafana dashboard on a Prometheus data source
  prometheus-rules.yml     Prometheus alerting rules for the same alerts

With a naming.template that puts {flow} or {metric} in the name, Datadog has
one metric per flow metric: list them with -metric.`

// flowMetrics is a repeatable FLOW/METRIC flag.
type flowMetrics []boards.FlowMetric

func (f *flowMetrics) String() string {
	var s []string
	for _, fm := range *f {
		s = append(s, fm.Flow+"/"+fm.Metric)
	}
	return strings.Join(s, ",")
}

func (f *flowMetrics) Set(v string) error {
	fm, err := boards.ParseFlowMetric(v)
	if err != nil {
		return err
	}
	*f = append(*f, fm)
	return nil
}

func runBoards(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("boards", "[flags]", boardsHelp, "")
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "serve's YAML config: its naming section, sinks.prometheus.name and sinks.datadog.mode are used (none: the defaults)")
	out := fs.String("out", "boards", "directory to write the files to (created if missing)")
	title := fs.String("title", "Genesys flow metrics", "title of the dashboards")
	spike := fs.String("spike", "", "FLOW/METRIC the spike alert watches, e.g. \"Billing Main/PaymentFailed\" (default: every flow metric)")
	stepP90 := fs.Duration("step-p90", boards.StepP90Seconds*time.Second, "the slow-step alert's threshold: a step's 90th percentile above it")
	var metrics flowMetrics
	fs.Var(&metrics, "metric", "FLOW/METRIC to show on the Datadog board; repeat it (needed with a per-flow-metric naming.template)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fmt.Errorf("boards: unexpected arguments %q", fs.Args()))
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return usageError(err)
	}
	if err := cfg.Validate(); err != nil {
		return usageError(err)
	}
	if *stepP90 <= 0 {
		return usageError(fmt.Errorf("boards: -step-p90 %v: want a positive duration", *stepP90))
	}
	o := boards.Options{Naming: cfg.Naming, PrometheusName: cfg.Sinks.Prometheus.Name, Metrics: metrics, Title: *title, StepP90: stepP90.Seconds()}
	if cfg.Sinks.Datadog != nil {
		o.DatadogMode = cfg.Sinks.Datadog.Mode
	}
	if *spike != "" {
		fm, err := boards.ParseFlowMetric(*spike)
		if err != nil {
			return usageError(fmt.Errorf("boards: -spike %w", err))
		}
		o.Spike = &fm
	}
	files, err := boards.Generate(o)
	if err != nil {
		return usageError(fmt.Errorf("boards: %w", err))
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("boards: %w", err)
	}
	for _, f := range files {
		path := filepath.Join(*out, f.Name)
		if err := os.WriteFile(path, f.Data, 0o644); err != nil {
			return fmt.Errorf("boards: %w", err)
		}
		fmt.Fprintln(stdout, path)
	}
	return nil
}
