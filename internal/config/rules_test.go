package config

import (
	"strings"
	"testing"
	"time"
)

// TestRulesPathsWithinRetention: every entry point refuses an idle timeout
// that is not shorter than the retention (the rule is in Rules, which serve,
// replay and Lambda call), naming the settings as that entry point does.
func TestRulesPathsWithinRetention(t *testing.T) {
	env := Names{Retention: "FLOWMETRICS_RETENTION", CacheTTL: "FLOWMETRICS_CACHE_TTL", IdleTimeout: "FLOWMETRICS_PATHS_IDLE_TIMEOUT"}
	tests := []struct {
		name string
		s    Settings
		n    Names
		want string // "" when valid
	}{
		{"file, idle as long as retention", Settings{Retention: 4 * time.Hour, IdleTimeout: 4 * time.Hour}, FileNames,
			"paths.idle_timeout (4h0m0s) must be shorter than store.retention (4h0m0s)"},
		{"environment, idle beyond the default retention", Settings{IdleTimeout: 8 * 24 * time.Hour}, env,
			"FLOWMETRICS_PATHS_IDLE_TIMEOUT (192h0m0s) must be shorter than FLOWMETRICS_RETENTION (168h0m0s)"},
		{"idle within retention", Settings{Retention: 4 * time.Hour, IdleTimeout: 2 * time.Hour}, FileNames, ""},
		{"paths off", Settings{Retention: 2 * time.Hour}, FileNames, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Rules(tt.s, tt.n)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want valid", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}
}
