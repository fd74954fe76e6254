package config_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowmetrics/flowmetrics/internal/config"
)

// TestDeploySamples loads the configs the repository ships for running
// serve as a service with the real loader, and makes the checks serve makes
// before it starts: with the secrets in the environment they pass, without
// the shared secret serve refuses them (they listen beyond loopback).
func TestDeploySamples(t *testing.T) {
	root := filepath.Join("..", "..")
	for _, tc := range []struct {
		path    string
		dataDir string
		listen  string
		tls     bool
	}{
		{"deploy/flowmetrics.yaml", "/var/lib/flowmetrics", "0.0.0.0:8443", true},
		{"deploy/container/flowmetrics.yaml", "/data", "0.0.0.0:8080", false},
	} {
		t.Run(tc.path, func(t *testing.T) {
			c, err := config.Load(filepath.Join(root, tc.path))
			if err != nil {
				t.Fatal(err)
			}
			if c.DataDir != tc.dataDir || c.HTTP.Listen != tc.listen || (c.HTTP.TLS != nil) != tc.tls {
				t.Errorf("got data_dir %s, listen %s, tls %v; want %s, %s, %v", c.DataDir, c.HTTP.Listen, c.HTTP.TLS != nil, tc.dataDir, tc.listen, tc.tls)
			}
			t.Setenv("DD_API_KEY", "0123456789abcdef0123456789abcdef")
			t.Setenv("FLOWMETRICS_SECRET", "")
			if err := c.Check(false); err == nil || !strings.Contains(err.Error(), "without a shared secret") {
				t.Errorf("without FLOWMETRICS_SECRET: got %v, want a refusal", err)
			}
			t.Setenv("FLOWMETRICS_SECRET", "a-long-random-secret")
			if err := c.Check(false); err != nil {
				t.Errorf("with the secrets set: %v", err)
			}
		})
	}
}

func TestTLSNeedsBothFiles(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		ok   bool
	}{
		{"both", "http:\n  tls:\n    cert_file: a.crt\n    key_file: a.key\n", true},
		{"no key", "http:\n  tls:\n    cert_file: a.crt\n", false},
		{"empty section", "http:\n  tls: {}\n", false},
		{"unknown key", "http:\n  tls:\n    cert: a.crt\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config.Default()
			err := config.Decode(strings.NewReader(tc.yaml), &c)
			if err == nil {
				err = c.Validate()
			}
			if (err == nil) != tc.ok {
				t.Errorf("got %v, want ok %v", err, tc.ok)
			}
		})
	}
}
