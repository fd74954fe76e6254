package lambdafn_test

import (
	"strings"
	"testing"

	"github.com/flowmetrics/flowmetrics/internal/lambdafn"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/dogstatsd"
)

// TestDatadogMode: Lambda defaults both Datadog sinks to distribution mode
// (many instances write at once); count is chosen explicitly, and is
// refused at cold start for the dogstatsd sink, whose receiver in Lambda is
// the Datadog Lambda Extension (it sums counts until its flush).
func TestDatadogMode(t *testing.T) {
	for _, tt := range []struct {
		env, sinks string
		want       datadog.Mode
		wantErr    string
	}{
		{"", "datadog,dogstatsd", datadog.Distribution, ""},
		{"distribution", "datadog,dogstatsd", datadog.Distribution, ""},
		{"count", "datadog", datadog.Count, ""},
		{"count", "dogstatsd", "", "mode count is not exact through the Datadog Lambda Extension"},
		{"count", "emf,dogstatsd", "", "mode count is not exact through the Datadog Lambda Extension"},
		{"gauge", "datadog,dogstatsd", "", "FLOWMETRICS_DATADOG_MODE"},
	} {
		cfg, err := lambdafn.ConfigFromEnv(func(k string) string {
			switch k {
			case "FLOWMETRICS_TABLE":
				return "t"
			case "FLOWMETRICS_SINK":
				return tt.sinks
			case "FLOWMETRICS_DATADOG_MODE":
				return tt.env
			}
			return ""
		})
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q with %s: got %v, want an error containing %q", tt.env, tt.sinks, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tt.env, err)
		}
		if cfg.Datadog.Mode != tt.want || cfg.DogStatsD.Mode != tt.want || cfg.DogStatsD.Receiver != dogstatsd.LambdaExtension {
			t.Errorf("%q: got datadog %q, dogstatsd %q to %q; want %q, the Lambda extension", tt.env, cfg.Datadog.Mode, cfg.DogStatsD.Mode, cfg.DogStatsD.Receiver, tt.want)
		}
	}
}
