// Package naming decides what a point is called in a backend: by default one
// metric, genesys.flow.metric, with flow and metric as tags; optionally a
// name template for teams that want one metric name per flow and metric (as
// the original Lambda did), plus static tags (env, team, org) from config.
// Backends then sanitise the result to their own rules.
package naming

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// DefaultName is the metric name when no template is set.
const DefaultName = "genesys.flow.metric"

// The names of the points derived from conversation paths, in the sinks
// with dotted names (Datadog, DogStatsD, StatsD, OTLP, EMF): one metric per
// kind, told apart by labels, so one board reads every backend. They do not
// follow naming.template.
const (
	PathExit       = "genesys.flow.exit"       // count {flow, metric}
	PathStep       = "genesys.flow.step"       // seconds {flow, metric}
	PathTiming     = "genesys.flow.timing"     // seconds {timing}
	PathFunnel     = "genesys.flow.funnel"     // count {funnel, step}
	PathExperiment = "genesys.flow.experiment" // count {experiment, variant, step}
)

// Config is the naming section of the YAML config, shared by every sink.
type Config struct {
	// Name of the single metric; DefaultName if empty.
	Name string `yaml:"name"`
	// Template, if set, makes one metric name per flow and metric. It may use
	// {flow} and {metric}, e.g. "genesys.{flow}.{metric}". The flow and
	// metric tags are sent either way.
	Template string `yaml:"template"`
	// Tags are static tags added to every series, e.g. env: prod.
	Tags map[string]string `yaml:"tags"`
}

// Validate checks the section without touching the network.
func (c Config) Validate() error {
	if c.Template != "" {
		if !strings.Contains(c.Template, "{flow}") && !strings.Contains(c.Template, "{metric}") {
			return errors.New("template: must use {flow} or {metric}")
		}
		rest := strings.NewReplacer("{flow}", "", "{metric}", "").Replace(c.Template)
		if strings.ContainsAny(rest, "{}") {
			return fmt.Errorf("template %q: only {flow} and {metric} may be used", c.Template)
		}
	}
	for k := range c.Tags {
		if k == "" {
			return errors.New("tags: empty tag name")
		}
		if k == "flow" || k == "metric" {
			return fmt.Errorf("tags: %q is set from each point and cannot be static", k)
		}
	}
	return nil
}

// Tag is a name and value pair.
type Tag struct{ Key, Value string }

// Namer applies a Config.
type Namer struct {
	name     string
	template string
	static   []Tag
}

// New returns the Namer for c (which should have passed Validate).
func New(c Config) *Namer {
	n := &Namer{name: c.Name, template: c.Template}
	if n.name == "" {
		n.name = DefaultName
	}
	for k, v := range c.Tags {
		n.static = append(n.static, Tag{k, v})
	}
	sort.Slice(n.static, func(i, j int) bool { return n.static[i].Key < n.static[j].Key })
	return n
}

// Name returns the unsanitised metric name for a flow metric.
func (n *Namer) Name(flow, metric string) string {
	if n.template == "" {
		return n.name
	}
	return strings.NewReplacer("{flow}", flow, "{metric}", metric).Replace(n.template)
}

// Tags returns the tags of a flow metric's series: flow, metric, then the
// static tags in key order.
func (n *Namer) Tags(flow, metric string) []Tag {
	out := make([]Tag, 0, 2+len(n.static))
	out = append(out, Tag{"flow", flow}, Tag{"metric", metric})
	return append(out, n.static...)
}

// Static returns the static tags in key order.
func (n *Namer) Static() []Tag { return n.static }
