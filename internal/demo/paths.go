package demo

import (
	"time"

	"github.com/flowmetrics/flowmetrics/internal/paths"
)

// PathsConfig returns c with the demo's timings, funnels and experiment
// added when c has none of its own: serve --demo shows them on its first
// run. The payment funnel loses callers at each step; the call-back offer
// is the A/B test (B converts better: 50 % against 25 %, a
// difference the first run's 100 or so conversations per variant show).
func PathsConfig(c paths.Config) paths.Config {
	// The demo's events arrive on time: its paths close within seconds of
	// their end, and those without one within minutes.
	if c.Grace == 0 {
		c.Grace = 5 * time.Second
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 2 * time.Minute
	}
	if len(c.Timings)+len(c.Funnels)+len(c.Experiments) > 0 {
		return c
	}
	step := func(flow, metric string) paths.Step { return paths.Step(flow + "/" + metric) }
	c.Timings = []paths.Timing{
		{Name: "routing_to_agent", From: step(FlowRouting, "Start"), To: step(FlowRouting, "Transferred")},
		{Name: "bot_to_agent", From: step(FlowBot, "Start"), To: step(FlowBot, "Escalated")},
	}
	c.Funnels = []paths.Funnel{
		{Name: "payment", Steps: []paths.Step{step(FlowBilling, "Start"), step(FlowBilling, "BalanceHeard"), step(FlowBilling, "PaymentStarted"), step(FlowBilling, "PaymentTaken")}},
		{Name: "routing", Steps: []paths.Step{step(FlowRouting, "Start"), step(FlowRouting, "LanguageSelected"), step(FlowRouting, "Authenticated"), step(FlowRouting, "Transferred")}},
	}
	c.Experiments = []paths.Experiment{{Name: "callback_offer", Variants: []paths.Variant{
		{Name: "A", Steps: []paths.Step{step(FlowCallback, "OfferedA"), step(FlowCallback, "AcceptedA")}},
		{Name: "B", Steps: []paths.Step{step(FlowCallback, "OfferedB"), step(FlowCallback, "AcceptedB")}},
	}}}
	return c
}
