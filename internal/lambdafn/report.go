package lambdafn

import (
	"encoding/json"
	"io"
	"sync"
	"time"
)

// ReportNamespace is the CloudWatch namespace of the function's own metrics.
const ReportNamespace = "flowmetrics"

// reporter writes the function's own metrics as one CloudWatch embedded
// metric format line per invocation that failed or deferred records, so
// that an alarm can watch failed records on the SQS path, where a batch
// with batchItemFailures is not a Lambda error. Invocations that fail
// nothing write nothing: log lines are billed.
//
//	RecordsFailed    records listed (SQS) or invocations failed (EventBridge)
//	                 because the store or a sink failed: alarm on it
//	RecordsDeferred  records retried because another instance holds their
//	                 keys under a live lease: expected now and then with
//	                 duplicate deliveries; not an alarm
type reporter struct {
	mu       sync.Mutex
	w        io.Writer // nil: report nothing
	function string
	now      func() time.Time
}

func (r *reporter) write(failed, deferred int, reason string) {
	if r == nil || r.w == nil || failed+deferred == 0 {
		return
	}
	type metric struct {
		Name string `json:"Name"`
		Unit string `json:"Unit"`
	}
	type directive struct {
		Namespace  string     `json:"Namespace"`
		Dimensions [][]string `json:"Dimensions"`
		Metrics    []metric   `json:"Metrics"`
	}
	line := map[string]any{
		"_aws": map[string]any{
			"Timestamp": r.now().UnixMilli(),
			"CloudWatchMetrics": []directive{{
				Namespace:  ReportNamespace,
				Dimensions: [][]string{{"FunctionName"}},
				Metrics:    []metric{{"RecordsFailed", "Count"}, {"RecordsDeferred", "Count"}},
			}},
		},
		"FunctionName":    r.function,
		"RecordsFailed":   failed,
		"RecordsDeferred": deferred,
		"Reason":          reason,
	}
	b, err := json.Marshal(line)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.w.Write(append(b, '\n'))
}
