package lambda_test

import (
	"time"

	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
)

// violations returns the contract breaches the Datadog intake saw.
func violations(in *datadogtest.Intake) []string {
	in.Lock()
	defer in.Unlock()
	return append([]string(nil), in.Violations...)
}

// atRisk sums the values that incarnations sent after their last completed
// invocation: what an invocation killed before completing had sent.
func atRisk(in *datadogtest.Intake, lastDone map[string]time.Time) int64 {
	in.Lock()
	defer in.Unlock()
	var n float64
	for _, r := range in.Accepted {
		if done, killed := lastDone[r.Key]; killed && r.At.After(done) {
			n += r.Values
		}
	}
	return int64(n)
}
