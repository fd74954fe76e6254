// Package cardinality protects the custom-metric bill: it lets through the
// first Limit distinct flow/metric pairs it sees and folds every later pair
// into one overflow series, counting each folded occurrence and logging
// (rate-limited) which pairs were folded, so a flow that invents metric
// names cannot create thousands of billed series.
package cardinality
