// Package emf is the CloudWatch Embedded Metric Format sink: one JSON log
// line per group of points, written to stdout (where Lambda and the
// CloudWatch agent pick it up) or appended to a file, which CloudWatch Logs
// turns into metrics with no API call.
//
// Each line carries the bucket start as _aws.Timestamp, the dimensions flow,
// metric and the static tags as string members, and the count as a numeric
// member named after the metric, with unit Count. Lines follow the EMF
// specification's limits: at most 100 metrics per line, 30 dimensions per
// set, dimension values of 1 to 1024 ASCII characters.
//
// Path points (a flowmetrics.PathSink) are metrics of their own:
// exits, funnels and experiments as counts, step timings and timings as
// arrays of at most 100 values (seconds), so that CloudWatch's
// percentiles see every conversation's value.
package emf
