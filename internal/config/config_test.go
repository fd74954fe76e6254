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
		{"unknown key", "htp: {}", "htp: unknown key; did you mean http? (line 1)"},
		{"unknown nested key", "http: {listne: x}", "http.listne: unknown key; did you mean listen? (line 1)"},
		{"misspelt pipeline key", "pipeline:\n  bucket: 10s\n  flush_intervall: 2s\n", "pipeline.flush_intervall: unknown key; did you mean flush_interval? (line 3)"},
		{"case", "HTTP: {}", "HTTP: unknown key; did you mean http?"},
		{"nothing near", "pipeline: {zzzzzzzz: 1}", "pipeline.zzzzzzzz: unknown key; valid keys: batch_entries, bucket, cache_bytes, cache_conversations, cache_ttl, flush_interval, max_pending, retry_max, retry_min"},
		{"sink key", "sinks: {datadog: {apikey_env: X}}", "sinks.datadog.apikey_env: unknown key; did you mean api_key_env?"},
		{"duration", "pipeline: {flush_interval: soon}", `pipeline.flush_interval: got "soon", want a duration such as 500ms, 30s, 1h or 168h (line 1)`},
		{"number", "http: {max_body_bytes: lots}", `http.max_body_bytes: got "lots", want a whole number`},
		{"bool", "http: {dashboard: maybe}", `http.dashboard: got "maybe", want true or false`},
		{"section that is a list", "sinks: {statsd: [1]}", "sinks.statsd: got a list, want a mapping of keys to values"},
		{"map value", "naming: {tags: {env: [1]}}", "naming.tags.env: got a list, want a string"},
		{"syntax", "http: {listen: x\n", "line 1"},
		{"cache outlives retention", "store: {retention: 30m}", "pipeline.cache_ttl (1h0m0s) must be shorter than store.retention (30m0s)"},
		{"cache as long as retention", "store: {retention: 2h}\npipeline: {cache_ttl: 2h}", "pipeline.cache_ttl (2h0m0s) must be shorter than store.retention (2h0m0s)"},
		{"bad bucket", "pipeline: {bucket: 1500ms}", "pipeline.bucket"},
		{"bad store", "store: {type: sqlite}", "store.type"},
		{"bad listen", "http: {listen: nowhere}", "http.listen"},
		{"bad template", "naming: {template: \"x.{org}\"}", "naming.template"},
		{"bytes in flight under the body limit", "http: {max_body_bytes: 1000, max_bytes_in_flight: 999}", "http.max_bytes_in_flight: 999 is less than http.max_body_bytes (1000)"},
		{"negative bytes in flight", "http: {max_bytes_in_flight: -1}", "http.max_bytes_in_flight"},
		{"allowed host with a port", "http: {allowed_hosts: [flowmetrics.example.com:443]}", `http.allowed_hosts[0] "flowmetrics.example.com:443": want a host name`},
		{"allowed host as a URL", "http: {allowed_hosts: [ok.example, \"https://x.example/\"]}", `http.allowed_hosts[1] "https://x.example/"`},
		{"allowed host wildcard", "http: {allowed_hosts: [\"*.example.com\"]}", `http.allowed_hosts[0]`},
		{"empty allowed host", "http: {allowed_hosts: [\"\"]}", `http.allowed_hosts[0]`},
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

// Every error of a file is named at once, in the order of the file, and
// none shows a Go type name.
func TestErrorsTogether(t *testing.T) {
	y := "pipeline:\n  flush_intervall: 2s\n  bucket: ten\nhttp:\n  listne: x\nhtp: 1\n"
	c := Default()
	err := Decode(strings.NewReader(y), &c)
	want := "pipeline.flush_intervall: unknown key; did you mean flush_interval? (line 2)\n" +
		"pipeline.bucket: got \"ten\", want a duration such as 500ms, 30s, 1h or 168h (line 3)\n" +
		"http.listne: unknown key; did you mean listen? (line 5)\n" +
		"htp: unknown key; did you mean http? (line 6)"
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
	if err != nil && (strings.Contains(err.Error(), "pipeline.Config") || strings.Contains(err.Error(), "time.Duration")) {
		t.Errorf("got %v: want no Go type names", err)
	}
}

func TestCacheDisabledIgnoresRetention(t *testing.T) {
	c := Default()
	c.Store.Retention = time.Minute
	c.Pipeline.CacheConversations = -1
	c.Paths.Grace, c.Paths.IdleTimeout = time.Second, 30*time.Second
	if err := c.Validate(); err != nil {
		t.Errorf("got %v, want valid: no cache, nothing to outlive the store", err)
	}
}

func TestPathsWithinRetention(t *testing.T) {
	c := Default()
	c.Store.Retention = 2 * time.Hour
	want := "paths.idle_timeout (4h0m0s) must be shorter than store.retention (2h0m0s)"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("got %v, want %q", err, want)
	}
	off := false
	c.Paths.Enabled = &off
	if err := c.Validate(); err != nil {
		t.Errorf("paths off: got %v, want valid", err)
	}
}

func TestPathsSection(t *testing.T) {
	var c Config = Default()
	err := Decode(strings.NewReader(`
paths:
  grace: 30s
  idle_timeout: 2h
  genesys_region: mypurecloud.ie
  timings:
    - {name: ivr_to_agent, from: Main IVR/Entered, to: Routing/AgentConnected}
  funnels:
    - name: callback
      steps: [Main IVR/Entered, Callback/Offered, Callback/Accepted]
  experiments:
    - name: offer
      variants:
        - {name: A, steps: [Callback/OfferA, Callback/AcceptedA]}
        - {name: B, steps: [Callback/OfferB, Callback/AcceptedB]}
`), &c)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Paths.Grace != 30*time.Second || len(c.Paths.Funnels[0].Steps) != 3 || c.Paths.Experiments[0].Variants[1].Steps[1] != "Callback/AcceptedB" || c.Paths.Timings[0].To != "Routing/AgentConnected" {
		t.Errorf("got %+v", c.Paths)
	}
	err = Decode(strings.NewReader("paths:\n  funnel: []\n"), &c)
	if err == nil || !strings.Contains(err.Error(), "funnel") {
		t.Errorf("unknown key: got %v, want an error naming it", err)
	}
}

// Check is what serve refuses before opening anything; -check-config uses
// it too (cmd/flowmetrics tests that the two agree).
func TestCheck(t *testing.T) {
	tests := []struct {
		name     string
		yaml     string
		env      map[string]string
		insecure bool
		want     string // "" for valid
	}{
		{"defaults", "", nil, false, ""},
		{"datadog without its key", "sinks: {datadog: {}}", map[string]string{"DD_API_KEY": ""}, false, "sinks.datadog.api_key_env: environment variable DD_API_KEY is not set: it must hold the API key"},
		{"datadog with a blank key", "sinks: {datadog: {}}", map[string]string{"DD_API_KEY": "  "}, false, "DD_API_KEY is not set"},
		{"datadog key in another variable", "sinks: {datadog: {api_key_env: MY_DD_KEY}}", map[string]string{"MY_DD_KEY": ""}, false, "MY_DD_KEY is not set"},
		{"datadog with its key", "sinks: {datadog: {}}", map[string]string{"DD_API_KEY": "k"}, false, ""},
		{"beyond loopback without a secret", "http: {listen: 0.0.0.0:8080}", map[string]string{"FLOWMETRICS_SECRET": ""}, false, "refusing to listen on 0.0.0.0:8080 without a shared secret"},
		{"beyond loopback, insecure", "http: {listen: 0.0.0.0:8080}", map[string]string{"FLOWMETRICS_SECRET": ""}, true, ""},
		{"beyond loopback with a secret", "http: {listen: 0.0.0.0:8080}", map[string]string{"FLOWMETRICS_SECRET": "s"}, false, ""},
		{"protect_reads without a secret", "http: {protect_reads: true}", map[string]string{"FLOWMETRICS_SECRET": ""}, false, "http.protect_reads: needs the shared secret"},
		{"emf without a template", "sinks: {emf: {omit_flow_dimensions: true}}", nil, false, "sinks.emf.omit_flow_dimensions: needs naming.template"},
		{"invalid config", "store: {retention: 30m}", nil, false, "pipeline.cache_ttl"},
		// A secret from a file often ends in a newline: trimmed, it works.
		{"secret with a trailing newline", "http: {listen: 0.0.0.0:8080}", map[string]string{"FLOWMETRICS_SECRET": " s3cret\n"}, false, ""},
		{"blank secret", "http: {listen: 0.0.0.0:8080}", map[string]string{"FLOWMETRICS_SECRET": " \n"}, false, "$FLOWMETRICS_SECRET is set but blank"},
		{"blank secret on loopback", "", map[string]string{"FLOWMETRICS_SECRET": "  "}, false, "$FLOWMETRICS_SECRET is set but blank"},
		{"secret over two lines", "", map[string]string{"FLOWMETRICS_SECRET": "s3c\nret"}, false, "$FLOWMETRICS_SECRET holds a control character"},
		{"allowed hosts", "http: {allowed_hosts: [flowmetrics.example.com, 10.0.0.5, \"[fd00::1]\"]}", nil, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			c := Default()
			if err := Decode(strings.NewReader(tt.yaml), &c); err != nil {
				t.Fatal(err)
			}
			err := c.Check(tt.insecure)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("got %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestSecretTrimmed(t *testing.T) {
	t.Setenv("FLOWMETRICS_SECRET", "\ts3cret \r\n")
	if got := Default().HTTP.Secret(); got != "s3cret" {
		t.Errorf("got %q, want s3cret", got)
	}
}

func TestServedHosts(t *testing.T) {
	h := Default().HTTP
	h.AllowedHosts = []string{"proxy.example"}
	h.Listen = "flowmetrics.internal:8080"
	if got := strings.Join(h.ServedHosts(), ","); got != "proxy.example,flowmetrics.internal" {
		t.Errorf("got %s, want proxy.example,flowmetrics.internal", got)
	}
	h.Listen = ":8080"
	if got := strings.Join(h.ServedHosts(), ","); got != "proxy.example" {
		t.Errorf("listen :8080: got %s, want proxy.example", got)
	}
}

func TestReadsProtected(t *testing.T) {
	on, off := true, false
	for _, tt := range []struct {
		set    *bool
		secret string
		want   bool
	}{
		{nil, "", false}, {nil, "s", true}, {&off, "s", false}, {&on, "s", true},
	} {
		if got := (HTTP{ProtectReads: tt.set}).ReadsProtected(tt.secret); got != tt.want {
			t.Errorf("protect_reads %v, secret %q: got %v, want %v", tt.set, tt.secret, got, tt.want)
		}
	}
}

// The loader names each setting by its path once; the components say only
// what is wrong with the value. Pinned whole, so no stutter comes back.
func TestErrorPathsOnce(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"prometheus", "sinks: {prometheus: {name: bad-name}}", `sinks.prometheus.name "bad-name": not a valid Prometheus metric name`},
		// (jsonl has no setting that can be wrong before its file is opened.)
		{"pipeline", "pipeline: {bucket: 1500ms}", "pipeline.bucket: 1.5s is not a whole number of seconds ≥ 1s"},
		{"datadog", "sinks: {datadog: {url: \"https://proxy.example/?x=1\"}}", `sinks.datadog.url "https://proxy.example/?x=1": no query or fragment allowed`},
		{"datadog mode", "sinks: {datadog: {mode: gauge}}", `sinks.datadog.mode "gauge": want count or distribution`},
		{"dogstatsd", "sinks: {dogstatsd: {addr: \"unix://relative.sock\"}}", `sinks.dogstatsd.addr "unix://relative.sock": want an absolute socket path, e.g. unix:///var/run/datadog/dsd.socket`},
		{"emf", "sinks: {emf: {storage_resolution: 10}}", "sinks.emf.storage_resolution 10: must be 1 or 60"},
		{"otlp", "sinks: {otlp: {compression: zstd}}", `sinks.otlp.compression "zstd": must be gzip or none`},
		{"statsd", "sinks: {statsd: {}}", "sinks.statsd.addr: required (host:port)"},
		{"naming", "naming: {tags: {flow: x}}", `naming.tags: "flow" is set from each point and cannot be static`},
		{"nested, each of several", "paths:\n  funnels:\n    - {name: f, steps: [IVRStart]}\n    - {name: f, steps: [A/B]}\n",
			"paths.funnels[1].name \"f\": used twice\npaths.funnels[0].steps[0]: step \"IVRStart\": want \"Flow/Metric\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			if err := Decode(strings.NewReader(tt.yaml), &c); err != nil {
				t.Fatal(err)
			}
			if err := c.Validate(); err == nil || err.Error() != tt.want {
				t.Errorf("got\n%v\nwant\n%s", err, tt.want)
			}
		})
	}
	// What serve checks in the environment is named the same way.
	t.Setenv("DD_API_KEY", "")
	c := Default()
	if err := Decode(strings.NewReader("sinks: {datadog: {}}"), &c); err != nil {
		t.Fatal(err)
	}
	want := "sinks.datadog.api_key_env: environment variable DD_API_KEY is not set: it must hold the API key"
	if err := c.Check(false); err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}
