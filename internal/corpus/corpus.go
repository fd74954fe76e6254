// Package corpus generates realistic streams of Genesys Cloud attribute
// events for benchmarks and load tests: conversations pass through a few
// flows, each attribute update carries every attribute of the participant so
// far (as Genesys sends them), most updates bring no new metric attribute,
// and EventBridge's at-least-once delivery repeats some events late.
package corpus

import (
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// Options shape a corpus.
type Options struct {
	// Events is how many events to produce.
	Events int
	// Seed makes the corpus reproducible.
	Seed uint64
	// Start is the time of the first conversation (default 2026-11-20 09:00 UTC).
	Start time.Time
	// DuplicateRate is the share of events delivered twice (default 0.05).
	DuplicateRate float64
	// Ends is the share of conversations that end with a customer.end event
	// (default none), which closes their paths.
	Ends float64
}

var flows = []struct {
	name    string
	metrics []string
}{
	{"CustomerRouting", []string{"Start", "LanguageSelected", "Authenticated", "Unknown", "Transferred", "QueueFull"}},
	{"Billing Main", []string{"Start", "BalanceHeard", "PaymentStarted", "PaymentTaken", "PaymentFailed"}},
	{"Bot.Intent-Router", []string{"Start", "IntentMatched", "NoMatch", "Escalated"}},
	{"Après Vente", []string{"Start", "CallbackRequested", "SurveyDone"}},
}

var ordinary = []string{"Language", "CustomerSegment", "AccountId", "Queue", "Skill", "Priority", "Channel",
	"Region", "CallbackNumber", "IVRPath", "ABGroup", "CRMCaseId", "Authenticated", "BotSession", "LastMenu"}

// Write writes the corpus as newline-delimited EventBridge envelopes and
// returns how many distinct occurrences it holds.
func Write(w io.Writer, o Options) (occurrences int, err error) {
	var werr error
	n := Generate(o, func(b []byte) bool {
		if _, werr = w.Write(append(b, '\n')); werr != nil {
			return false
		}
		return true
	})
	return n, werr
}

// Generate calls fn with each event (an EventBridge envelope as JSON) until
// o.Events were produced or fn returns false, and returns how many distinct
// occurrences the events hold.
func Generate(o Options, fn func([]byte) bool) int {
	if o.Start.IsZero() {
		o.Start = time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	}
	if o.DuplicateRate == 0 {
		o.DuplicateRate = 0.05
	}
	rng := rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))
	// Ends are drawn apart, so a corpus with them holds the same
	// attribute events as one without.
	ends := rand.New(rand.NewPCG(o.Seed^0x5bd1e995, o.Seed))
	produced, occurrences := 0, 0
	var late [][]byte
	for conv := 0; produced < o.Events; conv++ {
		id := fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", rng.Uint32(), conv&0xffff, conv%4096, rng.IntN(4096), rng.Uint64()&0xffffffffffff)
		at := o.Start.Add(time.Duration(conv) * 150 * time.Millisecond)
		attrs := map[string]string{}
		for _, k := range ordinary[:8+rng.IntN(len(ordinary)-8)] {
			attrs[k] = fmt.Sprintf("%s-%d", k, rng.IntN(1000))
		}
		f := flows[rng.IntN(len(flows))]
		steps := 3 + rng.IntN(6)
		for s := 0; s < steps && produced < o.Events; s++ {
			at = at.Add(time.Duration(2+rng.IntN(20)) * time.Second)
			// Roughly half of the updates set a metric attribute; the rest
			// change ordinary attributes only.
			if rng.IntN(2) == 0 {
				m := f.metrics[min(s, len(f.metrics)-1)]
				name := genesys.AttributeName(f.name, m, at)
				if _, dup := attrs[name]; !dup {
					attrs[name] = ""
					occurrences++
				}
			} else {
				attrs["LastMenu"] = fmt.Sprintf("menu-%d", s)
			}
			b := envelope(id, at, attrs)
			if !fn(b) {
				return occurrences
			}
			produced++
			if rng.Float64() < o.DuplicateRate {
				late = append(late, b)
			}
			if len(late) > 0 && rng.IntN(8) == 0 && produced < o.Events {
				if !fn(late[0]) {
					return occurrences
				}
				late = late[1:]
				produced++
			}
		}
		if o.Ends > 0 && produced < o.Events && ends.Float64() < o.Ends {
			if !fn(endEnvelope(id, at.Add(time.Second))) {
				return occurrences
			}
			produced++
		}
	}
	return occurrences
}

func endEnvelope(conv string, at time.Time) []byte {
	return genesys.Envelope{
		Topic: genesys.TopicCustomerEnd, Conversation: conv, Participant: participant(conv), Time: at,
		ID: fmt.Sprintf("e%x", at.UnixNano()),
	}.JSON()
}

func envelope(conv string, at time.Time, attrs map[string]string) []byte {
	return genesys.Envelope{
		Conversation: conv, Participant: participant(conv), Time: at, Attributes: attrs,
		ID: fmt.Sprintf("%x", at.UnixNano()),
	}.JSON()
}

func participant(conv string) string { return "a1b2c3d4-0000-4000-8000-" + conv[len(conv)-12:] }
