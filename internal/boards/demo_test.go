package boards

import (
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/demo"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// TestDemoIncidentsTripTheSpikeAlert: the thresholds and the demo agree.
// Over two hours of demo traffic, every incident makes the spike rule
// (SpikeWindow, SpikeFactor, SpikeMin, the same on both platforms) true for
// Billing Main/PaymentFailed — as Prometheus sees it (counts by delivery
// minute) and as Datadog sees it (counts by attribute minute) — and neither
// is ever true outside an incident.
func TestDemoIncidentsTripTheSpikeAlert(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	const minutes = 120
	if demo.DefaultIncidentEvery != 10*time.Minute || demo.DefaultIncidentLength > 2*time.Minute {
		t.Fatalf("the demo's incidents come every %v for %v; this test expects every 10m for at most 2m", demo.DefaultIncidentEvery, demo.DefaultIncidentLength)
	}
	g := demo.New(demo.Options{Seed: 77}, start)
	byDelivery := map[string][]int{} // flow/metric -> new occurrences per minute
	byTime := map[string][]int{}
	seen := map[string]bool{}
	add := func(m map[string][]int, k string, minute int) {
		if m[k] == nil {
			m[k] = make([]int, minutes)
		}
		if minute >= 0 && minute < minutes {
			m[k][minute]++
		}
	}
	for now := start; now.Before(start.Add(minutes * time.Minute)); now = now.Add(time.Second) {
		for _, b := range g.Next(now) {
			rec := genesys.DecodeValue(b)
			good, _ := genesys.Extract(rec.Event)
			for _, o := range good {
				if k := rec.Event.ConversationID + o.Key; !seen[k] {
					seen[k] = true
					fm := o.Flow + "/" + o.Metric
					add(byDelivery, fm, int(now.Sub(start)/time.Minute))
					add(byTime, fm, int(o.Time.Sub(start)/time.Minute))
				}
			}
		}
	}
	window := func(counts []int, end, n int) int { // the n minutes before minute end
		sum := 0
		for m := max(0, end-n); m < end; m++ {
			sum += counts[m]
		}
		return sum
	}
	spike := func(c []int, m int) bool {
		now, before := window(c, m, SpikeWindow), window(c, m-SpikeWindow, SpikeWindow)
		return now > SpikeFactor*before && before > 0 && now >= SpikeMin
	}
	prom, datadog := spike, spike
	const target = demo.FlowBilling + "/PaymentFailed"
	for incident := 10; incident+5 < minutes; incident += 10 {
		promFired, ddFired := false, false
		for m := incident + 1; m <= incident+6; m++ {
			promFired = promFired || prom(byDelivery[target], m)
			ddFired = ddFired || datadog(byTime[target], m)
		}
		if !promFired || !ddFired {
			t.Errorf("incident at minute %d: Prometheus rule fired %v, Datadog monitor %v; want both (counts by delivery %v)",
				incident, promFired, ddFired, byDelivery[target][incident-10:incident+5])
		}
	}
	// Outside the incidents and the minutes right after, nothing spikes.
	// (In them, the call-backs make Billing Main/Start and the steps after
	// it spike too, as they would.)
	for name, counts := range map[string]map[string][]int{"Prometheus": byDelivery, "Datadog": byTime} {
		for fm, c := range counts {
			for m := 10; m < minutes; m++ {
				if after := m % 10; after >= 1 && after <= SpikeWindow+3 {
					continue
				}
				if spike(c, m) {
					t.Errorf("%s trips the %s spike rule at minute %d: %v", fm, name, m, c[m-10:m])
				}
			}
		}
	}
}
