package demo

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

// drive calls Next every step from start to end and hands each event to fn
// with the time it was delivered.
func drive(g *Generator, start, end time.Time, step time.Duration, fn func(now time.Time, body []byte)) {
	for now := start; !now.After(end); now = now.Add(step) {
		for _, b := range g.Next(now) {
			fn(now, b)
		}
	}
}

func decode(t *testing.T, b []byte) *genesys.Event {
	t.Helper()
	rec := genesys.DecodeValue(b)
	if rec.Outcome != genesys.Accepted {
		t.Fatalf("event decodes as %v (%v), want accepted: %s", rec.Outcome, rec.Err, b)
	}
	return rec.Event
}

func TestEventsAreGenesysEventBridgeEvents(t *testing.T) {
	t.Parallel()
	g := New(Options{Seed: 7}, t0)
	occs := map[string]bool{}
	malformed := map[string]bool{}
	flows := map[string]bool{}
	events := 0
	ends := 0
	drive(g, t0, t0.Add(20*time.Minute), time.Second, func(now time.Time, b []byte) {
		events++
		if bytes.Contains(b, []byte(`"detail-type":"v2.detail.events.conversation.{id}.customer.end"`)) {
			// A customer.end: its conversation's path closes.
			if ev := decode(t, b); !ev.Ended || ev.EventTime.After(now) {
				t.Fatalf("customer.end decodes as %+v at %v, want an end not after its delivery", ev, now)
			}
			ends++
			return
		}
		// Every field of DESIGN.md's envelope is there, with the literal
		// {id} in detail-type.
		for _, field := range []string{`"version":"0"`, `"detail-type":"v2.detail.events.conversation.{id}.attributes"`,
			`"source":"aws.partner/genesys.com/cloud/`, `"account":`, `"region":`, `"resources":[]`,
			`"topicName":"v2.detail.events.conversation.`, `"eventTime":`, `"participantId":`,
			`"conversationExternalContactIds":[]`, `"communications":[{`, `"metadata":{"CorrelationId":`, `"timestamp":`} {
			if !bytes.Contains(b, []byte(field)) {
				t.Fatalf("event lacks %s: %s", field, b)
			}
		}
		ev := decode(t, b)
		if ev.EventTime.After(now) {
			t.Fatalf("event of %v delivered at %v, before it happened", ev.EventTime, now)
		}
		good, bad := genesys.Extract(ev)
		for _, o := range good {
			// Attribute times are the event's own time, as a flow using
			// GetCurrentDateTimeUtc() writes them (an event also carries
			// the attributes of earlier steps, which are older).
			if o.Time.After(ev.EventTime) {
				t.Fatalf("attribute %s is later than its event %v", o.Key, ev.EventTime)
			}
			occs[ev.ConversationID+"/"+o.Key] = true
			flows[o.Flow] = true
		}
		for _, m := range bad {
			if m.Flow != FlowAfter {
				t.Errorf("malformed %q has flow %q, want %q", m.Name, m.Flow, FlowAfter)
			}
			malformed[ev.ConversationID+"/"+m.Name] = true
		}
	})
	st := g.Stats()
	t.Logf("20 min: %d events, %d occurrences, %d malformed", events, len(occs), len(malformed))
	if events != st.Events {
		t.Errorf("got %d events, stats say %d", events, st.Events)
	}
	if ends != st.Ends || float64(ends) < 0.8*float64(st.Conversations) {
		t.Errorf("got %d customer.end events, stats say %d, of %d conversations (want about 9 in 10)", ends, st.Ends, st.Conversations)
	}
	if len(occs) != st.Occurrences || len(occs) < 1000 {
		t.Errorf("got %d distinct occurrences, stats say %d (want ≥ 1000)", len(occs), st.Occurrences)
	}
	if len(malformed) != st.Malformed || len(malformed) == 0 {
		t.Errorf("got %d distinct malformed names, stats say %d (want > 0)", len(malformed), st.Malformed)
	}
	for _, f := range Flows {
		if !flows[f] {
			t.Errorf("no occurrence of flow %q in 20 minutes", f)
		}
	}
}

func TestLiveEventsCarryTheTimeOfNow(t *testing.T) {
	g := New(Options{Seed: 3}, t0)
	const tick = 250 * time.Millisecond
	onTime, late := 0, 0
	drive(g, t0, t0.Add(5*time.Minute), tick, func(now time.Time, b []byte) {
		ev := decode(t, b)
		newest := time.Time{}
		good, _ := genesys.Extract(ev)
		for _, o := range good {
			if o.Time.After(newest) {
				newest = o.Time
			}
		}
		if newest.IsZero() {
			return
		}
		if lag := now.Sub(newest); lag < tick+5*time.Second {
			// +5 s: a duplicate is delivered up to 5.1 s after the original.
			onTime++
		} else {
			late++
		}
	})
	if onTime == 0 || float64(late) > 0.06*float64(onTime+late) {
		t.Errorf("got %d events on time and %d late, want ≤ 6%% late", onTime, late)
	}
}

func TestABSplit(t *testing.T) {
	t.Parallel()
	for _, split := range []float64{0.5, 0.2} {
		g := New(Options{Seed: 11, SplitA: split, Rate: 5}, t0)
		a, b := 0, 0
		drive(g, t0, t0.Add(time.Hour), 10*time.Second, func(_ time.Time, body []byte) {
			ev := decode(t, body)
			good, _ := genesys.Extract(ev)
			for _, o := range good {
				// Each conversation offers once; count the first step only.
				if o.Flow == FlowCallback && o.Metric == "OfferedA" && len(good) == 1 {
					a++
				}
				if o.Flow == FlowCallback && o.Metric == "OfferedB" && len(good) == 1 {
					b++
				}
			}
		})
		st := g.Stats()
		n := st.VariantA + st.VariantB
		t.Logf("split %.2f: %d A, %d B; events offer A %d, B %d", split, st.VariantA, st.VariantB, a, b)
		if got := float64(st.VariantA) / float64(n); math.Abs(got-split) > 0.03 || n < 2000 {
			t.Errorf("split %.2f: got %d A of %d conversations (%.3f), want %.2f ± 0.03", split, st.VariantA, n, got, split)
		}
		// What the events say agrees (duplicates and late ones included,
		// so only roughly).
		if got := float64(a) / float64(a+b); math.Abs(got-split) > 0.04 {
			t.Errorf("split %.2f: events offer A %d times and B %d times (%.3f)", split, a, b, got)
		}
	}
}

func TestDuplicatesAndLateDeliveries(t *testing.T) {
	t.Parallel()
	o := Options{Seed: 5, Rate: 5, DuplicateRate: 0.05, LateRate: 0.03}
	g := New(o, t0)
	seen := map[string]bool{}
	dups, late, events, ends := 0, 0, 0, 0
	drive(g, t0, t0.Add(time.Hour), time.Second, func(now time.Time, b []byte) {
		events++
		if seen[string(b)] {
			dups++
		}
		seen[string(b)] = true
		ev := decode(t, b)
		if ev.Ended {
			ends++ // never repeated nor late: the rates are of attribute events
		} else if now.Sub(ev.EventTime) >= 30*time.Second {
			late++
		}
	})
	st := g.Stats()
	t.Logf("%d events: %d duplicates, %d late", events, dups, late)
	if dups != st.Duplicates || late != st.Late || events != st.Events {
		t.Errorf("counted %d duplicates, %d late of %d; stats say %d, %d of %d", dups, late, events, st.Duplicates, st.Late, st.Events)
	}
	if ends != st.Ends || ends == 0 {
		t.Errorf("counted %d customer.end events; stats say %d", ends, st.Ends)
	}
	events -= ends
	if got := float64(dups) / float64(events-dups); math.Abs(got-o.DuplicateRate) > 0.005 {
		t.Errorf("got %.4f of events repeated, want %.3f ± 0.005", got, o.DuplicateRate)
	}
	if got := float64(late) / float64(events); math.Abs(got-o.LateRate) > 0.005 {
		t.Errorf("got %.4f of deliveries late, want %.3f ± 0.005", got, o.LateRate)
	}
	if g.Pending() > 5000 {
		t.Errorf("%d deliveries pending: the schedule should only hold the next few minutes", g.Pending())
	}
}

func TestIncidentSpike(t *testing.T) {
	t.Parallel()
	g := New(Options{Seed: 9}, t0)
	perMinute := map[time.Time]int{}
	drive(g, t0, t0.Add(time.Hour), time.Second, func(_ time.Time, b []byte) {
		good, _ := genesys.Extract(decode(t, b))
		for _, o := range good {
			if o.Flow == FlowBilling && o.Metric == "PaymentFailed" && len(good) == 4 {
				perMinute[o.Time.Truncate(time.Minute)]++
			}
		}
	})
	in, out, nIn, nOut := 0, 0, 0, 0
	for m := t0; m.Before(t0.Add(time.Hour)); m = m.Add(time.Minute) {
		// Payments fail in the minute a conversation starts in the incident
		// window and finish up to a minute later.
		switch m.Minute() % 10 {
		case 0, 1, 2:
			in += perMinute[m]
			nIn++
		case 4, 5, 6, 7, 8, 9:
			out += perMinute[m]
			nOut++
		}
	}
	rateIn, rateOut := float64(in)/float64(nIn), float64(out)/float64(nOut)
	t.Logf("PaymentFailed a minute: %.1f in incidents, %.1f outside", rateIn, rateOut)
	if rateIn < 5*max(rateOut, 0.5) {
		t.Errorf("PaymentFailed: %.1f a minute in incidents, %.1f outside; want a spike of ≥ 5×", rateIn, rateOut)
	}
}

func TestDailyRhythm(t *testing.T) {
	t.Parallel()
	count := func(hour int) int {
		start := time.Date(2026, 12, 1, hour, 0, 0, 0, time.UTC)
		g := New(Options{Seed: 2}, start)
		g.Next(start.Add(time.Hour))
		return g.Stats().Conversations
	}
	night, peak := count(2), count(10)
	t.Logf("conversations an hour: %d at night, %d at the peak", night, peak)
	if float64(peak) < 3*float64(night) || night == 0 {
		t.Errorf("got %d conversations 02:00–03:00 and %d 10:00–11:00, want the peak ≥ 3× the night", night, peak)
	}
}

func TestSameSeedSameEvents(t *testing.T) {
	run := func(seed uint64) []byte {
		g := New(Options{Seed: seed}, t0)
		var out bytes.Buffer
		drive(g, t0, t0.Add(5*time.Minute), 500*time.Millisecond, func(_ time.Time, b []byte) {
			out.Write(b)
			out.WriteByte('\n')
		})
		return out.Bytes()
	}
	a, b, c := run(1), run(1), run(2)
	if !bytes.Equal(a, b) {
		t.Error("two generators with seed 1 gave different events")
	}
	if bytes.Equal(a, c) || len(a) == 0 {
		t.Error("seeds 1 and 2 gave the same events")
	}
}

func TestBackfillDeliversThePastAtOnce(t *testing.T) {
	t.Parallel()
	now := t0
	g := New(Options{Seed: 4}, now.Add(-55*time.Minute))
	events := g.Next(now)
	oldest := now
	for _, b := range events {
		if et := decode(t, b).EventTime; et.Before(oldest) {
			oldest = et
		}
	}
	if len(events) < 1000 || now.Sub(oldest) < 50*time.Minute || now.Sub(oldest) > 55*time.Minute {
		t.Errorf("backfill: got %d events from %v before now, want ≥ 1000 from 50–55 min before", len(events), now.Sub(oldest))
	}
	if !strings.Contains(string(events[0]), `"eventTime":`) {
		t.Errorf("first event %s", events[0])
	}
}
