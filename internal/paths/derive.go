package paths

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// Guard folds flow/metric pairs beyond the cardinality limit into the
// overflow series (pipeline.Guard).
type Guard interface {
	Map(flow, metric string) (string, string)
}

// Deriver computes the points of closed paths for one configuration.
type Deriver struct {
	timings     []timing
	funnels     []funnel
	experiments []experiment
	guard       Guard
	configured  int // the most points timings, funnels and experiments add
	// names are memos of the flow and metric of the keys parsed (a few
	// dozen pairs), so that most keys have only their time parsed: one
	// per Derive running at once, kept for the next (at most len(names)
	// of them, each bounded).
	names memos
}

// memos is a small free list of name memos, each in a slot of its own
// cache line, taken and given back with an atomic swap: derivations in
// several goroutines at once (a store's close derives its parts so) took
// them from a channel, whose lock they contended for twice a path. (Not a
// sync.Pool: it drops items at will under the race detector, and a memo
// dropped is every pair parsed again.)
type memos [8]struct {
	m atomic.Pointer[genesys.NameMemo]
	_ [56]byte
}

// get takes a memo from the list, or returns a new one.
func (ms *memos) get() *genesys.NameMemo {
	for i := range ms {
		if s := &ms[i].m; s.Load() != nil {
			if m := s.Swap(nil); m != nil {
				return m
			}
		}
	}
	return new(genesys.NameMemo)
}

// put gives m back to the list, or drops it when the list is full.
func (ms *memos) put(m *genesys.NameMemo) {
	for i := range ms {
		if s := &ms[i].m; s.Load() == nil && s.CompareAndSwap(nil, m) {
			return
		}
	}
}

type stepRef struct{ flow, metric, label string }

type timing struct {
	name     string
	from, to stepRef
}

type funnel struct {
	name  string
	steps []stepRef
}

type experiment struct {
	name     string
	variants []funnel
}

// New returns the Deriver of a validated configuration. guard may be nil.
func New(c Config, guard Guard) *Deriver {
	ref := func(s Step) stepRef {
		f, m, _ := s.Split()
		return stepRef{f, m, string(s)}
	}
	refs := func(ss []Step) []stepRef {
		out := make([]stepRef, len(ss))
		for i, s := range ss {
			out[i] = ref(s)
		}
		return out
	}
	d := &Deriver{guard: guard}
	for _, t := range c.Timings {
		d.timings = append(d.timings, timing{t.Name, ref(t.From), ref(t.To)})
		d.configured++
	}
	for _, f := range c.Funnels {
		d.funnels = append(d.funnels, funnel{f.Name, refs(f.Steps)})
		d.configured += len(f.Steps)
	}
	for _, e := range c.Experiments {
		x := experiment{name: e.Name}
		for _, v := range e.Variants {
			x.variants = append(x.variants, funnel{v.Name, refs(v.Steps)})
			d.configured += len(v.Steps)
		}
		d.experiments = append(d.experiments, x)
	}
	return d
}

type step struct {
	flow, metric string
	at           time.Time
	key          string
	// since, for a metric's first step in its flow (but the flow's
	// first), is the index of the flow's first step; else -1.
	since int32
	// exit, at a flow's first step, is 1 + the index of its last.
	exit int32
}

// Derive implements flowmetrics.Deriver. The path is the conversation's
// keys ordered by attribute time (then by key, so equal times order the
// same way every time). It takes O(k log k) time for k keys plus
// O(k) per configured timing, funnel step and variant step, and a few
// allocations whatever k.
//
//   - exits: per flow, its last metric, stamped at that metric's time;
//   - step timings: per flow, each metric's first occurrence after the
//     flow's first metric, in seconds since it, stamped at the metric's
//     time (the flow's first metric has no timing of its own);
//   - timings: the first "from", then the first "to" after it in the
//     path, stamped at the "to";
//   - funnels and experiment variants: each step reached after the
//     previous one in the path, stamped at the step's time; a variant
//     counts from its first step.
//
// Step timings come first, in path order, then exits in the order their
// flows first appear, then timings, funnels and experiments in the
// configuration's order.
func (d *Deriver) Derive(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
	sc := scratches.Get().(*scratch)
	defer sc.put()
	if cap(sc.path) < len(cp.Keys) {
		sc.path = make([]step, 0, len(cp.Keys))
	}
	path := sc.path[:0]
	names := d.names.get()
	for _, k := range cp.Keys {
		// The memo's flow and metric, shared by the keys of a pair:
		// only the time is parsed of a key whose pair it remembers.
		a, ok := names.ParseName(k)
		if ok {
			path = append(path, step{flow: a.Flow, metric: a.Metric, at: a.Time, key: k, since: -1})
		}
	}
	d.names.put(names)
	if len(path) == 0 {
		return nil
	}
	slices.SortFunc(path, func(x, y step) int {
		if c := x.at.Compare(y.at); c != 0 {
			return c
		}
		return strings.Compare(x.key, y.key)
	})
	sc.path = path
	pairs := markFlows(path, sc)

	out := make([]flowmetrics.PathPoint, 0, pairs+d.configured)
	point := func(p flowmetrics.PathPoint) {
		p.Conversation = cp.ConversationID
		out = append(out, p)
	}
	mapped := func(flow, metric string) (string, string) {
		if d.guard == nil {
			return flow, metric
		}
		return d.guard.Map(flow, metric)
	}

	// Step timings, then exits.
	for _, s := range path {
		if s.since < 0 {
			continue
		}
		fl, m := mapped(s.flow, s.metric)
		point(flowmetrics.PathPoint{Kind: flowmetrics.PathStep, Flow: fl, Metric: m, Seconds: s.at.Sub(path[s.since].at).Seconds(), Time: s.at})
	}
	for _, s := range path {
		if s.exit == 0 {
			continue
		}
		l := path[s.exit-1]
		fl, m := mapped(l.flow, l.metric)
		point(flowmetrics.PathPoint{Kind: flowmetrics.PathExit, Flow: fl, Metric: m, Time: l.at})
	}

	for _, t := range d.timings {
		i := find(path, 0, t.from)
		if i < 0 {
			continue
		}
		j := find(path, i+1, t.to)
		if j < 0 {
			continue
		}
		point(flowmetrics.PathPoint{Kind: flowmetrics.PathTiming, Name: t.name, Seconds: path[j].at.Sub(path[i].at).Seconds(), Time: path[j].at})
	}
	for _, f := range d.funnels {
		walk(path, f.steps, func(label string, at time.Time) {
			point(flowmetrics.PathPoint{Kind: flowmetrics.PathFunnel, Name: f.name, Step: label, Time: at})
		})
	}
	for _, e := range d.experiments {
		for _, v := range e.variants {
			walk(path, v.steps, func(label string, at time.Time) {
				point(flowmetrics.PathPoint{Kind: flowmetrics.PathExperiment, Name: e.name, Variant: v.name, Step: label, Time: at})
			})
		}
	}
	return out
}

// markFlows sets since and exit on path (in time order) and returns the
// number of its distinct flow/metric pairs: one point each, a step timing
// or its flow's exit. It groups the steps by flow and metric with a sort
// of their indexes, O(k log k) for k steps, rather than maps.
func markFlows(path []step, sc *scratch) (pairs int) {
	if cap(sc.idx) < len(path) {
		sc.idx = make([]int32, 0, len(path))
	}
	idx := sc.idx[:0]
	for i := range path {
		idx = append(idx, int32(i))
	}
	sc.idx = idx
	slices.SortFunc(idx, func(x, y int32) int {
		if c := strings.Compare(path[x].flow, path[y].flow); c != 0 {
			return c
		}
		if c := strings.Compare(path[x].metric, path[y].metric); c != 0 {
			return c
		}
		return int(x - y)
	})
	for g := 0; g < len(idx); {
		// One flow: idx[g:e], by metric, each metric's steps in time order.
		flow := path[idx[g]].flow
		e, first, last := g, idx[g], idx[g]
		for ; e < len(idx) && path[idx[e]].flow == flow; e++ {
			first, last = min(first, idx[e]), max(last, idx[e])
		}
		path[first].exit = last + 1
		for i := g; i < e; i++ {
			if i > g && path[idx[i]].metric == path[idx[i-1]].metric {
				continue
			}
			pairs++
			if idx[i] != first {
				path[idx[i]].since = first
			}
		}
		g = e
	}
	return pairs
}

// scratch is what Derive needs only while it runs, kept for the next
// call: a close derives the paths of thousands of conversations.
type scratch struct {
	path []step
	idx  []int32
}

var scratches = sync.Pool{New: func() any { return new(scratch) }}

// put clears the path's strings (the keys of the conversation) and gives
// the scratch back, unless a conversation of many keys made it large.
func (sc *scratch) put() {
	if cap(sc.path) > 64 {
		return
	}
	clear(sc.path)
	scratches.Put(sc)
}

// find returns the index of the first step from index from on matching
// ref, or -1.
func find(path []step, from int, ref stepRef) int {
	for i := from; i < len(path); i++ {
		if path[i].flow == ref.flow && path[i].metric == ref.metric {
			return i
		}
	}
	return -1
}

// walk calls reached for each step of steps the path reaches in order, and
// stops at the first it does not.
func walk(path []step, steps []stepRef, reached func(label string, at time.Time)) {
	i := 0
	for _, s := range steps {
		j := find(path, i, s)
		if j < 0 {
			return
		}
		reached(s.label, path[j].at)
		i = j + 1
	}
}
