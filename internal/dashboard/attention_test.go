package dashboard

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/demo"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

func TestAssess(t *testing.T) {
	for _, tc := range []struct {
		name       string
		now        int64   // occurrences in the last minute
		usual      float64 // per minute
		trend      string
		ratio      float64
		flaggedFor bool
	}{
		{"no history", 40, -1, TrendNew, -1, false},
		{"quiet", 0, 0, TrendQuiet, -1, false},
		{"activity where usually none", 4, 0, TrendUp, -1, true},
		{"a little activity where usually none", 2, 0, TrendLow, -1, false},
		{"as usual", 10, 10, TrendUsual, 1, false},
		// The figure shown is the figure compared: 1.45 shows as 1.5 and
		// is up, 1.44 shows as 1.4 and is usual.
		{"rounds up to the threshold", 145, 100, TrendUp, 1.5, true},
		{"rounds down below it", 144, 100, TrendUsual, 1.4, false},
		{"rounds down to the low threshold", 54, 100, TrendDown, 0.5, true},
		{"rounds up above it", 55, 100, TrendUsual, 0.6, false},
		// Minimum volume: 0.2 a minute usually, none now, is chance.
		{"too few to tell a drop", 0, 0.2, TrendLow, 0, false},
		{"too few to tell a rise", 2, 0.5, TrendLow, 4, false},
		// 3 × √4 = 6: 10 is 6 above 4.
		{"a rise beyond chance", 10, 4, TrendUp, 2.5, true},
		{"a rise within chance", 9, 4, TrendLow, 2.3, false},
		{"a drop beyond chance", 0, 9, TrendDown, 0, true},
		{"a drop within chance", 0, 8, TrendLow, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Assess(PairSeries{NowCount: tc.now, NowMinutes: 1, RateNow: float64(tc.now), RateUsual: tc.usual})
			if got.Trend != tc.trend || got.Ratio != tc.ratio || got.Flagged() != tc.flaggedFor {
				t.Errorf("now %d, usual %v/min: got %+v (flagged %v), want %s, ratio %v, flagged %v", tc.now, tc.usual, got, got.Flagged(), tc.trend, tc.ratio, tc.flaggedFor)
			}
		})
	}
}

func TestAttentionOrder(t *testing.T) {
	s := Series{Pairs: []PairSeries{
		{Flow: "A", Metric: "calm", NowCount: 10, RateUsual: 10, NowMinutes: 1},
		{Flow: "A", Metric: "double", NowCount: 40, RateUsual: 20, NowMinutes: 1},
		{Flow: "B", Metric: "new", NowCount: 5, RateUsual: 0, NowMinutes: 1},
		{Flow: "B", Metric: "quarter", NowCount: 10, RateUsual: 40, NowMinutes: 1},
		{Flow: "C", Metric: "triple", NowCount: 60, RateUsual: 20, NowMinutes: 1},
		{Flow: "C", Metric: "few", NowCount: 3, RateUsual: 1, NowMinutes: 1},
	}}
	var got []string
	for _, p := range Attention(s) {
		got = append(got, p.Flow+"/"+p.Metric)
	}
	// ln 4 > ln 3 > ln 2: a quarter is further from usual than three times.
	want := []string{"B/new", "B/quarter", "C/triple", "A/double"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

// TestAttentionDemoIncident drives the demo's traffic (internal/demo, the
// traffic of serve --demo) through a Recorder on a simulated clock, at night
// (a quarter of the peak rate), at the daily peak and in the afternoon, and
// reads the attention list every 5 s. The demo's payment incident sends
// callers back to Billing Main, where payments fail (a payment fails 6 to
// 60 s into a conversation): each incident must put a Billing Main metric
// on the list as up within a minute of its start (within two at night,
// when a minute holds a handful of occurrences), and a Billing Main metric
// may be flagged on at most 1 % of the reads outside incidents (from 2
// minutes after one ends; the last minute's rate needs that to settle).
func TestAttentionDemoIncident(t *testing.T) {
	if testing.Short() {
		t.Skip("simulates four hours of demo traffic")
	}
	for _, tc := range []struct {
		start  time.Time
		within time.Duration
	}{
		{time.Date(2026, 12, 1, 1, 0, 0, 0, time.UTC), 2 * time.Minute}, // night
		{time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC), time.Minute},     // peak
		{time.Date(2026, 12, 1, 13, 0, 0, 0, time.UTC), time.Minute},    // afternoon
	} {
		start := tc.start
		t.Run(start.Format("15h"), func(t *testing.T) {
			c := &clock{t: start}
			rec := NewRecorder(c.Now)
			g := demo.New(demo.Options{}, start)
			seen := map[string]bool{}
			every, length := demo.DefaultIncidentEvery, demo.DefaultIncidentLength
			var took []time.Duration
			falseFlags, reads := 0, 0
			var incident time.Time // start of the incident not yet flagged
			end := start.Add(UsualSpan + 45*time.Minute)
			for now := start; now.Before(end); now = now.Add(5 * time.Second) {
				c.Set(now)
				var pts []flowmetrics.Point
				for _, body := range g.Next(now) {
					rc := genesys.DecodeValue(body)
					if rc.Event == nil {
						continue
					}
					occ, _ := genesys.Extract(rc.Event)
					for _, o := range occ {
						if k := rc.Event.ConversationID + "\x00" + o.Key; !seen[k] {
							seen[k] = true // exactly once, as the store claims
							pts = append(pts, flowmetrics.Point{Flow: o.Flow, Metric: o.Metric, Bucket: flowmetrics.BucketStart(o.Time, FineStep), Width: FineStep, Count: 1})
						}
					}
				}
				rec.Send(context.Background(), pts)
				if now.Before(start.Add(UsualSpan)) {
					continue // the usual rate needs its hour
				}
				flagged := false
				for _, p := range Attention(rec.Read(Ranges[0])) {
					if p.Flow == demo.FlowBilling && Assess(p).Trend == TrendUp {
						flagged = true
					}
				}
				since := time.Duration(now.UnixNano() % int64(every))
				switch {
				case since < length:
					if since == 0 {
						incident = now
					}
					if flagged && !incident.IsZero() {
						took = append(took, now.Sub(incident))
						incident = time.Time{}
					}
				case since >= length+2*time.Minute:
					reads++
					if flagged {
						falseFlags++
					}
				}
			}
			t.Logf("incidents flagged after %v (at most %v); Billing Main flagged on %d of %d reads outside incidents", took, slices.Max(took), falseFlags, reads)
			if len(took) < 4 {
				t.Errorf("flagged %d of the incidents, want all 4 or more: %v", len(took), took)
			}
			for _, d := range took {
				if d > tc.within {
					t.Errorf("an incident flagged after %v, want within %v", d, tc.within)
				}
			}
			if falseFlags*100 > reads {
				t.Errorf("Billing Main flagged on %d of %d reads without an incident, want at most 1 %%", falseFlags, reads)
			}
		})
	}
}
