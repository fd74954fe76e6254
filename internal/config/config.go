// Package config reads the one YAML file that configures flowmetrics. Every
// setting has a default, unknown keys are an error, each section validates
// itself without touching the network, and secrets come from the
// environment, never from the file.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/dogstatsd"
	"github.com/flowmetrics/flowmetrics/internal/sink/emf"
	"github.com/flowmetrics/flowmetrics/internal/sink/jsonl"
	"github.com/flowmetrics/flowmetrics/internal/sink/otlp"
	"github.com/flowmetrics/flowmetrics/internal/sink/prometheus"
	"github.com/flowmetrics/flowmetrics/internal/sink/statsd"
)

// Config is the whole file.
type Config struct {
	// DataDir holds the embedded store (default ./data).
	DataDir  string          `yaml:"data_dir"`
	HTTP     HTTP            `yaml:"http"`
	Store    Store           `yaml:"store"`
	Pipeline pipeline.Config `yaml:"pipeline"`
	Naming   naming.Config   `yaml:"naming"`
	// Cardinality limits distinct flow/metric pairs (default 1000).
	Cardinality Cardinality `yaml:"cardinality"`
	// Paths: conversation paths (exits, step timings, funnels,
	// experiments), on by default.
	Paths paths.Config `yaml:"paths"`
	Sinks Sinks        `yaml:"sinks"`
}

// HTTP is the serve section.
type HTTP struct {
	// Listen address (default 127.0.0.1:8080).
	Listen string `yaml:"listen"`
	// AuthHeader names the header that carries the shared secret (default
	// X-Flowmetrics-Secret). An EventBridge API destination connection with
	// API-key authorization sends it.
	AuthHeader string `yaml:"auth_header"`
	// SecretEnv names the environment variable holding the shared secret
	// (default FLOWMETRICS_SECRET). Empty secret means no auth, which is
	// only allowed on loopback unless --insecure.
	SecretEnv    string `yaml:"secret_env"`
	MaxBodyBytes int64  `yaml:"max_body_bytes"`
	// MaxBytesInFlight bounds the request bytes of the ingest requests
	// served at once; beyond it a request gets 503 with Retry-After.
	// 0 (the default) is 4 × MaxBodyBytes.
	MaxBytesInFlight int64 `yaml:"max_bytes_in_flight"`
	// MaxConnections bounds the connections served at once (default
	// 1,024), so that open connections, each holding its buffers and up to
	// a request header, cannot grow memory without bound. Beyond it a new
	// connection waits in the kernel's accept queue until one closes.
	MaxConnections int `yaml:"max_connections"`
	// AllowedHosts are the host names clients may reach serve by, besides
	// loopback names, IP addresses and the listen host: e.g. the name a
	// reverse proxy or load balancer forwards in Host. Requests naming
	// another host get 421 (this defeats DNS rebinding).
	AllowedHosts []string      `yaml:"allowed_hosts"`
	ReadTimeout  time.Duration `yaml:"read_timeout"`
	WriteTimeout time.Duration `yaml:"write_timeout"`
	IdleTimeout  time.Duration `yaml:"idle_timeout"`
	// ShutdownTimeout bounds the drain and flush on SIGTERM.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Dashboard serves the live dashboard at / (default on).
	Dashboard *bool `yaml:"dashboard"`
	// ProtectReads makes /metrics and the dashboard ask for the shared
	// secret too (in AuthHeader, as "Authorization: Bearer", or as the
	// Basic auth password). Default: on whenever a secret is set; false
	// keeps them open (e.g. when only a private network reaches them).
	// /healthz is always open.
	ProtectReads *bool `yaml:"protect_reads"`
	// TLS, when set, makes serve speak HTTPS only.
	TLS *TLS `yaml:"tls"`
}

// TLS is the http.tls section: a certificate (chain) and its key, PEM
// files read again when they change, without a restart.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Validate checks the tls section; the files themselves are read when
// serve starts.
func (t TLS) Validate() error {
	if t.CertFile == "" || t.KeyFile == "" {
		return errors.New("http.tls: cert_file and key_file are both required")
	}
	return nil
}

// Scheme is https with a tls section, else http.
func (h HTTP) Scheme() string {
	if h.TLS != nil {
		return "https"
	}
	return "http"
}

// ReadsProtected reports whether /metrics and the dashboard need the
// secret, given the secret in force.
func (h HTTP) ReadsProtected(secret string) bool {
	if h.ProtectReads != nil {
		return *h.ProtectReads
	}
	return secret != ""
}

// DashboardOn reports whether the dashboard is served; it is unless
// disabled.
func (h HTTP) DashboardOn() bool { return h.Dashboard == nil || *h.Dashboard }

// Store is the store section.
type Store struct {
	// Type is embedded (default) or memory.
	Type      string        `yaml:"type"`
	Retention time.Duration `yaml:"retention"`
	// SweepInterval is how often expired conversations are deleted.
	SweepInterval time.Duration `yaml:"sweep_interval"`
	// MinFreeBytes is the free-space watermark of the embedded store's
	// filesystem: below it ingest answers 503. BallastBytes is the
	// emergency file released when it is crossed. 0 sizes them
	// automatically (internal/diskguard): the watermark from the
	// filesystem, the ballast from the store's use.
	MinFreeBytes int64 `yaml:"min_free_bytes"`
	BallastBytes int64 `yaml:"ballast_bytes"`
}

// Cardinality is the cardinality guard section.
type Cardinality struct {
	Limit int `yaml:"limit"`
}

// Sinks lists the sinks; a section that is present turns its sink on
// (Prometheus is on unless disabled).
type Sinks struct {
	Prometheus prometheus.Config `yaml:"prometheus"`
	JSONL      *jsonl.Config     `yaml:"jsonl"`
	Datadog    *datadog.Config   `yaml:"datadog"`
	DogStatsD  *dogstatsd.Config `yaml:"dogstatsd"`
	EMF        *emf.Config       `yaml:"emf"`
	OTLP       *otlp.Config      `yaml:"otlp"`
	StatsD     *statsd.Config    `yaml:"statsd"`
}

// Validate checks every configured sink.
func (s Sinks) Validate() error {
	errs := []error{At("sinks.prometheus", s.Prometheus.Validate())}
	check := func(name string, present bool, v func() error) {
		if present {
			errs = append(errs, At("sinks."+name, v()))
		}
	}
	check("jsonl", s.JSONL != nil, func() error { return s.JSONL.Validate() })
	check("datadog", s.Datadog != nil, func() error { return s.Datadog.Validate() })
	check("dogstatsd", s.DogStatsD != nil, func() error { return s.DogStatsD.Validate() })
	check("emf", s.EMF != nil, func() error { return s.EMF.Validate() })
	check("otlp", s.OTLP != nil, func() error { return s.OTLP.Validate() })
	check("statsd", s.StatsD != nil, func() error { return s.StatsD.Validate() })
	return errors.Join(errs...)
}

// At puts a section's path before what its validator found wrong: every
// error, each of a joined list. A component's validator names the field
// relative to itself ("url \"x\": want …", "steps[0]: …") and never its
// own section, which only the loader knows: the path is said once, here,
// in the dotted form unknown keys are reported in
// ("sinks.datadog.url \"x\": want …").
func At(path string, err error) error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var errs []error
		for _, e := range j.Unwrap() {
			errs = append(errs, At(path, e))
		}
		return errors.Join(errs...)
	}
	return fmt.Errorf("%s.%w", path, err)
}

// Default returns the configuration used when no file is given.
func Default() Config {
	return Config{
		DataDir: "./data",
		HTTP: HTTP{
			Listen:          "127.0.0.1:8080",
			AuthHeader:      "X-Flowmetrics-Secret",
			SecretEnv:       "FLOWMETRICS_SECRET",
			MaxBodyBytes:    10 << 20,
			MaxConnections:  1024,
			ReadTimeout:     30 * time.Second,
			WriteTimeout:    30 * time.Second,
			IdleTimeout:     120 * time.Second,
			ShutdownTimeout: 30 * time.Second,
		},
		Store:       Store{Type: "embedded", Retention: 7 * 24 * time.Hour, SweepInterval: time.Hour},
		Cardinality: Cardinality{Limit: 1000},
	}
}

// Load reads the file at path over the defaults; path "" gives the defaults.
func Load(path string) (Config, error) {
	c := Default()
	if path == "" {
		return c, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	if err := Decode(f, &c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Decode reads YAML from r into c, rejecting unknown keys.
func Decode(r io.Reader, c *Config) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
	}
	// Unknown keys and values of the wrong type, each by its YAML path.
	if err := checkNode(&doc, reflect.TypeOf(c).Elem()); err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil {
		return plainYAMLError(err)
	}
	return nil
}

// Validate checks every section.
func (c Config) Validate() error {
	var errs []error
	if c.DataDir == "" && c.Store.Type == "embedded" {
		errs = append(errs, errors.New("data_dir: required for the embedded store"))
	}
	errs = append(errs, c.HTTP.Validate(), c.Store.Validate(),
		At("pipeline", c.Pipeline.Validate()), At("naming", c.Naming.Validate()), At("paths", c.Paths.Validate()),
		c.Sinks.Validate())
	if c.Cardinality.Limit < 0 {
		errs = append(errs, errors.New("cardinality.limit: negative"))
	}
	rs := Settings{Retention: c.Store.Retention, CacheTTL: c.Pipeline.CacheTTL, CacheConversations: c.Pipeline.CacheConversations}
	if c.Paths.IsEnabled() {
		rs.IdleTimeout = c.Paths.WithDefaults().IdleTimeout
	}
	errs = append(errs, Rules(rs, FileNames))
	return errors.Join(errs...)
}

// Check is every refusal serve makes before it opens anything: Validate,
// the shared-secret rule for the listen address, and what each configured
// sink needs from the environment (such as Datadog's API key). serve and
// serve -check-config both call it, so the check refuses exactly what serve
// would, with the same messages. It does not touch the network or the disk.
func (c Config) Check(insecure bool) error {
	if err := c.Validate(); err != nil {
		return err
	}
	var errs []error
	if err := c.HTTP.checkSecret(); err != nil {
		errs = append(errs, err)
	}
	secret := c.HTTP.Secret()
	if secret == "" && !IsLoopback(c.HTTP.Listen) && !insecure {
		errs = append(errs, fmt.Errorf("refusing to listen on %s without a shared secret: set %s (sent in the %s header) or pass --insecure", c.HTTP.Listen, c.HTTP.SecretEnv, c.HTTP.AuthHeader))
	}
	if secret == "" && c.HTTP.ProtectReads != nil && *c.HTTP.ProtectReads {
		errs = append(errs, fmt.Errorf("http.protect_reads: needs the shared secret: set %s", c.HTTP.SecretEnv))
	}
	if d := c.Sinks.Datadog; d != nil {
		_, err := d.APIKey(os.Getenv)
		errs = append(errs, At("sinks.datadog", err))
	}
	if e := c.Sinks.EMF; e != nil {
		errs = append(errs, At("sinks.emf", e.CheckNaming(naming.New(c.Naming))))
	}
	return errors.Join(errs...)
}

// Validate checks the http section.
func (h HTTP) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(h.Listen); err != nil {
		errs = append(errs, fmt.Errorf("http.listen %q: %w", h.Listen, err))
	}
	if h.AuthHeader == "" || strings.ContainsAny(h.AuthHeader, " :\t\r\n") {
		errs = append(errs, fmt.Errorf("http.auth_header %q: not a valid header name", h.AuthHeader))
	}
	if h.MaxBodyBytes <= 0 {
		errs = append(errs, errors.New("http.max_body_bytes: must be positive"))
	}
	if h.MaxBytesInFlight < 0 || h.MaxBytesInFlight > 0 && h.MaxBytesInFlight < h.MaxBodyBytes {
		errs = append(errs, fmt.Errorf("http.max_bytes_in_flight: %d is less than http.max_body_bytes (%d), so a request of the largest allowed body could never be served (0: 4 × max_body_bytes)", h.MaxBytesInFlight, h.MaxBodyBytes))
	}
	if h.MaxConnections <= 0 {
		errs = append(errs, errors.New("http.max_connections: must be positive"))
	}
	for i, name := range h.AllowedHosts {
		if err := checkHostName(name); err != nil {
			errs = append(errs, fmt.Errorf("http.allowed_hosts[%d] %q: %w", i, name, err))
		}
	}
	for name, d := range map[string]time.Duration{"read_timeout": h.ReadTimeout, "write_timeout": h.WriteTimeout, "idle_timeout": h.IdleTimeout, "shutdown_timeout": h.ShutdownTimeout} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("http.%s: must be positive", name))
		}
	}
	if h.TLS != nil {
		errs = append(errs, h.TLS.Validate())
	}
	return errors.Join(errs...)
}

// checkHostName accepts a host name or IP address as clients send it in
// Host, without scheme, port or path.
func checkHostName(name string) error {
	if net.ParseIP(strings.Trim(name, "[]")) != nil {
		return nil
	}
	if name == "" || strings.ContainsAny(name, ":/ *@") {
		return errors.New("want a host name as clients send it in Host, without scheme, port or path (e.g. flowmetrics.example.com)")
	}
	return nil
}

// ServedHosts are the host names serve answers to besides loopback names
// and IP addresses: AllowedHosts and the listen address's host.
func (h HTTP) ServedHosts() []string {
	hosts := append([]string(nil), h.AllowedHosts...)
	if host, _, err := net.SplitHostPort(h.Listen); err == nil && host != "" {
		hosts = append(hosts, host)
	}
	return hosts
}

// Secret returns the shared secret from the environment ("" if unset),
// without leading or trailing whitespace: an HTTP header cannot carry it
// (servers strip it), and a secret read from a file often ends in a
// newline, which would otherwise never match.
func (h HTTP) Secret() string {
	if h.SecretEnv == "" {
		return ""
	}
	return strings.TrimSpace(os.Getenv(h.SecretEnv))
}

// checkSecret refuses a secret that is set but could never be sent in a
// header: only whitespace (which would silently turn auth off), or with
// control characters inside it.
func (h HTTP) checkSecret() error {
	if h.SecretEnv == "" {
		return nil
	}
	raw, set := os.LookupEnv(h.SecretEnv)
	if !set || raw == "" {
		return nil
	}
	secret := strings.TrimSpace(raw)
	if secret == "" {
		return fmt.Errorf("$%s is set but blank: set the shared secret, or unset the variable to run without one", h.SecretEnv)
	}
	if strings.IndexFunc(secret, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return fmt.Errorf("$%s holds a control character (a newline?) inside the secret, which no HTTP header can carry: the secret must be one line of printable characters", h.SecretEnv)
	}
	return nil
}

// Validate checks the store section.
func (s Store) Validate() error {
	switch s.Type {
	case "embedded", "memory":
	default:
		return fmt.Errorf("store.type %q: want embedded or memory", s.Type)
	}
	if s.Retention <= 0 {
		return errors.New("store.retention: must be positive")
	}
	if s.SweepInterval <= 0 {
		return errors.New("store.sweep_interval: must be positive")
	}
	if s.MinFreeBytes < 0 || s.BallastBytes < 0 {
		return errors.New("store.min_free_bytes, store.ballast_bytes: must not be negative (0 sizes them automatically)")
	}
	return nil
}

// IsLoopback reports whether a listen address only accepts connections from
// this machine.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
