package dashboard

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"
)

// event is one Genesys attributes event as EventBridge delivers it: a
// conversation's whole attribute map.
func event(conv string, at time.Time, attrs map[string]string) string {
	ev := map[string]any{
		"version": "0", "id": "ev-" + conv + "-" + fmt.Sprint(at.UnixNano()),
		"detail-type": "v2.detail.events.conversation.{id}.attributes",
		"source":      "aws.partner/genesys.com/cloud/org/flow-metrics",
		"time":        at.UTC().Format(time.RFC3339),
		"detail": map[string]any{
			"topicName": "v2.detail.events.conversation." + conv + ".attributes",
			"version":   "2",
			"eventBody": map[string]any{
				"eventTime": at.UnixMilli(), "conversationId": conv, "participantId": "p-" + conv[:8],
				"attributes": attrs,
			},
		},
	}
	b, _ := json.Marshal(ev)
	return string(b)
}

// attr is a flow metric attribute name as a flow writes it.
func attr(flow, metric string, at time.Time) string {
	return flow + "Metric_" + metric + "(" + at.UTC().Format("2006-01-02T15:04:05.000Z") + ")"
}

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
				attrs[attr(j.flow, m, mt)] = ""
			}
			// A typo in a Billing flow version, seen again and again.
			if j.flow == "Billing Main" && rnd.IntN(15) == 0 {
				attrs["Billing MainMetric_PaymentTaken("+at.UTC().Format("2006-01-02 15:04:05Z")+")"] = ""
			}
			if j.flow == "Sales Inbound" && rnd.IntN(25) == 0 {
				attrs["Sales InboundMetric_Converted(today)"] = ""
			}
			ev := event(conv, at, attrs)
			out = append(out, ev)
			if rnd.IntN(20) == 0 {
				out = append(out, ev) // a duplicate delivery
			}
		}
	}
	return out
}

// post sends events to serve's /v1/events in batches.
func post(t *testing.T, addr string, events []string) {
	t.Helper()
	for len(events) > 0 {
		k := min(len(events), 500)
		body := strings.Join(events[:k], "\n") + "\n"
		events = events[k:]
		resp, err := http.Post("http://"+addr+"/v1/events", "application/x-ndjson", bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatalf("post events: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			t.Fatalf("post events: got %s, want 2xx", resp.Status)
		}
	}
}
