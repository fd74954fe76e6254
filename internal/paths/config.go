// Package paths derives, from each closed conversation's claimed keys, where
// the conversation left each flow (exits), how long each step took (step
// timings and configured timings), which steps of each funnel it reached,
// and which experiment variant it converted in. The store decides when a
// path closes (flowmetrics.Store.ClosePaths); this package only computes
// the points, as a pure function of the keys.
package paths

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// Defaults of the paths section.
//
// Grace: EventBridge usually delivers within seconds, and the attribute a
// flow sets as the caller hangs up is published at about the same moment
// as the customer.end event, so it may arrive just after it. Two minutes
// covers that race and a few of EventBridge's retries; an attribute later
// still is counted as an occurrence as always, and as late for paths
// (flowmetrics_paths_late_occurrences_total).
//
// IdleTimeout: a conversation whose customer.end never comes (the topic is
// not in the integration's filter, or the event was lost) closes when no
// new metric attribute has come for this long. A long agent call sets no
// attributes for an hour or more, and a path closed in the middle of it
// would miss its last steps, so the default is well beyond: 4 hours.
const (
	DefaultGrace       = 2 * time.Minute
	DefaultIdleTimeout = 4 * time.Hour
)

// Limits on the configuration, so that no config makes the work per
// closed conversation, or the number of series, grow without bound.
const (
	MaxDefinitions = 100 // timings, funnels and experiments, each
	MaxSteps       = 50  // per funnel or variant
	MaxVariants    = 10  // per experiment
)

// Config is the paths section.
type Config struct {
	// Enabled turns paths on (default on; the DynamoDB store does not
	// support them yet).
	Enabled *bool `yaml:"enabled"`
	// Grace after a conversation's customer.end event before its path
	// closes (default 2m).
	Grace time.Duration `yaml:"grace"`
	// IdleTimeout closes a path with no customer.end event after this long
	// without a new metric attribute (default 4h).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// GenesysRegion is the org's Genesys Cloud domain (e.g.
	// mypurecloud.com, mypurecloud.ie, euw2.pure.cloud): the dashboard
	// links example conversations to apps.<region>. Empty: no links.
	GenesysRegion string       `yaml:"genesys_region"`
	Timings       []Timing     `yaml:"timings"`
	Funnels       []Funnel     `yaml:"funnels"`
	Experiments   []Experiment `yaml:"experiments"`
}

// Timing is the time from the first From step to the first To step at or
// after it, in seconds.
type Timing struct {
	Name string `yaml:"name"`
	From Step   `yaml:"from"`
	To   Step   `yaml:"to"`
}

// Funnel is ordered steps: a conversation reaches a step when it reached
// the previous ones before it.
type Funnel struct {
	Name  string `yaml:"name"`
	Steps []Step `yaml:"steps"`
}

// Experiment compares variants, each a funnel; a conversation is in the
// variants whose first step it reached.
type Experiment struct {
	Name     string    `yaml:"name"`
	Variants []Variant `yaml:"variants"`
}

// Variant is one arm of an experiment.
type Variant struct {
	Name  string `yaml:"name"`
	Steps []Step `yaml:"steps"`
}

// Step names a flow metric as "Flow/Metric": the text before the first "/"
// is the flow (so a flow whose name holds a "/" cannot be named here).
type Step string

// Split returns the step's flow and metric.
func (s Step) Split() (flow, metric string, err error) {
	flow, metric, ok := strings.Cut(string(s), "/")
	if !ok || flow == "" || metric == "" {
		return "", "", fmt.Errorf("step %q: want \"Flow/Metric\"", string(s))
	}
	return flow, metric, nil
}

// IsEnabled reports whether paths are on.
func (c Config) IsEnabled() bool { return c.Enabled == nil || *c.Enabled }

// WithDefaults fills in the zero durations.
func (c Config) WithDefaults() Config {
	if c.Grace == 0 {
		c.Grace = DefaultGrace
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	return c
}

// Options are the store's settings for these paths.
func (c Config) Options() *flowmetrics.PathOptions {
	c = c.WithDefaults()
	return &flowmetrics.PathOptions{Grace: c.Grace, Idle: c.IdleTimeout}
}

// Validate checks the section (field paths relative to it).
func (c Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	d := c.WithDefaults()
	if c.Grace < 0 {
		add("grace: negative")
	}
	if c.IdleTimeout < 0 {
		add("idle_timeout: negative")
	}
	if d.IdleTimeout <= d.Grace {
		add("idle_timeout (%v) must be longer than grace (%v)", d.IdleTimeout, d.Grace)
	}
	if strings.ContainsAny(c.GenesysRegion, "/:@ ") {
		add("genesys_region %q: want a domain such as mypurecloud.com", c.GenesysRegion)
	}
	steps := func(where string, ss []Step) {
		if len(ss) == 0 {
			add("%s.steps: at least one step", where)
		}
		if len(ss) > MaxSteps {
			add("%s.steps: %d steps, at most %d", where, len(ss), MaxSteps)
		}
		for i, s := range ss {
			if _, _, err := s.Split(); err != nil {
				add("%s.steps[%d]: %v", where, i, err)
			}
		}
	}
	names := func(kind string, n int, name func(int) string) {
		if n > MaxDefinitions {
			add("%s: %d, at most %d", kind, n, MaxDefinitions)
		}
		seen := map[string]bool{}
		for i := 0; i < n; i++ {
			nm := name(i)
			if nm == "" {
				add("%s[%d].name: required", kind, i)
			} else if seen[nm] {
				add("%s[%d].name %q: used twice", kind, i, nm)
			}
			seen[nm] = true
		}
	}
	names("timings", len(c.Timings), func(i int) string { return c.Timings[i].Name })
	for i, t := range c.Timings {
		for _, s := range []struct {
			f string
			s Step
		}{{"from", t.From}, {"to", t.To}} {
			if _, _, err := s.s.Split(); err != nil {
				add("timings[%d].%s: %v", i, s.f, err)
			}
		}
	}
	names("funnels", len(c.Funnels), func(i int) string { return c.Funnels[i].Name })
	for i, f := range c.Funnels {
		steps(fmt.Sprintf("funnels[%d]", i), f.Steps)
	}
	names("experiments", len(c.Experiments), func(i int) string { return c.Experiments[i].Name })
	for i, e := range c.Experiments {
		where := fmt.Sprintf("experiments[%d]", i)
		if len(e.Variants) < 2 || len(e.Variants) > MaxVariants {
			add("%s.variants: %d, want 2 to %d", where, len(e.Variants), MaxVariants)
		}
		names(where+".variants", len(e.Variants), func(j int) string { return e.Variants[j].Name })
		for j, v := range e.Variants {
			steps(fmt.Sprintf("%s.variants[%d]", where, j), v.Steps)
		}
	}
	return errors.Join(errs...)
}
