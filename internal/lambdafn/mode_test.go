package lambdafn_test

import (
	"strings"
	"testing"

	"github.com/flowmetrics/flowmetrics/internal/lambdafn"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
)

// TestDatadogMode: Lambda defaults both Datadog sinks to distribution mode
// (many instances write at once); count is chosen explicitly.
func TestDatadogMode(t *testing.T) {
	for _, tt := range []struct {
		env     string
		want    datadog.Mode
		wantErr bool
	}{{"", datadog.Distribution, false}, {"count", datadog.Count, false}, {"distribution", datadog.Distribution, false}, {"gauge", "", true}} {
		cfg, err := lambdafn.ConfigFromEnv(func(k string) string {
			switch k {
			case "FLOWMETRICS_TABLE":
				return "t"
			case "FLOWMETRICS_SINK":
				return "datadog,dogstatsd"
			case "FLOWMETRICS_DATADOG_MODE":
				return tt.env
			}
			return ""
		})
		if tt.wantErr {
			if err == nil || !strings.Contains(err.Error(), "FLOWMETRICS_DATADOG_MODE") {
				t.Errorf("%q: got %v, want an error naming FLOWMETRICS_DATADOG_MODE", tt.env, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", tt.env, err)
		}
		if cfg.Datadog.Mode != tt.want || cfg.DogStatsD.Mode != tt.want {
			t.Errorf("%q: got datadog %q, dogstatsd %q; want %q", tt.env, cfg.Datadog.Mode, cfg.DogStatsD.Mode, tt.want)
		}
	}
}
