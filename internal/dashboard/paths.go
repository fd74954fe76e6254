package dashboard

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// PathsPath is the JSON of conversation paths: exits, step timings,
// timings, funnels and experiments, with example conversations.
const PathsPath = APIPrefix + "paths"

// Bounds of what the dashboard keeps of paths: the durations of each series
// it takes quantiles over (the latest ones), the example conversations of
// each number, and the series themselves (beyond maxPathSeries new series
// are not shown; the cardinality guard already bounds flow/metric pairs).
const (
	keepDurations = 1000
	keepExamples  = 5
	maxPathSeries = 5000
)

// pathStats are the paths delivered since the dashboard first took path
// points. They are kept in the sink state, so a restart finds them again.
type pathStats struct {
	mu     sync.Mutex
	series map[pathKey]*pathSeries
	byID   map[string]*pathSeries
	dirty  map[string]struct{} // state keys changed since TakeState
	since  time.Time           // the first path point (zero: none yet)
	region string
}

type pathKey struct {
	kind                              flowmetrics.PathKind
	flow, metric, name, variant, step string
}

type pathSeries struct {
	id        string
	key       pathKey
	count     int64
	durations []float64 // ring of the latest keepDurations
	next      int
	examples  []Example // latest first
}

// Example is a conversation behind a number, with its point's time and,
// when the org's region is configured, its Genesys Cloud link.
type Example struct {
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	URL  string    `json:"url,omitempty"`
}

// SetGenesysRegion sets the org's Genesys Cloud domain (e.g.
// mypurecloud.ie) for the links to example conversations.
func (r *Recorder) SetGenesysRegion(region string) {
	r.paths.mu.Lock()
	r.paths.region = region
	r.paths.mu.Unlock()
}

// ConversationURL is the conversation's interaction details page in Genesys
// Cloud (Performance › Interactions), or "" without a region.
func ConversationURL(region, id string) string {
	if region == "" || id == "" {
		return ""
	}
	return "https://apps." + region + "/directory/#/analytics/interactions/" + url.PathEscape(id) + "/admin"
}

// SendPaths implements flowmetrics.PathSink.
func (r *Recorder) SendPaths(_ context.Context, points []flowmetrics.PathPoint) error {
	ps := &r.paths
	ps.mu.Lock()
	for _, p := range points {
		k := pathKey{p.Kind, p.Flow, p.Metric, p.Name, p.Variant, p.Step}
		s := ps.series[k]
		if s == nil {
			if len(ps.series) >= maxPathSeries {
				continue
			}
			s = ps.newSeries(k)
		}
		if ps.since.IsZero() {
			ps.since = r.now().UTC()
			ps.dirty[pathsSinceKey] = struct{}{}
		}
		s.count++
		ps.dirty[pathSeriesKey(s.id)] = struct{}{}
		if p.Kind.IsDuration() {
			i := s.next
			if len(s.durations) < keepDurations {
				i = len(s.durations)
				s.durations = append(s.durations, p.Seconds)
			} else {
				s.durations[s.next] = p.Seconds
				s.next = (s.next + 1) % keepDurations
			}
			ps.dirty[durationsKey(s.id, i/durationsChunk)] = struct{}{}
		}
		if p.Conversation != "" {
			s.examples = append([]Example{{ID: p.Conversation, Time: p.Time.UTC()}}, s.examples[:min(len(s.examples), keepExamples-1)]...)
		}
	}
	ps.mu.Unlock()
	r.bump()
	return nil
}

// Paths is the JSON of PathsPath.
type Paths struct {
	// Since: paths are counted from the first path point the dashboard
	// took (with the embedded store, across restarts), or from the
	// process's start when there is none yet.
	Since       time.Time        `json:"since"`
	Region      string           `json:"genesys_region"`
	Flows       []PathFlow       `json:"flows"`
	Timings     []PathDuration   `json:"timings"`
	Funnels     []PathFunnel     `json:"funnels"`
	Experiments []PathExperiment `json:"experiments"`
}

// PathFlow is where conversations left one flow, and its step timings.
type PathFlow struct {
	Flow string `json:"flow"`
	// Conversations whose path went through the flow (one exit each).
	Conversations int64          `json:"conversations"`
	Exits         []PathExit     `json:"exits"`
	Steps         []PathDuration `json:"steps"`
}

// PathExit is one exit step: how many conversations left the flow there,
// and their share of the flow's conversations.
type PathExit struct {
	Metric   string    `json:"metric"`
	Count    int64     `json:"count"`
	Share    float64   `json:"share"`
	Examples []Example `json:"examples"`
}

// PathDuration is a step timing or a configured timing: quantiles of the
// latest keepDurations observations, in seconds.
type PathDuration struct {
	Name     string    `json:"name"`
	Count    int64     `json:"count"`
	P50      float64   `json:"p50"`
	P90      float64   `json:"p90"`
	P99      float64   `json:"p99"`
	Examples []Example `json:"examples"`
}

// PathFunnel is a funnel's steps in order (by how many reached them), with
// the conversion from the first step.
type PathFunnel struct {
	Name  string     `json:"name"`
	Steps []PathStep `json:"steps"`
}

// PathStep is one funnel step.
type PathStep struct {
	Step       string    `json:"step"`
	Count      int64     `json:"count"`
	Conversion float64   `json:"conversion"`
	Examples   []Example `json:"examples"`
}

// PathExperiment compares variants: each one's conversion (last step over
// first) with a 95 % confidence interval, and, for two variants, a
// two-proportion z-test.
type PathExperiment struct {
	Name     string        `json:"name"`
	Variants []PathVariant `json:"variants"`
	// Verdict says in words what the test says, or that there are too few
	// conversations to tell.
	Verdict string `json:"verdict"`
	// P is the test's two-sided p-value (absent when there is no test).
	P *float64 `json:"p,omitempty"`
}

// PathVariant is one variant of an experiment.
type PathVariant struct {
	Name      string     `json:"name"`
	Entered   int64      `json:"entered"`
	Converted int64      `json:"converted"`
	Rate      float64    `json:"rate"`
	Low       float64    `json:"ci_low"`
	High      float64    `json:"ci_high"`
	Steps     []PathStep `json:"steps"`
}

// ReadPaths returns the paths delivered so far.
func (r *Recorder) ReadPaths() Paths {
	ps := &r.paths
	ps.mu.Lock()
	defer ps.mu.Unlock()
	since := ps.since
	if since.IsZero() {
		since = r.started
	}
	out := Paths{Since: since, Region: ps.region, Flows: []PathFlow{}, Timings: []PathDuration{}, Funnels: []PathFunnel{}, Experiments: []PathExperiment{}}
	examples := func(s *pathSeries) []Example {
		ex := make([]Example, len(s.examples))
		for i, e := range s.examples {
			e.URL = ConversationURL(ps.region, e.ID)
			ex[i] = e
		}
		return ex
	}
	duration := func(name string, s *pathSeries) PathDuration {
		d := slices.Clone(s.durations)
		sort.Float64s(d)
		return PathDuration{Name: name, Count: s.count, P50: quantile(d, 0.5), P90: quantile(d, 0.9), P99: quantile(d, 0.99), Examples: examples(s)}
	}
	flows := map[string]*PathFlow{}
	flow := func(name string) *PathFlow {
		f := flows[name]
		if f == nil {
			f = &PathFlow{Flow: name, Exits: []PathExit{}, Steps: []PathDuration{}}
			flows[name] = f
		}
		return f
	}
	funnels := map[string][]PathStep{}
	variants := map[string]map[string][]PathStep{}
	for k, s := range ps.series {
		switch k.kind {
		case flowmetrics.PathExit:
			f := flow(k.flow)
			f.Conversations += s.count
			f.Exits = append(f.Exits, PathExit{Metric: k.metric, Count: s.count, Examples: examples(s)})
		case flowmetrics.PathStep:
			f := flow(k.flow)
			f.Steps = append(f.Steps, duration(k.metric, s))
		case flowmetrics.PathTiming:
			out.Timings = append(out.Timings, duration(k.name, s))
		case flowmetrics.PathFunnel:
			funnels[k.name] = append(funnels[k.name], PathStep{Step: k.step, Count: s.count, Examples: examples(s)})
		case flowmetrics.PathExperiment:
			if variants[k.name] == nil {
				variants[k.name] = map[string][]PathStep{}
			}
			variants[k.name][k.variant] = append(variants[k.name][k.variant], PathStep{Step: k.step, Count: s.count, Examples: examples(s)})
		}
	}
	for _, f := range flows {
		for i := range f.Exits {
			f.Exits[i].Share = float64(f.Exits[i].Count) / float64(f.Conversations)
		}
		sort.Slice(f.Exits, func(i, j int) bool {
			return f.Exits[i].Count > f.Exits[j].Count || (f.Exits[i].Count == f.Exits[j].Count && f.Exits[i].Metric < f.Exits[j].Metric)
		})
		sort.Slice(f.Steps, func(i, j int) bool {
			return f.Steps[i].P50 < f.Steps[j].P50 || (f.Steps[i].P50 == f.Steps[j].P50 && f.Steps[i].Name < f.Steps[j].Name)
		})
		out.Flows = append(out.Flows, *f)
	}
	sort.Slice(out.Flows, func(i, j int) bool { return out.Flows[i].Flow < out.Flows[j].Flow })
	sort.Slice(out.Timings, func(i, j int) bool { return out.Timings[i].Name < out.Timings[j].Name })
	for name, steps := range funnels {
		out.Funnels = append(out.Funnels, PathFunnel{Name: name, Steps: ordered(steps)})
	}
	sort.Slice(out.Funnels, func(i, j int) bool { return out.Funnels[i].Name < out.Funnels[j].Name })
	for name, vs := range variants {
		e := PathExperiment{Name: name}
		for v, steps := range vs {
			steps = ordered(steps)
			pv := PathVariant{Name: v, Steps: steps, Entered: steps[0].Count}
			if len(steps) > 1 {
				pv.Converted = steps[len(steps)-1].Count
			}
			pv.Rate = float64(pv.Converted) / float64(pv.Entered)
			pv.Low, pv.High = wilson(pv.Converted, pv.Entered)
			e.Variants = append(e.Variants, pv)
		}
		sort.Slice(e.Variants, func(i, j int) bool { return e.Variants[i].Name < e.Variants[j].Name })
		e.Verdict, e.P = compare(e.Variants)
		out.Experiments = append(out.Experiments, e)
	}
	sort.Slice(out.Experiments, func(i, j int) bool { return out.Experiments[i].Name < out.Experiments[j].Name })
	return out
}

// ordered sorts a funnel's steps by how many reached them (a funnel only
// loses conversations, so this is its order; ties by name) and sets each
// one's conversion from the first.
func ordered(steps []PathStep) []PathStep {
	sort.Slice(steps, func(i, j int) bool {
		return steps[i].Count > steps[j].Count || (steps[i].Count == steps[j].Count && steps[i].Step < steps[j].Step)
	})
	for i := range steps {
		steps[i].Conversion = float64(steps[i].Count) / float64(steps[0].Count)
	}
	return steps
}

// quantile of sorted values, by the nearest rank; 0 when there are none.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// wilson is the 95 % Wilson score interval of k successes in n trials.
func wilson(k, n int64) (lo, hi float64) {
	if n == 0 {
		return 0, 0
	}
	const z = 1.959964
	p, nf := float64(k)/float64(n), float64(n)
	d := 1 + z*z/nf
	c := (p + z*z/(2*nf)) / d
	w := z * math.Sqrt(p*(1-p)/nf+z*z/(4*nf*nf)) / d
	return max(0, c-w), min(1, c+w)
}

// compare tests whether two variants convert differently (two-proportion
// z-test, pooled). Too few to tell: fewer than 10 conversions or 10
// non-conversions expected in a variant under the pooled rate, where the
// normal approximation does not hold.
func compare(vs []PathVariant) (string, *float64) {
	if len(vs) != 2 {
		return "a test compares two variants", nil
	}
	a, b := vs[0], vs[1]
	n1, n2 := float64(a.Entered), float64(b.Entered)
	pool := float64(a.Converted+b.Converted) / (n1 + n2)
	for _, n := range []float64{n1, n2} {
		if n*pool < 10 || n*(1-pool) < 10 {
			return "too few conversations to tell", nil
		}
	}
	se := math.Sqrt(pool * (1 - pool) * (1/n1 + 1/n2))
	z := (b.Rate - a.Rate) / se
	p := math.Erfc(math.Abs(z) / math.Sqrt2)
	switch {
	case p >= 0.05:
		return "no difference beyond chance (p = " + fmtP(p) + ")", &p
	case b.Rate > a.Rate:
		return b.Name + " converts better than " + a.Name + " (p = " + fmtP(p) + ")", &p
	default:
		return a.Name + " converts better than " + b.Name + " (p = " + fmtP(p) + ")", &p
	}
}

func fmtP(p float64) string {
	if p < 0.001 {
		return "< 0.001"
	}
	return strconv.FormatFloat(p, 'f', 3, 64)
}

func (h *Handler) pathsJSON(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, h.rec.ReadPaths())
}

func (ps *pathStats) newSeries(k pathKey) *pathSeries {
	s := &pathSeries{id: pathSeriesID(k), key: k}
	ps.series[k] = s
	ps.byID[s.id] = s
	return s
}

// Sink state of paths, next to the Recorder's (recorder.go):
//
//	p/<id>        a path series: its kind and names, count, examples, and
//	              how many durations its ring holds and where it goes on
//	q/<id>/<k>    durations k·100 … k·100+99 of its ring, 8 bytes each
//	ps            when the dashboard took its first path point
//
// A batch of points rewrites the series it touched and the chunks of
// durations it changed, not the whole ring.

const (
	pathsSinceKey  = "ps"
	durationsChunk = 100
)

func pathSeriesID(k pathKey) string {
	return hashID(strconv.Itoa(int(k.kind))+"\x00"+k.flow+"\x00"+k.metric, k.name+"\x00"+k.variant+"\x00"+k.step)
}

func pathSeriesKey(id string) string { return "p/" + id }
func durationsKey(id string, k int) string {
	return "q/" + id + "/" + strconv.Itoa(k)
}

// pathState is the value of p/<id>.
type pathState struct {
	Kind      flowmetrics.PathKind `json:"kind"`
	Flow      string               `json:"flow,omitempty"`
	Metric    string               `json:"metric,omitempty"`
	Name      string               `json:"name,omitempty"`
	Variant   string               `json:"variant,omitempty"`
	Step      string               `json:"step,omitempty"`
	Count     int64                `json:"count"`
	Durations int                  `json:"durations,omitempty"`
	Next      int                  `json:"next,omitempty"`
	Examples  []Example            `json:"examples,omitempty"`
}

// takeState adds the path keys changed since the last call to u, encoded
// after ps.mu is released.
func (ps *pathStats) takeState(u flowmetrics.StateUpdate) {
	type value struct {
		key   string
		state *pathState
		chunk []float64
		since time.Time
	}
	ps.mu.Lock()
	vals := make([]value, 0, len(ps.dirty))
	for k := range ps.dirty {
		v := value{key: k}
		kind, rest, _ := strings.Cut(k, "/")
		switch kind {
		case pathsSinceKey:
			v.since = ps.since
		case "p":
			if s := ps.byID[rest]; s != nil {
				v.state = &pathState{Kind: s.key.kind, Flow: s.key.flow, Metric: s.key.metric, Name: s.key.name, Variant: s.key.variant, Step: s.key.step,
					Count: s.count, Durations: len(s.durations), Next: s.next, Examples: slices.Clone(s.examples)}
			}
		case "q":
			id, ks, _ := strings.Cut(rest, "/")
			c, err := strconv.Atoi(ks)
			if s := ps.byID[id]; s != nil && err == nil && c*durationsChunk < len(s.durations) {
				v.chunk = slices.Clone(s.durations[c*durationsChunk : min((c+1)*durationsChunk, len(s.durations))])
			}
		}
		vals = append(vals, v)
	}
	clear(ps.dirty)
	ps.mu.Unlock()
	for _, v := range vals {
		switch {
		case v.state != nil:
			u[v.key], _ = json.Marshal(v.state)
		case v.chunk != nil:
			b := make([]byte, 0, 8*len(v.chunk))
			for _, d := range v.chunk {
				b = binary.LittleEndian.AppendUint64(b, math.Float64bits(d))
			}
			u[v.key] = b
		case !v.since.IsZero():
			u[v.key] = []byte(v.since.Format(time.RFC3339Nano))
		default:
			u[v.key] = nil
		}
	}
}

// isPathKey reports whether k is a key of the path state.
func isPathKey(k string) bool {
	return k == pathsSinceKey || strings.HasPrefix(k, "p/") || strings.HasPrefix(k, "q/")
}

// restore rebuilds the paths from the path keys of state; keys it cannot
// read are deleted with the next TakeState.
func (ps *pathStats) restore(state map[string][]byte) (skipped int) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	skip := func(k string) {
		skipped++
		ps.dirty[k] = struct{}{} // nothing to take for it: deleted
	}
	if v, ok := state[pathsSinceKey]; ok {
		t, err := time.Parse(time.RFC3339Nano, string(v))
		if err != nil {
			skip(pathsSinceKey)
		} else {
			ps.since = t.UTC()
		}
	}
	// Series first, so chunks find their series.
	for k, v := range state {
		id, ok := strings.CutPrefix(k, "p/")
		if !ok {
			continue
		}
		var st pathState
		err := json.Unmarshal(v, &st)
		key := pathKey{st.Kind, st.Flow, st.Metric, st.Name, st.Variant, st.Step}
		if err != nil || pathSeriesID(key) != id || len(ps.series) >= maxPathSeries ||
			st.Durations < 0 || st.Durations > keepDurations || st.Next < 0 || st.Next >= max(1, st.Durations) || len(st.Examples) > keepExamples {
			skip(k)
			continue
		}
		s := ps.series[key]
		if s == nil {
			s = ps.newSeries(key)
		}
		s.count, s.next, s.examples = st.Count, st.Next, st.Examples
		s.durations = make([]float64, st.Durations)
	}
	for k, v := range state {
		rest, ok := strings.CutPrefix(k, "q/")
		if !ok {
			continue
		}
		id, ks, _ := strings.Cut(rest, "/")
		c, err := strconv.Atoi(ks)
		s := ps.byID[id]
		if s == nil || err != nil || c < 0 || c*durationsChunk >= len(s.durations) || len(v) != 8*(min((c+1)*durationsChunk, len(s.durations))-c*durationsChunk) {
			skip(k)
			continue
		}
		for i := range len(v) / 8 {
			s.durations[c*durationsChunk+i] = math.Float64frombits(binary.LittleEndian.Uint64(v[8*i:]))
		}
	}
	return skipped
}
