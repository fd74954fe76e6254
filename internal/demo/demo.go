// Package demo simulates a contact centre's Genesys Cloud traffic, so that a
// new user sees a live picture within a minute of cloning: several flows and
// a bot set flow metric attributes with a daily rhythm, an A/B test splits
// callers between two variants, a payment incident makes one metric spike
// every few minutes, one flow writes a malformed attribute name, and
// EventBridge's at-least-once delivery repeats some events and delivers
// others late. Most conversations end with a customer.end event, so their
// paths close: callers drop out at each step, waits for an agent or a bot
// escalation have a long tail, and variant B of the call-back offer
// converts better than A (PathsConfig is the matching paths section).
//
// Generator produces the events, each exactly as the Genesys Cloud Amazon
// EventBridge integration delivers it (an AttributeUpdateEvent in its
// EventBridge envelope, carrying every attribute of the participant so far).
// It has no clock of its own: Next is given the time, so tests drive it and
// the same seed gives the same events. Each conversation is drawn from the
// seed and the time it starts, not from where the generator started: a
// demo restarted with the same seed posts the same conversations (same ids,
// same attribute names) for the time the two runs share, so its backfill is
// deduplicated by the exactly-once claims instead of counted twice. Run
// posts them through the real ingest path, POST /v1/events.
package demo

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// Options shape the traffic. Zero values take the defaults.
type Options struct {
	// Seed makes the traffic reproducible (default 1).
	Seed uint64
	// Rate is the number of conversations a second at the daily peak
	// (default 2). The daily rhythm lowers it to a quarter at night (UTC).
	Rate float64
	// IncidentEvery is the period of the payment incident (default 10m);
	// it starts at each epoch-aligned multiple and lasts IncidentLength
	// (default 2m). During it, most payments in "Billing Main" fail and
	// callers call back, so Billing Main/PaymentFailed spikes. (Every 10
	// minutes, not 5: the spike alerts compare the last 5 minutes with the
	// 5 before, which must be free of the previous incident.)
	IncidentEvery  time.Duration
	IncidentLength time.Duration
	// SplitA is the share of "Callback Offer" callers in variant A
	// (default 0.5); the rest are in variant B.
	SplitA float64
	// DuplicateRate is the share of events delivered twice (default 0.05).
	DuplicateRate float64
	// LateRate is the share of events delivered late, LateMin to LateMax
	// after their time (default 0.03, 30s to 3m).
	LateRate         float64
	LateMin, LateMax time.Duration
}

// The default incident period and length.
const (
	DefaultIncidentEvery  = 10 * time.Minute
	DefaultIncidentLength = 2 * time.Minute
)

func (o Options) withDefaults() Options {
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Rate <= 0 {
		o.Rate = 2
	}
	if o.IncidentEvery <= 0 {
		o.IncidentEvery = DefaultIncidentEvery
	}
	if o.IncidentLength <= 0 {
		o.IncidentLength = DefaultIncidentLength
	}
	o.IncidentLength = min(o.IncidentLength, o.IncidentEvery)
	if o.SplitA <= 0 || o.SplitA >= 1 {
		o.SplitA = 0.5
	}
	if o.DuplicateRate <= 0 {
		o.DuplicateRate = 0.05
	}
	if o.LateRate <= 0 {
		o.LateRate = 0.03
	}
	if o.LateMin <= 0 {
		o.LateMin = 30 * time.Second
	}
	if o.LateMax <= o.LateMin {
		o.LateMax = max(3*time.Minute, o.LateMin+time.Second)
	}
	return o
}

// The flows of the simulated contact centre. Their names are the Flow part
// of the attribute names; "Après Vente" shows that spaces and non-ASCII
// letters are fine, and is the flow with the malformed attribute.
const (
	FlowRouting  = "CustomerRouting"
	FlowBilling  = "Billing Main"
	FlowBot      = "Bot.Intent-Router"
	FlowCallback = "Callback Offer"
	FlowAfter    = "Après Vente"
)

// Flows lists the simulated flows.
var Flows = []string{FlowRouting, FlowBilling, FlowBot, FlowCallback, FlowAfter}

// Stats counts what a Generator produced.
type Stats struct {
	// Conversations started.
	Conversations int
	// Events is the number of deliveries returned by Next, including
	// duplicates and late ones.
	Events int
	// Duplicates are deliveries that repeat an earlier one; Late are
	// deliveries LateMin or more after their event time.
	Duplicates, Late int
	// Occurrences is the number of distinct well-formed metric attributes
	// delivered (what flowmetrics must count), Malformed the number of
	// distinct malformed ones.
	Occurrences, Malformed int
	// VariantA and VariantB count the Callback Offer conversations in each
	// variant of the A/B test.
	VariantA, VariantB int
	// Ends counts the customer.end events delivered (about nine
	// conversations in ten get one; the others close at the idle timeout).
	Ends int
}

// Generator simulates the traffic. It is not safe for concurrent use.
type Generator struct {
	o   Options
	rng *rand.Rand // the conversation being drawn's own
	// paths draws what only paths use (end events, long waits), so the
	// main sequence, and with it every count, is as it was without them;
	// also the conversation's own.
	paths *rand.Rand
	from  time.Time // no conversation starts before it
	next  time.Time // the next arrival slot to draw
	due   deliveries
	order int
	stats Stats
	seen  map[string]bool // distinct metric attribute names delivered, per conversation; pruned
}

// New returns a Generator whose first conversation starts at start. A start
// in the past backfills: the first call of Next returns everything due
// between start and then (the events of that past, delivered at once).
func New(o Options, start time.Time) *Generator {
	o = o.withDefaults()
	g := &Generator{
		o:    o,
		from: start.UTC(),
		next: start.UTC().Truncate(arrivalSlot),
		seen: map[string]bool{},
	}
	return g
}

// arrivalSlot is the grid of conversation arrivals: the conversations
// starting in each epoch-aligned slot are drawn from a source seeded with
// the seed and the slot's time, and each conversation from one seeded with
// the seed and its start, so two generators with the same seed agree on
// every slot both draw, wherever each started.
const arrivalSlot = time.Second

// mix is SplitMix64's finaliser: nearby times (one slot or one millisecond
// apart) become unrelated seeds, so neighbouring conversations are drawn
// independently.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// drawSlot schedules the conversations starting in the slot at s: a
// Poisson process at the rate of the time of day (and of an incident), its
// arrivals before g.from left out.
func (g *Generator) drawSlot(s time.Time) {
	arrivals := rand.New(rand.NewPCG(mix(g.o.Seed), mix(uint64(s.UnixNano()))))
	end := s.Add(arrivalSlot)
	for t := s; ; {
		t = t.Add(g.interarrival(arrivals, t))
		if !t.Before(end) {
			return
		}
		if t.Before(g.from) {
			continue
		}
		g.rng = rand.New(rand.NewPCG(mix(g.o.Seed^0x9e3779b97f4a7c15), mix(uint64(t.UnixNano()))))
		g.paths = rand.New(rand.NewPCG(mix(g.o.Seed^0x5bd1e995), mix(uint64(t.UnixNano())^0x5bd1e995)))
		g.startConversation(t)
	}
}

// Stats returns the counts so far.
func (g *Generator) Stats() Stats { return g.stats }

// Next advances the simulation to now and returns the events due by then,
// each an EventBridge envelope as JSON, in delivery order.
func (g *Generator) Next(now time.Time) [][]byte {
	for !g.next.After(now) {
		g.drawSlot(g.next)
		g.next = g.next.Add(arrivalSlot)
	}
	var out [][]byte
	for len(g.due) > 0 && !g.due[0].at.After(now) {
		d := heap.Pop(&g.due).(delivery)
		out = append(out, d.body)
		g.stats.Events++
		if d.dup {
			g.stats.Duplicates++
		}
		if d.end {
			g.stats.Ends++
		}
		if d.at.Sub(d.eventTime) >= g.o.LateMin {
			g.stats.Late++
		}
		for _, name := range d.good {
			if k := d.conv + "\x00" + name; !g.seen[k] {
				g.seen[k] = true
				g.stats.Occurrences++
			}
		}
		for _, name := range d.bad {
			if k := d.conv + "\x00" + name; !g.seen[k] {
				g.seen[k] = true
				g.stats.Malformed++
			}
		}
		if d.last {
			// Nothing of this conversation is delivered after its last
			// delivery, so its names can be forgotten: memory stays bounded.
			for _, name := range d.forget {
				delete(g.seen, d.conv+"\x00"+name)
			}
		}
	}
	return out
}

// Pending returns the number of deliveries scheduled after the last Next.
func (g *Generator) Pending() int { return len(g.due) }

// Daily is the daily rhythm: the share of the peak rate at t's time of day
// (UTC), from 0.25 at night to 1 at 10:00 and 15:00, with a lunch dip.
func Daily(t time.Time) float64 {
	h := float64(t.UTC().Hour()) + float64(t.UTC().Minute())/60
	bump := func(centre, width float64) float64 {
		d := (h - centre) / width
		return math.Exp(-d * d / 2)
	}
	return min(1, 0.25+0.75*max(bump(10, 1.8), 0.9*bump(15, 2)))
}

// Incident reports whether t is inside an incident window.
func (g *Generator) Incident(t time.Time) bool {
	return t.UnixNano()%int64(g.o.IncidentEvery) < int64(g.o.IncidentLength)
}

func (g *Generator) interarrival(rng *rand.Rand, t time.Time) time.Duration {
	rate := g.o.Rate * Daily(t)
	if g.Incident(t) {
		// Callers whose payment failed call back.
		rate *= 1.5
	}
	sec := rng.ExpFloat64() / rate
	return max(time.Millisecond, time.Duration(sec*float64(time.Second)))
}

// step is one attribute update of a conversation: the metric attributes it
// adds (possibly none), after a delay from the previous step.
type step struct {
	metrics   []string
	malformed bool
}

func (g *Generator) pick(p float64) bool { return g.rng.Float64() < p }

// script decides a conversation's path through its flow.
func (g *Generator) script(flow string, at time.Time) (steps []step, variant string) {
	m := func(names ...string) step { return step{metrics: names} }
	switch flow {
	case FlowRouting:
		s := []step{m("Start"), m("LanguageSelected")}
		if g.pick(0.7) {
			s = append(s, m("Authenticated"))
		} else {
			s = append(s, step{})
		}
		switch r := g.rng.Float64(); {
		case r < 0.6:
			s = append(s, m("Transferred"))
		case r < 0.8:
			s = append(s, m("SelfServiceDone"))
		case r < 0.92:
			s = append(s, m("Unknown"))
		default:
			s = append(s, m("QueueFull"))
		}
		return s, ""
	case FlowBilling:
		s := []step{m("Start"), m("BalanceHeard")}
		if g.pick(0.6) {
			s = append(s, m("PaymentStarted"))
			fail := 0.05
			if g.Incident(at) {
				fail = 0.8
			}
			if g.pick(fail) {
				s = append(s, m("PaymentFailed"))
			} else {
				s = append(s, m("PaymentTaken"))
			}
		}
		return s, ""
	case FlowBot:
		s := []step{m("Start")}
		if g.pick(0.75) {
			s = append(s, m("IntentMatched"))
			if g.pick(0.2) {
				s = append(s, m("Escalated"))
			}
		} else {
			s = append(s, m("NoMatch"), m("Escalated"))
		}
		return s, ""
	case FlowCallback:
		variant, accept := "B", 0.5
		if g.pick(g.o.SplitA) {
			variant, accept = "A", 0.25
			g.stats.VariantA++
		} else {
			g.stats.VariantB++
		}
		s := []step{m("Offered" + variant)}
		if g.pick(accept) {
			s = append(s, m("Accepted"+variant))
		} else {
			s = append(s, m("Declined"+variant))
		}
		return s, variant
	default: // FlowAfter
		s := []step{m("Start")}
		if g.pick(0.5) {
			s = append(s, m("SurveyStarted"))
			// A flow author built the survey attribute from a date-time
			// without ToString's ISO format: a malformed name the
			// dashboard and the malformed counter show.
			s = append(s, step{metrics: []string{"SurveyDone"}, malformed: g.pick(0.3)})
		}
		return s, ""
	}
}

// flowWeights are the shares of conversations entering each flow.
var flowWeights = []struct {
	flow   string
	weight float64
}{
	{FlowRouting, 0.35}, {FlowBilling, 0.2}, {FlowBot, 0.2}, {FlowCallback, 0.15}, {FlowAfter, 0.1},
}

func (g *Generator) chooseFlow(at time.Time) string {
	r := g.rng.Float64()
	if g.Incident(at) && r < 0.3 {
		return FlowBilling // the call-backs
	}
	r = g.rng.Float64()
	for _, f := range flowWeights {
		if r < f.weight {
			return f.flow
		}
		r -= f.weight
	}
	return FlowRouting
}

var ordinary = []string{"Language", "CustomerSegment", "AccountId", "Queue", "Channel", "Region", "IVRPath", "CRMCaseId"}

// startConversation schedules every delivery of a conversation starting at
// start.
func (g *Generator) startConversation(start time.Time) {
	g.stats.Conversations++
	id := fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", g.rng.Uint32(), g.rng.IntN(0x10000), g.rng.IntN(4096), g.rng.IntN(4096), g.rng.Uint64()&0xffffffffffff)
	participant := uuid(g.rng)
	flow := g.chooseFlow(start)
	attrs := map[string]string{}
	for _, k := range ordinary[:3+g.rng.IntN(len(ordinary)-3)] {
		attrs[k] = fmt.Sprintf("%s-%d", k, g.rng.IntN(1000))
	}
	steps, variant := g.script(flow, start)
	if variant != "" {
		attrs["ABGroup"] = variant
	}
	var good, bad []string // the conversation's metric attribute names so far
	var scheduled []*delivery
	at := start
	for i, s := range steps {
		if i > 0 {
			at = at.Add(time.Duration(2000+g.rng.IntN(18000)) * time.Millisecond)
			if len(s.metrics) > 0 && longWait[flow+"/"+s.metrics[0]] {
				at = at.Add(g.wait())
			}
		}
		for _, metric := range s.metrics {
			if s.malformed {
				name := fmt.Sprintf("%sMetric_%s(%s)", flow, metric, at.Format("2006-01-02 15:04:05"))
				bad = append(bad, name)
				attrs[name] = "1"
			} else {
				name := genesys.AttributeName(flow, metric, at)
				good = append(good, name)
				attrs[name] = "1"
			}
		}
		attrs["LastMenu"] = fmt.Sprintf("menu-%d", i)
		// Genesys sends every attribute of the participant, changed or not,
		// so each event carries the names of the steps before it too.
		d := &delivery{
			at:        at,
			eventTime: at,
			conv:      id,
			body:      envelope(g.rng, id, participant, at, attrs),
			good:      slices.Clone(good),
			bad:       slices.Clone(bad),
		}
		if g.pick(g.o.LateRate) {
			d.at = at.Add(g.o.LateMin + time.Duration(g.rng.Int64N(int64(g.o.LateMax-g.o.LateMin))))
		}
		scheduled = append(scheduled, d)
		if g.pick(g.o.DuplicateRate) {
			dup := *d
			dup.dup = true
			dup.at = d.at.Add(time.Duration(100+g.rng.IntN(5000)) * time.Millisecond)
			scheduled = append(scheduled, &dup)
		}
	}
	if g.paths.Float64() < 0.9 {
		// The caller hangs up a little after the last step (a late
		// delivery of the last attributes comes after it).
		end := at.Add(time.Duration(1000+g.paths.IntN(30000)) * time.Millisecond)
		scheduled = append(scheduled, &delivery{at: end, eventTime: end, conv: id, body: endEnvelope(g.paths, id, participant, end), end: true})
	}
	last := scheduled[0]
	for _, d := range scheduled {
		if !d.at.Before(last.at) {
			last = d
		}
	}
	last.last = true
	// The last delivery forgets the conversation's names (see Next), even
	// when it is the end event, which carries none.
	last.forget = slices.Concat(good, bad)
	for _, d := range scheduled {
		g.order++
		d.order = g.order
		heap.Push(&g.due, *d)
	}
}

type delivery struct {
	at        time.Time // when it is delivered
	eventTime time.Time
	order     int // ties keep scheduling order, so output is deterministic
	conv      string
	body      []byte
	dup       bool
	good, bad []string // the well-formed and malformed metric names it carries
	last      bool     // the conversation's last delivery
	forget    []string // with last: every name of the conversation
	end       bool     // a customer.end event
}

type deliveries []delivery

func (h deliveries) Len() int { return len(h) }
func (h deliveries) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].order < h[j].order
}
func (h deliveries) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *deliveries) Push(x any)   { *h = append(*h, x.(delivery)) }
func (h *deliveries) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// longWait are the steps that follow a wait with a long tail: the queue
// before an agent takes a transferred call, a bot's hand-over to an agent.
var longWait = map[string]bool{FlowRouting + "/Transferred": true, FlowBot + "/Escalated": true}

// wait is a queue wait: log-normal around half a minute, so most are short
// and a few take many minutes (capped at 45).
func (g *Generator) wait() time.Duration {
	sec := math.Exp(math.Log(30) + 1.1*g.paths.NormFloat64())
	return time.Duration(min(sec, 2700) * float64(time.Second))
}

// endEnvelope is a customer.end event (the customer left the conversation).
func endEnvelope(rng *rand.Rand, conv, participant string, at time.Time) []byte {
	// The ids are drawn in the order they are written, so a seed gives the
	// same events as it always has.
	id, session, correlation := uuid(rng), uuid(rng), uuid(rng)
	return genesys.Envelope{
		Topic: genesys.TopicCustomerEnd, Conversation: conv, Participant: participant, Time: at,
		ID: id, Source: source, Region: region, Session: session, CorrelationID: correlation,
	}.JSON()
}

// The demo's organisation and AWS region.
const (
	source = "aws.partner/genesys.com/cloud/8c1f0f2a-1111-4c2b-9e55-0a0b0c0d0e0f/flowmetrics-demo"
	region = "eu-west-2"
)

func uuid(rng *rand.Rand) string {
	return fmt.Sprintf("%08x-%04x-4%03x-a%03x-%012x", rng.Uint32(), rng.IntN(0x10000), rng.IntN(4096), rng.IntN(4096), rng.Uint64()&0xffffffffffff)
}

func envelope(rng *rand.Rand, conv, participant string, at time.Time, attrs map[string]string) []byte {
	id, communication, correlation := uuid(rng), uuid(rng), uuid(rng)
	return genesys.Envelope{
		Conversation: conv, Participant: participant, Time: at, Attributes: attrs,
		ID: id, Source: source, Region: region, Communication: communication, CorrelationID: correlation,
	}.JSON()
}
