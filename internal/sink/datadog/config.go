package datadog

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"
)

// Datadog's documented limits for POST /api/v2/series.
const (
	// MaxPayloadBytes is the largest accepted (compressed) request body.
	MaxPayloadBytes = 512000
	// MaxUncompressedBytes bounds the decompressed body: it must be less
	// than this.
	MaxUncompressedBytes = 5242880
)

// Defaults applied by New to zero fields.
const (
	DefaultSite              = "datadoghq.com"
	DefaultAPIKeyEnv         = "DD_API_KEY"
	DefaultTimeout           = 15 * time.Second
	DefaultMaxRetries        = 3
	DefaultRetryInitial      = time.Second
	DefaultRetryMax          = 30 * time.Second
	DefaultAuthRetryInterval = time.Minute
)

// Mode is how occurrences are represented in Datadog.
type Mode string

const (
	// Count sends each series-second's running total as a count
	// (POST /api/v2/series). Datadog keeps the last value per series and
	// second, so it is exact only with one writer per series; the totals
	// are kept in the state store, committed with the sink's cursor.
	Count Mode = "count"
	// Distribution sends one value of 1 per occurrence as a distribution
	// point (POST /api/v1/distribution_points). Datadog aggregates every
	// value server-side, so any number of writers, restarts and crashes
	// add up; a resent batch is counted twice.
	Distribution Mode = "distribution"
)

// Validate checks the mode; empty means the caller's default.
func (m Mode) Validate() error {
	switch m {
	case "", Count, Distribution:
		return nil
	}
	return fmt.Errorf("%q: want count or distribution", string(m))
}

// LatePolicy says what happens to a point whose timestamp Datadog would not
// accept (older than an hour or more than ten minutes ahead).
type LatePolicy string

const (
	// Clamp moves the point to the nearest edge of the accepted window:
	// the occurrences are counted, a little later (or earlier) than they
	// happened.
	Clamp LatePolicy = "clamp"
	// Drop discards the point.
	Drop LatePolicy = "drop"
)

// Validate checks the policy; empty means Clamp.
func (p LatePolicy) Validate() error {
	switch p {
	case "", Clamp, Drop:
		return nil
	}
	return fmt.Errorf("%q: want clamp or drop", string(p))
}

func (p LatePolicy) orDefault() LatePolicy {
	if p == "" {
		return Clamp
	}
	return p
}

// Config is the sinks.datadog section of the YAML config. The API key is
// never part of it: it is read from the environment variable named by
// APIKeyEnv.
type Config struct {
	// Site is the Datadog site, e.g. datadoghq.eu or us5.datadoghq.com.
	// Empty: the DD_SITE environment variable, else datadoghq.com. A
	// leading "app." or "api." is ignored, so the site as shown in the
	// browser works too.
	Site string `yaml:"site"`
	// URL, if set, replaces https://api.<site> (tests, proxies); the path
	// /api/v2/series (count) or /api/v1/distribution_points (distribution)
	// is appended.
	URL string `yaml:"url"`
	// APIKeyEnv names the environment variable holding the API key
	// (default DD_API_KEY).
	APIKeyEnv string `yaml:"api_key_env"`
	// Mode: count (default) or distribution; see Mode and README.md for
	// which to pick. Lambda defaults to distribution.
	Mode Mode `yaml:"mode"`
	// LatePolicy: clamp (default) or drop.
	LatePolicy LatePolicy `yaml:"late_policy"`
	// Timeout bounds one HTTP request (default 15s).
	Timeout time.Duration `yaml:"timeout"`
	// MaxRetries is how many times one Send retries a retryable failure
	// (408, 429, 5xx, network) before returning an error to the pipeline,
	// which calls again after its own backoff (default 3).
	MaxRetries int `yaml:"max_retries"`
	// RetryInitial and RetryMax bound the jittered exponential backoff
	// between those retries (defaults 1s and 30s).
	RetryInitial time.Duration `yaml:"retry_initial"`
	RetryMax     time.Duration `yaml:"retry_max"`
	// AuthRetryInterval is how long to wait after a 401 or 403 before
	// trying again (default 1m); Sends before then fail at once.
	AuthRetryInterval time.Duration `yaml:"auth_retry_interval"`
	// MaxPayloadBytes and MaxUncompressedBytes override Datadog's limits
	// (512000 compressed, 5242880 uncompressed); they may only be lowered.
	MaxPayloadBytes      int `yaml:"max_payload_bytes"`
	MaxUncompressedBytes int `yaml:"max_uncompressed_bytes"`
	// Now is the clock (time.Now if nil). Not configurable from YAML.
	Now func() time.Time `yaml:"-"`
}

// Validate checks the section without touching the network or the
// environment.
func (c Config) Validate() error {
	if c.Site != "" {
		if _, err := normalizeSite(c.Site); err != nil {
			return err
		}
	}
	if c.URL != "" {
		u, err := url.Parse(c.URL)
		if err != nil {
			return fmt.Errorf("url: %w", err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("url %q: want http(s)://host[:port][/prefix]", c.URL)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("url %q: no query or fragment allowed", c.URL)
		}
	}
	if c.APIKeyEnv != "" && !isEnvName(c.APIKeyEnv) {
		return fmt.Errorf("api_key_env %q: not an environment variable name (the key itself never goes in the config file)", c.APIKeyEnv)
	}
	if err := c.Mode.Validate(); err != nil {
		return fmt.Errorf("mode %w", err)
	}
	if err := c.LatePolicy.Validate(); err != nil {
		return fmt.Errorf("late_policy %w", err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"timeout", c.Timeout}, {"retry_initial", c.RetryInitial}, {"retry_max", c.RetryMax}, {"auth_retry_interval", c.AuthRetryInterval}} {
		if d.v < 0 {
			return fmt.Errorf("%s: must not be negative", d.name)
		}
	}
	if c.RetryInitial > 0 && c.RetryMax > 0 && c.RetryMax < c.RetryInitial {
		return errors.New("retry_max: must not be less than retry_initial")
	}
	if c.MaxRetries < 0 {
		return errors.New("max_retries: must not be negative")
	}
	if c.MaxPayloadBytes < 0 || c.MaxPayloadBytes > MaxPayloadBytes {
		return fmt.Errorf("max_payload_bytes: must be between 1 and %d", MaxPayloadBytes)
	}
	if c.MaxUncompressedBytes < 0 || c.MaxUncompressedBytes > MaxUncompressedBytes {
		return fmt.Errorf("max_uncompressed_bytes: must be between 1 and %d", MaxUncompressedBytes)
	}
	return nil
}

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.APIKeyEnv == "" {
		c.APIKeyEnv = DefaultAPIKeyEnv
	}
	if c.Mode == "" {
		c.Mode = Count
	}
	c.LatePolicy = c.LatePolicy.orDefault()
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	}
	if c.RetryInitial == 0 {
		c.RetryInitial = DefaultRetryInitial
	}
	if c.RetryMax == 0 {
		c.RetryMax = max(DefaultRetryMax, c.RetryInitial)
	}
	if c.AuthRetryInterval == 0 {
		c.AuthRetryInterval = DefaultAuthRetryInterval
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = MaxPayloadBytes
	}
	if c.MaxUncompressedBytes == 0 {
		c.MaxUncompressedBytes = MaxUncompressedBytes
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Intake paths of the two modes.
const (
	seriesPath       = "/api/v2/series"
	distributionPath = "/api/v1/distribution_points"
)

func (c Config) path() string {
	if c.Mode == Distribution {
		return distributionPath
	}
	return seriesPath
}

// endpoint returns the intake URL of c's mode, reading DD_SITE when neither
// URL nor Site is set.
func (c Config) endpoint() (string, error) { return c.endpointOf(c.path()) }

// endpointOf returns the URL of an intake path on c's site or URL.
func (c Config) endpointOf(path string) (string, error) {
	if c.URL != "" {
		return strings.TrimSuffix(c.URL, "/") + path, nil
	}
	site := c.Site
	if site == "" {
		site = os.Getenv("DD_SITE")
	}
	if site == "" {
		site = DefaultSite
	}
	host, err := normalizeSite(site)
	if err != nil {
		return "", err
	}
	return "https://api." + host + path, nil
}

// normalizeSite turns "datadoghq.eu", "app.datadoghq.eu" or
// "api.datadoghq.eu" into "datadoghq.eu".
func normalizeSite(s string) (string, error) {
	if strings.Contains(s, "://") || strings.ContainsAny(s, "/ :?#@") {
		return "", fmt.Errorf("site %q: want a site name such as datadoghq.eu (use url for a full URL)", s)
	}
	s = strings.ToLower(strings.TrimSuffix(s, "."))
	s = strings.TrimPrefix(strings.TrimPrefix(s, "app."), "api.")
	if !strings.Contains(s, ".") {
		return "", fmt.Errorf("site %q: want a site name such as datadoghq.eu", s)
	}
	for _, r := range s {
		if !(r == '.' || r == '-' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return "", fmt.Errorf("site %q: unexpected character %q", s, r)
		}
	}
	return s, nil
}

func isEnvName(s string) bool {
	for i, r := range s {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return s != ""
}

// APIKey returns the API key secret reads from the environment variable
// APIKeyEnv (default DD_API_KEY), or an error when it is unset or blank.
// New and serve's config check (-check-config) share it, so both refuse a
// missing key with the same message.
func (c Config) APIKey(secret func(env string) string) (string, error) {
	c = c.withDefaults()
	key := strings.TrimSpace(secret(c.APIKeyEnv))
	if key == "" {
		return "", fmt.Errorf("api_key_env: environment variable %s is not set: it must hold the API key", c.APIKeyEnv)
	}
	return key, nil
}
