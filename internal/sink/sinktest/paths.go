package sinktest

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/paths"
)

// PathsConfig is the paths configuration of PathCorpus: two flows, a
// timing, a funnel and an A/B experiment.
var PathsConfig = paths.Config{
	Timings: []paths.Timing{{Name: "ivr_to_agent", From: "Main IVR/Start", To: "Agent/Connected"}},
	Funnels: []paths.Funnel{{Name: "main", Steps: []paths.Step{"Main IVR/Start", "Main IVR/Menu", "Agent/Connected"}}},
	Experiments: []paths.Experiment{{Name: "offer", Variants: []paths.Variant{
		{Name: "A", Steps: []paths.Step{"Main IVR/OfferA", "Main IVR/AcceptA"}},
		{Name: "B", Steps: []paths.Step{"Main IVR/OfferB", "Main IVR/AcceptB"}},
	}}},
}

// ConvStep is one metric attribute of a conversation.
type ConvStep struct {
	Flow, Metric string
	At           time.Time
}

// Conv is a conversation of the path corpus: its steps in time order, each
// metric once.
type Conv struct {
	ID    string
	Steps []ConvStep
}

// PathCorpus makes n conversations numbered from first, stamped from at on
// (3 s apart, whole milliseconds so durations survive the attribute names
// exactly), with drop-outs at every step, both variants of the experiment,
// and waits from seconds to minutes.
func PathCorpus(first, n int, at time.Time) []Conv {
	var out []Conv
	for i := first; i < first+n; i++ {
		c := Conv{ID: fmt.Sprintf("conv-%04d", i)}
		t := at.Add(time.Duration(i-first) * 3 * time.Second)
		add := func(flow, metric string, after time.Duration) {
			t = t.Add(after)
			c.Steps = append(c.Steps, ConvStep{flow, metric, t})
		}
		add("Main IVR", "Start", 0)
		if i%5 != 0 {
			add("Main IVR", "Menu", time.Duration(2000+i%7*1500)*time.Millisecond)
			if i%3 != 0 {
				v := []string{"A", "B"}[i%2]
				add("Main IVR", "Offer"+v, 1250*time.Millisecond)
				if i%4 == 0 || v == "B" && i%3 == 1 {
					add("Main IVR", "Accept"+v, 2*time.Second)
				}
			}
			if i%3 != 1 {
				add("Agent", "Queued", 500*time.Millisecond)
				if i%2 == 0 {
					add("Agent", "Connected", time.Duration(5000+i%11*13500)*time.Millisecond)
				}
			}
		}
		out = append(out, c)
	}
	return out
}

// Records are the conversation's attribute events (each carrying every
// attribute so far, as Genesys sends them) and, if ended, its
// customer.end, every one delivered twice.
func (c Conv) Records(ended bool) []genesys.Record {
	var recs []genesys.Record
	var names []string
	for _, s := range c.Steps {
		names = append(names, fmt.Sprintf("%sMetric_%s(%s)", s.Flow, s.Metric, s.At.Format("2006-01-02T15:04:05.000Z")))
		rec := genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: c.ID, MetricNames: slices.Clone(names)}}
		recs = append(recs, rec, rec)
	}
	if ended {
		end := genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: c.ID, Ended: true}}
		recs = append(recs, end, end)
	}
	return recs
}

// PathTruth is what a backend must hold per path series, computed from the
// corpus's own model, not by the deriver. A series is a PathPoint with only
// its kind and labels set.
type PathTruth struct {
	// Counts: conversations per exit, funnel step and experiment step.
	Counts map[flowmetrics.PathPoint]float64
	// Durations: every value, sorted, per step timing and timing.
	Durations map[flowmetrics.PathPoint][]float64
}

// NewPathTruth returns an empty truth.
func NewPathTruth() PathTruth {
	return PathTruth{Counts: map[flowmetrics.PathPoint]float64{}, Durations: map[flowmetrics.PathPoint][]float64{}}
}

// TruthOf computes the truth of convs under PathsConfig.
func TruthOf(convs []Conv) PathTruth {
	tr := NewPathTruth()
	for _, c := range convs {
		first, last := map[string]time.Time{}, map[string]string{}
		reached := map[string]time.Time{}
		for _, s := range c.Steps {
			if f, ok := first[s.Flow]; ok {
				k := flowmetrics.PathPoint{Kind: flowmetrics.PathStep, Flow: s.Flow, Metric: s.Metric}
				tr.Durations[k] = append(tr.Durations[k], s.At.Sub(f).Seconds())
			} else {
				first[s.Flow] = s.At
			}
			last[s.Flow] = s.Metric
			reached[s.Flow+"/"+s.Metric] = s.At
		}
		for flow, metric := range last {
			tr.Counts[flowmetrics.PathPoint{Kind: flowmetrics.PathExit, Flow: flow, Metric: metric}]++
		}
		if to, ok := reached["Agent/Connected"]; ok {
			k := flowmetrics.PathPoint{Kind: flowmetrics.PathTiming, Name: "ivr_to_agent"}
			tr.Durations[k] = append(tr.Durations[k], to.Sub(reached["Main IVR/Start"]).Seconds())
		}
		for _, step := range []string{"Main IVR/Start", "Main IVR/Menu", "Agent/Connected"} {
			if _, ok := reached[step]; !ok {
				break
			}
			tr.Counts[flowmetrics.PathPoint{Kind: flowmetrics.PathFunnel, Name: "main", Step: step}]++
		}
		for _, v := range []string{"A", "B"} {
			for _, step := range []string{"Main IVR/Offer" + v, "Main IVR/Accept" + v} {
				if _, ok := reached[step]; !ok {
					break
				}
				tr.Counts[flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: v, Step: step}]++
			}
		}
	}
	for _, v := range tr.Durations {
		sort.Float64s(v)
	}
	return tr
}

// Add adds o's durations to tr, and its counts too when counts is set
// (what a resent batch adds to a backend that adds every value up, and not
// to one that keeps running totals).
func (tr PathTruth) Add(o PathTruth, counts bool) {
	if counts {
		for k, v := range o.Counts {
			tr.Counts[k] += v
		}
	}
	for k, v := range o.Durations {
		tr.Durations[k] = append(tr.Durations[k], v...)
		sort.Float64s(tr.Durations[k])
	}
}

// SeriesOf maps a truth to a backend's series names (name returns the
// backend's key of a series), adding up what maps to one key.
func (tr PathTruth) SeriesOf(name func(flowmetrics.PathPoint) string) (counts map[string]float64, durations map[string][]float64) {
	counts, durations = map[string]float64{}, map[string][]float64{}
	for k, v := range tr.Counts {
		counts[name(k)] += v
	}
	for k, v := range tr.Durations {
		n := name(k)
		durations[n] = append(durations[n], v...)
		sort.Float64s(durations[n])
	}
	return counts, durations
}

// Errors compares what a backend holds (got*) with what it should
// (want*) and returns one message per series that differs.
func Errors(gotCounts, wantCounts map[string]float64, gotDurs, wantDurs map[string][]float64) []string {
	var out []string
	for _, k := range keys(gotCounts, wantCounts) {
		if gotCounts[k] != wantCounts[k] {
			out = append(out, fmt.Sprintf("%s: holds %v conversations, want %v", k, gotCounts[k], wantCounts[k]))
		}
	}
	for _, k := range keys(gotDurs, wantDurs) {
		g, w := append([]float64(nil), gotDurs[k]...), wantDurs[k]
		sort.Float64s(g)
		if !slices.EqualFunc(g, w, func(a, b float64) bool { return a-b < 1e-6 && b-a < 1e-6 }) {
			out = append(out, fmt.Sprintf("%s: holds %d values %v, want %d %v", k, len(g), g, len(w), w))
		}
	}
	return out
}

func keys[V any](a, b map[string]V) []string {
	seen := map[string]bool{}
	for k := range a {
		seen[k] = true
	}
	for k := range b {
		seen[k] = true
	}
	return slices.Sorted(maps.Keys(seen))
}
