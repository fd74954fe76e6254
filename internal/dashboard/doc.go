// Package dashboard is the live page of serve, what is wrong first: the flow
// metrics furthest from their usual rate (Assess, Attention), then per flow
// a chart of its metrics' rates by attribute time over 15 min to 24 h, a
// table of every flow metric with its rate now against its usual rate, the
// distinct malformed attribute names per flow, and whether the pipeline and
// each sink keep up.
//
// Two parts. A Recorder is one more flowmetrics.Sink, and a StatefulSink:
// the pipeline delivers it the same points as the real sinks, and it keeps
// them in 10 s buckets over the last hour and 1 min buckets over the last
// 24 h, as chunks that are also keys of its sink state, so a restart
// rebuilds the same history from the store. It also hears of malformed names
// (Malformed) and watches the other sinks' sends (Watch). A Handler serves
// the page at GET / and the JSON endpoints under /api/v1/ (series, flows,
// malformed, health, and an event stream announcing changes); the health
// figures come from the telemetry registry, so they are the numbers
// /metrics exposes.
//
// The page is the embedded web/ folder: index.html, one style sheet and
// plain JavaScript modules (app.js, the core, and one module per view in
// views/) drawing their own SVG charts, served under /assets/. No framework,
// no build step, no inline script or style, nothing loaded from elsewhere:
// its Content-Security-Policy allows only this server's files and forbids
// framing. It writes every name with textContent, never as markup: flow and
// metric names come from whoever can post events.
package dashboard
