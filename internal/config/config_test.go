package config

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultsValidate(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("default config: got %v, want valid", err)
	}
}

func TestDecode(t *testing.T) {
	y := `
data_dir: /var/lib/flowmetrics
http:
  listen: 0.0.0.0:9000
  auth_header: X-Api-Key
pipeline:
  bucket: 60s
naming:
  tags: {env: prod}
sinks:
  jsonl: {path: /tmp/out.jsonl}
`
	c := Default()
	if err := Decode(strings.NewReader(y), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.HTTP.Listen != "0.0.0.0:9000" || c.HTTP.AuthHeader != "X-Api-Key" || c.Pipeline.Bucket != time.Minute || c.Sinks.JSONL == nil || c.Sinks.JSONL.Path != "/tmp/out.jsonl" || c.Naming.Tags["env"] != "prod" {
		t.Errorf("got %+v", c)
	}
	if c.HTTP.MaxBodyBytes != 10<<20 || c.Store.Type != "embedded" {
		t.Errorf("defaults lost: got max_body_bytes %d store %q", c.HTTP.MaxBodyBytes, c.Store.Type)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"unknown key", "htp: {}", "field htp not found"},
		{"unknown nested key", "http: {listne: x}", "field listne not found"},
		{"bad bucket", "pipeline: {bucket: 1500ms}", "pipeline.bucket"},
		{"bad store", "store: {type: sqlite}", "store.type"},
		{"bad listen", "http: {listen: nowhere}", "http.listen"},
		{"bad template", "naming: {template: \"x.{org}\"}", "naming.template"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			err := Decode(strings.NewReader(tt.yaml), &c)
			if err == nil {
				err = c.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080": true, "localhost:80": true, "[::1]:8080": true,
		"0.0.0.0:8080": false, ":8080": false, "10.1.2.3:80": false, "example.com:80": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q): got %v, want %v", addr, got, want)
		}
	}
}
