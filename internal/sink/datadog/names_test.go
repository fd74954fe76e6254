package datadog

import (
	"strings"
	"testing"
)

func TestMetricName(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"default kept", "genesys.flow.metric", "genesys.flow.metric"},
		{"case kept", "genesys.CustomerRouting.Unknown", "genesys.CustomerRouting.Unknown"},
		{"space", "genesys.Billing Main.PaymentTaken", "genesys.Billing_Main.PaymentTaken"},
		{"run of bad characters is one underscore", "a - b", "a_b"},
		{"accent folded", "genesys.Gestión", "genesys.Gestion"},
		{"letter spelled out, as in every ASCII sink", "genesys.Größe", "genesys.Grosse"},
		{"no ASCII spelling", "genesys.x中文", "genesys.x"},
		{"leading digits and dots removed", "9.flow", "flow"},
		{"trailing junk removed", "flow!!", "flow"},
		{"empty falls back to the default", "¡¿", "genesys.flow.metric"},
		{"truncated to 200", "a" + strings.Repeat("b", 300), "a" + strings.Repeat("b", 199)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MetricName(tt.in); got != tt.want {
				t.Errorf("MetricName(%q): got %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestTag(t *testing.T) {
	tests := []struct {
		name, key, value, want string
	}{
		{"lower-cased", "flow", "CustomerRouting", "flow:customerrouting"},
		{"space", "flow", "Billing Main", "flow:billing_main"},
		{"unicode letters kept", "flow", "Gestión Pagos", "flow:gestión_pagos"},
		{"allowed punctuation kept", "metric", "a-b.c/d:e_f", "metric:a-b.c/d:e_f"},
		{"comma and pipe are not allowed (DogStatsD separators)", "flow", "a,b|c", "flow:a_b_c"},
		{"newline", "flow", "a\nb", "flow:a_b"},
		{"empty value gives bare key", "canary", "", "canary"},
		{"key must start with a letter", "1env", "prod", "env:prod"},
		{"truncated to 200 characters", "flow", strings.Repeat("é", 300), "flow:" + strings.Repeat("é", 195)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Tag(tt.key, tt.value)
			if got != tt.want {
				t.Errorf("Tag(%q, %q): got %q, want %q", tt.key, tt.value, got, tt.want)
			}
			if n := len([]rune(got)); n > MaxTagLen {
				t.Errorf("got %d characters, want at most %d", n, MaxTagLen)
			}
		})
	}
}
