package dashboard

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/servetest"
)

// journey is one conversation's path through a flow: the metrics it writes,
// in order, a few seconds apart.
type journey struct {
	flow    string
	metrics []string
}

// traffic builds the events of `span` of realistic contact-centre traffic
// ending at now: four flows (one a bot), a daily rhythm, an A/B split, an
// incident on CustomerRouting in the last minutes, malformed attribute
// names (several sightings of a few distinct names) and duplicate
// deliveries. perMin is the conversations per minute at the rhythm's mean.
func traffic(now time.Time, span time.Duration, perMin float64, seed uint64) []string {
	rnd := rand.New(rand.NewPCG(seed, 7))
	var out []string
	n := 0
	typo := false
	for t := now.Add(-span); t.Before(now); t = t.Add(time.Minute) {
		// A daily rhythm: busier towards midday, and some noise.
		h := float64(t.Hour()) + float64(t.Minute())/60
		rate := perMin * (0.6 + 0.5*math.Sin((h-8)/24*2*math.Pi))
		incident := now.Sub(t) < 12*time.Minute && now.Sub(t) > 4*time.Minute
		for i := 0; i < int(rate+rnd.Float64()); i++ {
			at := t.Add(time.Duration(rnd.IntN(60)) * time.Second)
			n++
			conv := fmt.Sprintf("%08x-0000-4000-8000-%012d", seed, n)
			var j journey
			switch r := rnd.IntN(10); {
			case r < 4:
				j = journey{"CustomerRouting", []string{"Start"}}
				switch x := rnd.IntN(10); {
				case incident && x < 6:
					j.metrics = append(j.metrics, "Abandoned")
				case x < 7:
					j.metrics = append(j.metrics, "Transferred")
				case x < 9:
					j.metrics = append(j.metrics, "Abandoned")
				default:
					j.metrics = append(j.metrics, "Unknown")
				}
			case r < 6:
				j = journey{"Billing Main", []string{"Start", "PaymentTaken"}}
				if rnd.IntN(8) == 0 {
					j.metrics[1] = "PaymentFailed"
				}
			case r < 8:
				v := "OfferA"
				if rnd.IntN(2) == 0 {
					v = "OfferB"
				}
				j = journey{"Sales Inbound", []string{"Start", v}}
				if (v == "OfferA" && rnd.IntN(4) == 0) || (v == "OfferB" && rnd.IntN(3) == 0) {
					j.metrics = append(j.metrics, "Converted")
				}
			default:
				j = journey{"Support Bot", []string{"BotStarted"}}
				switch x := rnd.IntN(10); {
				case x < 5:
					j.metrics = append(j.metrics, "Resolved")
				case x < 8:
					j.metrics = append(j.metrics, "Handoff")
				default:
					j.metrics = append(j.metrics, "Misunderstood", "Handoff")
				}
			}
			attrs := map[string]string{"Language": "en-GB"}
			for k, m := range j.metrics {
				mt := at.Add(time.Duration(k*15) * time.Second)
				if mt.After(now) {
					mt = now
				}
				attrs[servetest.Attr(j.flow, m, mt)] = ""
			}
			// A typo in a Billing flow version, seen again and again; at
			// least once, however quiet the hour (the rate follows the
			// clock), so the malformed view always has a name to show.
			if j.flow == "Billing Main" && (rnd.IntN(15) == 0 || !typo) {
				typo = true
				attrs["Billing MainMetric_PaymentTaken("+at.UTC().Format("2006-01-02 15:04:05Z")+")"] = ""
			}
			if j.flow == "Sales Inbound" && rnd.IntN(25) == 0 {
				attrs["Sales InboundMetric_Converted(today)"] = ""
			}
			ev := servetest.Event(conv, at, attrs)
			out = append(out, ev)
			if rnd.IntN(20) == 0 {
				out = append(out, ev) // a duplicate delivery
			}
		}
	}
	return out
}
