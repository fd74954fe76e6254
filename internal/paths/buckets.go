package paths

import (
	"fmt"
	"math"
)

// DefaultDurationBuckets are the histogram bucket bounds of step timings
// and timings, in seconds, for the sinks that send histograms (Prometheus,
// OTLP): a self-service step takes seconds, a queue minutes, an agent call
// up to hours, so the buckets go from 1 s to 4 h, about two to three per
// decade (histogram_quantile interpolates within a bucket, so a quantile
// is as precise as its bucket is narrow).
var DefaultDurationBuckets = []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400}

// ValidBuckets checks a bucket list: increasing, finite, at most 50.
func ValidBuckets(b []float64) error {
	if len(b) > 50 {
		return fmt.Errorf("%d buckets, at most 50", len(b))
	}
	for i, v := range b {
		if math.IsNaN(v) || math.IsInf(v, 0) || (i > 0 && v <= b[i-1]) {
			return fmt.Errorf("buckets must be finite and increasing: %v", b)
		}
	}
	return nil
}
