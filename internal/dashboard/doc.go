// Package dashboard is the live page of serve: what each flow counted in the
// last minutes, whether any flow writes malformed attribute names, and
// whether the pipeline keeps up.
//
// Two parts. A Recorder is one more flowmetrics.Sink: the pipeline delivers
// it the same points as the real sinks, and it keeps them in memory, in
// slots of attribute time over a window (one hour by default), plus totals
// since start. Handler serves the page at GET / and the JSON it polls every
// two seconds at GET /api/v1/dashboard; the health figures come from the
// telemetry registry, so they are the numbers /metrics exposes.
//
// Being a sink, the Recorder shows what was claimed and delivered, in the
// bucket of each attribute's own time, exactly as a backend sees it. It is
// memory only: after a restart the page starts empty (the totals are since
// start), and with several replicas each page shows its own replica.
//
// The page is one embedded HTML file with its own CSS and JavaScript, no
// framework and nothing loaded from elsewhere (its Content-Security-Policy
// forbids it). It writes every name with textContent, never as markup: flow
// and metric names come from whoever can post events.
package dashboard
