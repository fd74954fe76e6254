package corpus

import (
	"container/heap"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// ArchiveOptions shape an archive: what a large contact centre's
// EventBridge archive holds after weeks, many conversations side by side.
type ArchiveOptions struct {
	// Conversations is how many conversations the archive holds; it has
	// about 5.45 events per conversation.
	Conversations int
	// Seed makes the archive reproducible.
	Seed uint64
	// Start is the time of the first conversation (default 2026-11-01 00:00 UTC).
	Start time.Time
	// Gap is the time between the starts of two conversations (default 5 s,
	// so 500,000 conversations span a month and about 60 are under way at
	// any time).
	Gap time.Duration
	// Shuffle writes the events in a random order (the order of a stream
	// assembled from EventBridge retries and several archives) instead of
	// the order of delivery.
	Shuffle bool
}

// ArchiveStats tells what an archive holds.
type ArchiveStats struct {
	Events int
	// Occurrences is the number of distinct well-formed metric attributes
	// per conversation, summed: what exactly-once counting must find.
	Occurrences int
	// MalformedEvents is the number of events carrying a malformed
	// metric-shaped attribute name.
	MalformedEvents int
	Bytes           int64
}

// Shape of an archive conversation. Each step is one attribute update
// carrying every attribute of the participant so far; with probability
// archiveMetricRate it sets a new metric attribute. A delivered event is
// repeated (EventBridge's at-least-once delivery) with probability
// archiveDuplicateRate, up to a minute later. Together: 5 steps and 0.45
// repeats per conversation, 3 new occurrences, ≈ 0.55 per event.
const (
	archiveMinSteps      = 1
	archiveMaxSteps      = 9
	archiveMetricRate    = 0.6
	archiveDuplicateRate = 0.09
	archiveMalformedRate = 0.01 // of conversations: one typo'd metric name
)

var archiveFlows = []struct {
	name    string
	metrics []string
}{
	{"CustomerRouting", []string{"Start", "LanguageSelected", "Authenticated", "Unknown", "Transferred", "QueueFull", "AgentOffered", "Abandoned", "Answered"}},
	{"Billing Main", []string{"Start", "BalanceHeard", "PaymentStarted", "PaymentTaken", "PaymentFailed", "CardDeclined", "ReceiptSent", "Done", "AgentRequested"}},
	{"Bot.Intent-Router", []string{"Start", "IntentMatched", "NoMatch", "Escalated", "Retry", "Confirmed", "Handoff", "Done", "Timeout"}},
	{"Après Vente", []string{"Start", "CallbackRequested", "SurveyOffered", "SurveyDone", "ClaimOpened", "ClaimUpdated", "Escalated", "Done", "Dropped"}},
}

// archiveConv is one conversation, regenerated from (seed, index) alone, so
// a shuffled archive needs no memory per event beyond its order.
type archiveConv struct {
	id    string
	part  string
	base  []attr // ordinary attributes, set before the first step
	steps []archiveStep
	// deliveries are the (time, step) pairs delivered, duplicates included,
	// in time order.
	deliveries []delivery
	// malformedFrom is the first step whose event carries the malformed
	// name (len(steps) when none does).
	malformedFrom int
	occurrences   int
}

type attr struct{ k, v string }

type archiveStep struct {
	at  time.Time
	set attr // the attribute this update sets (a metric, or LastMenu)
}

type delivery struct {
	at   time.Time
	step int
}

func newArchiveConv(o ArchiveOptions, i int) *archiveConv {
	rng := rand.New(rand.NewPCG(o.Seed, uint64(i)))
	c := &archiveConv{
		id:   fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", rng.Uint32(), i&0xffff, i%4096, rng.IntN(4096), rng.Uint64()&0xffffffffffff),
		part: fmt.Sprintf("a1b2c3d4-%04x-4000-8000-%012x", rng.IntN(1<<16), rng.Uint64()&0xffffffffffff),
	}
	for _, k := range ordinary[:8+rng.IntN(len(ordinary)-8)] {
		c.base = append(c.base, attr{k, k + "-" + strconv.Itoa(rng.IntN(1000))})
	}
	f := archiveFlows[rng.IntN(len(archiveFlows))]
	at := o.Start.Add(time.Duration(i)*o.Gap + time.Duration(rng.Int64N(int64(o.Gap))))
	n := archiveMinSteps + rng.IntN(archiveMaxSteps-archiveMinSteps+1)
	c.malformedFrom = n
	if rng.Float64() < archiveMalformedRate {
		c.malformedFrom = rng.IntN(n)
	}
	for s := range n {
		at = at.Add(time.Duration(5+rng.IntN(115)) * time.Second)
		var set attr
		if rng.Float64() < archiveMetricRate {
			set = attr{genesys.AttributeName(f.name, f.metrics[s], at), ""}
			c.occurrences++
		} else {
			set = attr{"LastMenu", "menu-" + strconv.Itoa(s)}
		}
		c.steps = append(c.steps, archiveStep{at, set})
		c.deliveries = append(c.deliveries, delivery{at, s})
		if rng.Float64() < archiveDuplicateRate {
			c.deliveries = append(c.deliveries, delivery{at.Add(time.Duration(1+rng.IntN(60)) * time.Second), s})
		}
	}
	slices.SortStableFunc(c.deliveries, func(a, b delivery) int { return a.at.Compare(b.at) })
	return c
}

// malformedName is a metric attribute with a time that is not RFC 3339 (no
// zone), as a flow author's typo gives.
func (c *archiveConv) malformedName() string {
	return "CustomerRoutingMetric_Typo(" + c.steps[c.malformedFrom].at.Format("2006-01-02T15:04:05") + ")"
}

// appendEvent appends the envelope of step s, delivered at at.
func (c *archiveConv) appendEvent(b []byte, s int) []byte {
	at := c.steps[s].at
	b = append(b, `{"version":"0","id":"`...)
	b = strconv.AppendInt(b, at.UnixNano(), 16)
	b = append(b, `-`...)
	b = append(b, c.id[:8]...)
	b = append(b, `","detail-type":"v2.detail.events.conversation.{id}.attributes","source":"aws.partner/genesys.com/cloud/7d1d0f2a-org/flowmetrics","account":"123456789012","time":"`...)
	b = at.AppendFormat(b, time.RFC3339)
	b = append(b, `","region":"eu-west-1","resources":[],"detail":{"topicName":"v2.detail.events.conversation.`...)
	b = append(b, c.id...)
	b = append(b, `.attributes","version":"2","eventBody":{"eventTime":`...)
	b = strconv.AppendInt(b, at.UnixMilli(), 10)
	b = append(b, `,"conversationId":"`...)
	b = append(b, c.id...)
	b = append(b, `","participantId":"`...)
	b = append(b, c.part...)
	b = append(b, `","attributes":{`...)
	first := true
	kv := func(k, v string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = appendJSONString(b, v)
	}
	for _, a := range c.base {
		kv(a.k, a.v)
	}
	menu := ""
	for _, st := range c.steps[:s+1] {
		if st.set.k == "LastMenu" {
			menu = st.set.v
			continue
		}
		kv(st.set.k, st.set.v)
	}
	if menu != "" {
		kv("LastMenu", menu)
	}
	if s >= c.malformedFrom {
		kv(c.malformedName(), "1")
	}
	b = append(b, `},"conversationExternalContactIds":[],"conversationExternalOrganizationIds":[],"communications":[{"id":"c-`...)
	b = append(b, c.id[:8]...)
	b = append(b, `","mediaType":"VOICE"}]},"metadata":{"CorrelationId":"`...)
	b = append(b, c.id[:8]...)
	b = append(b, `"},"timestamp":"`...)
	b = at.AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	return append(b, "\"}}\n"...)
}

// appendJSONString quotes s as a JSON string; non-ASCII text stays as it is.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = fmt.Appendf(b, `\u%04x`, c)
		case c < utf8.RuneSelf:
			b = append(b, c)
		default:
			r, n := utf8.DecodeRuneInString(s[i:])
			b = utf8.AppendRune(b, r)
			i += n
			continue
		}
		i++
	}
	return append(b, '"')
}

// WriteArchive writes an archive as newline-delimited EventBridge envelopes.
func WriteArchive(w io.Writer, o ArchiveOptions) (ArchiveStats, error) {
	if o.Start.IsZero() {
		o.Start = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	}
	if o.Gap <= 0 {
		o.Gap = 5 * time.Second
	}
	var st ArchiveStats
	buf := make([]byte, 0, 4096)
	emit := func(c *archiveConv, step int) error {
		buf = c.appendEvent(buf[:0], step)
		st.Events++
		st.Bytes += int64(len(buf))
		if step >= c.malformedFrom {
			st.MalformedEvents++
		}
		_, err := w.Write(buf)
		return err
	}
	if o.Shuffle {
		return st, writeShuffled(o, &st, emit)
	}
	return st, writeInOrder(o, &st, emit)
}

// writeInOrder emits every delivery in time order: conversations start one
// after another and overlap, so only those under way are held.
func writeInOrder(o ArchiveOptions, st *ArchiveStats, emit func(*archiveConv, int) error) error {
	var h convHeap
	next := 0
	for next < o.Conversations || h.Len() > 0 {
		// A conversation starts after the previous one's start, and its
		// first delivery is at least 5 s after its start: those that
		// start before the earliest pending delivery are all in the heap.
		for next < o.Conversations && (h.Len() == 0 || !o.Start.Add(time.Duration(next)*o.Gap).After(h[0].c.deliveries[h[0].d].at)) {
			c := newArchiveConv(o, next)
			st.Occurrences += c.occurrences
			heap.Push(&h, &cursor{c: c})
			next++
		}
		cur := h[0]
		if err := emit(cur.c, cur.c.deliveries[cur.d].step); err != nil {
			return err
		}
		if cur.d++; cur.d == len(cur.c.deliveries) {
			heap.Pop(&h)
		} else {
			heap.Fix(&h, 0)
		}
	}
	return nil
}

// writeShuffled emits every delivery in a uniformly random order, holding 8
// bytes per event, not the events.
func writeShuffled(o ArchiveOptions, st *ArchiveStats, emit func(*archiveConv, int) error) error {
	type ref struct{ conv, step uint32 }
	var refs []ref
	for i := range o.Conversations {
		c := newArchiveConv(o, i)
		st.Occurrences += c.occurrences
		for _, d := range c.deliveries {
			refs = append(refs, ref{uint32(i), uint32(d.step)})
		}
	}
	rng := rand.New(rand.NewPCG(o.Seed^0x5bd1e995, o.Seed))
	rng.Shuffle(len(refs), func(i, j int) { refs[i], refs[j] = refs[j], refs[i] })
	for _, r := range refs {
		if err := emit(newArchiveConv(o, int(r.conv)), int(r.step)); err != nil {
			return err
		}
	}
	return nil
}

type cursor struct {
	c *archiveConv
	d int // next delivery
}

type convHeap []*cursor

func (h convHeap) Len() int { return len(h) }
func (h convHeap) Less(i, j int) bool {
	return h[i].c.deliveries[h[i].d].at.Before(h[j].c.deliveries[h[j].d].at)
}
func (h convHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *convHeap) Push(x any)   { *h = append(*h, x.(*cursor)) }
func (h *convHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
