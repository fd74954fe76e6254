package lambda_test

import (
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
)

// violations returns the contract breaches the Datadog intake saw.
func violations(in *datadogtest.Intake) []string {
	in.Lock()
	defer in.Unlock()
	return append([]string(nil), in.Violations...)
}

// atRisk sums the values sent inside the risks: what an invocation killed
// before completing (by a SIGKILL or its timeout) had sent.
func atRisk(in *datadogtest.Intake, risks []risk) int64 {
	in.Lock()
	defer in.Unlock()
	var n float64
	for _, r := range in.Accepted {
		for _, k := range risks {
			if k.holds(r.Key, r.At) {
				n += r.Values
				break
			}
		}
	}
	return int64(n)
}
