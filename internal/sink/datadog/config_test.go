package datadog

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // substring; empty for valid
	}{
		{"zero value", Config{}, ""},
		{"eu site", Config{Site: "datadoghq.eu", LatePolicy: Clamp}, ""},
		{"site as shown in the browser", Config{Site: "app.datadoghq.eu"}, ""},
		{"site with scheme", Config{Site: "https://api.datadoghq.eu"}, `site "https://api.datadoghq.eu": want a site name`},
		{"site without a dot", Config{Site: "localhost"}, `site "localhost": want a site name`},
		{"url override", Config{URL: "http://127.0.0.1:8080"}, ""},
		{"url without scheme", Config{URL: "127.0.0.1:8080"}, "url: "},
		{"url with query", Config{URL: "https://proxy.example/?x=1"}, `url "https://proxy.example/?x=1": no query`},
		{"key in the env field", Config{APIKeyEnv: "0123456789abcdef"}, "api_key_env"},
		{"late policy", Config{LatePolicy: "keep"}, "late_policy"},
		{"negative timeout", Config{Timeout: -1}, "timeout"},
		{"retry max below initial", Config{RetryInitial: 10, RetryMax: 5}, "retry_max"},
		{"payload above Datadog's limit", Config{MaxPayloadBytes: MaxPayloadBytes + 1}, "max_payload_bytes"},
		{"uncompressed above Datadog's limit", Config{MaxUncompressedBytes: MaxUncompressedBytes + 1}, "max_uncompressed_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("got %v, want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("got %v, want an error mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestEndpoint(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		ddSite string
		want   string
	}{
		{"default", Config{}, "", "https://api.datadoghq.com/api/v2/series"},
		{"site", Config{Site: "datadoghq.eu"}, "", "https://api.datadoghq.eu/api/v2/series"},
		{"app prefix", Config{Site: "app.datadoghq.eu"}, "", "https://api.datadoghq.eu/api/v2/series"},
		{"DD_SITE", Config{}, "us5.datadoghq.com", "https://api.us5.datadoghq.com/api/v2/series"},
		{"config wins over DD_SITE", Config{Site: "ap1.datadoghq.com"}, "us5.datadoghq.com", "https://api.ap1.datadoghq.com/api/v2/series"},
		{"url", Config{URL: "http://127.0.0.1:9/prefix/"}, "us5.datadoghq.com", "http://127.0.0.1:9/prefix/api/v2/series"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("DD_SITE", tt.ddSite)
			got, err := tt.cfg.endpoint()
			if err != nil || got != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
