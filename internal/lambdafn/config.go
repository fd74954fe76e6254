package lambdafn

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/dogstatsd"
	"github.com/flowmetrics/flowmetrics/internal/sink/emf"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
)

// Defaults for the Lambda deployment. The cache TTL and the lease are short
// on purpose: see the package doc for the inequality they keep with the
// redelivery delays.
const (
	DefaultCacheTTL     = 15 * time.Second
	DefaultFlushReserve = 2 * time.Second
	DefaultSink         = "dogstatsd"
	// DefaultDatadogMode is distribution: Lambda runs as many instances
	// as the load needs, and only distributions add up across writers.
	DefaultDatadogMode = datadog.Distribution
)

// DefaultFlushAttempts: an invocation gives up on a sink after three failed
// sends in a row (about 1.5 s of backoff); its records come back through the
// trigger's retry.
const DefaultFlushAttempts = 3

// Config is the function's configuration, read from its environment.
type Config struct {
	// Table: FLOWMETRICS_TABLE (required).
	Table string
	// Endpoint: FLOWMETRICS_DYNAMODB_ENDPOINT, a DynamoDB endpoint other
	// than AWS's (local tests).
	Endpoint string
	// Store: FLOWMETRICS_LEASE, FLOWMETRICS_LEASE_MARGIN,
	// FLOWMETRICS_READ_FIRST (default true).
	Store dynamostore.Config
	// Retention: FLOWMETRICS_RETENTION (default 168h).
	Retention time.Duration
	// Pipeline: FLOWMETRICS_BUCKET (default 10s), FLOWMETRICS_CACHE_TTL
	// (default 15s), FLOWMETRICS_CACHE_CONVERSATIONS (default 100000,
	// negative disables the cache), FLOWMETRICS_FLUSH_ATTEMPTS (default 3
	// failed sends in a row before an invocation gives up on a sink).
	Pipeline pipeline.Config
	// CardinalityLimit: FLOWMETRICS_CARDINALITY_LIMIT, the distinct
	// flow/metric pairs let through before the rest fold into the
	// overflow series (default 1000, negative: no limit). Every instance
	// shares the table's admitted set, so the limit holds for the whole
	// deployment.
	CardinalityLimit int
	// Sinks: FLOWMETRICS_SINK, a comma-separated list of dogstatsd (the
	// Datadog Lambda Extension; default), datadog (the API) and emf
	// (CloudWatch embedded metric format on stdout).
	Sinks []string
	// Naming: FLOWMETRICS_METRIC_NAME, FLOWMETRICS_NAME_TEMPLATE and
	// FLOWMETRICS_TAGS ("env:prod,team:cx").
	Naming naming.Config
	// DogStatsD: FLOWMETRICS_DOGSTATSD_ADDR (default 127.0.0.1:8125),
	// FLOWMETRICS_DATADOG_MODE, FLOWMETRICS_LATE_POLICY.
	DogStatsD dogstatsd.Config
	// Datadog: DD_SITE, DD_API_KEY (or DD_API_KEY_SECRET_ARN, read from
	// Secrets Manager at cold start), FLOWMETRICS_DATADOG_URL,
	// FLOWMETRICS_DATADOG_MODE (distribution, the default, or count: see
	// DefaultDatadogMode; it applies to the dogstatsd sink too),
	// FLOWMETRICS_LATE_POLICY.
	Datadog datadog.Config
	// APIKeySecretARN: DD_API_KEY_SECRET_ARN, used when DD_API_KEY is empty.
	APIKeySecretARN string
	// EMF: FLOWMETRICS_EMF_NAMESPACE (default Genesys/Flows).
	EMF emf.Config
	// FlushReserve: FLOWMETRICS_FLUSH_RESERVE, the part of the invocation's
	// time kept for answering after delivery gives up (default 2s).
	FlushReserve time.Duration
	// FunctionTimeout: FLOWMETRICS_FUNCTION_TIMEOUT, the function's
	// timeout as deployed (the template sets it from the same value), so
	// that its relation to the lease is checked at cold start; unchecked
	// when unset.
	FunctionTimeout time.Duration
	// LogLevel: FLOWMETRICS_LOG_LEVEL (default warn: Lambda logs are billed
	// by the byte, and nothing is logged per event).
	LogLevel string
	// FunctionName: AWS_LAMBDA_FUNCTION_NAME, the dimension of the
	// function's own metrics.
	FunctionName string
	// MetricsOut receives the function's own metrics (RecordsFailed,
	// RecordsDeferred) in CloudWatch embedded metric format: stdout in
	// Lambda (Run sets it); nil reports nothing.
	MetricsOut io.Writer
}

// ConfigFromEnv reads the configuration with getenv (os.Getenv in Lambda).
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		Table:           getenv("FLOWMETRICS_TABLE"),
		Endpoint:        getenv("FLOWMETRICS_DYNAMODB_ENDPOINT"),
		APIKeySecretARN: getenv("DD_API_KEY_SECRET_ARN"),
		LogLevel:        or(getenv("FLOWMETRICS_LOG_LEVEL"), "warn"),
		Store:           dynamostore.Config{ReadFirst: true},
		Pipeline:        pipeline.Config{CacheTTL: DefaultCacheTTL},
		FlushReserve:    DefaultFlushReserve,
	}
	var errs []error
	dur := func(name string, dst *time.Duration) {
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
				return
			}
			*dst = d
		}
	}
	dur("FLOWMETRICS_LEASE", &c.Store.Lease)
	dur("FLOWMETRICS_LEASE_MARGIN", &c.Store.Margin)
	dur("FLOWMETRICS_RETENTION", &c.Retention)
	dur("FLOWMETRICS_BUCKET", &c.Pipeline.Bucket)
	dur("FLOWMETRICS_CACHE_TTL", &c.Pipeline.CacheTTL)
	dur("FLOWMETRICS_FLUSH_RESERVE", &c.FlushReserve)
	dur("FLOWMETRICS_FUNCTION_TIMEOUT", &c.FunctionTimeout)
	c.FunctionName = getenv("AWS_LAMBDA_FUNCTION_NAME")
	if v := getenv("FLOWMETRICS_FLUSH_ATTEMPTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("FLOWMETRICS_FLUSH_ATTEMPTS=%q: want a whole number ≥ 1", v))
		}
		c.Pipeline.FlushAttempts = n
	}
	if v := getenv("FLOWMETRICS_READ_FIRST"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("FLOWMETRICS_READ_FIRST=%q: %w", v, err))
		}
		c.Store.ReadFirst = b
	}
	if v := getenv("FLOWMETRICS_CACHE_CONVERSATIONS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("FLOWMETRICS_CACHE_CONVERSATIONS=%q: %w", v, err))
		}
		c.Pipeline.CacheConversations = n
	}
	if v := getenv("FLOWMETRICS_CARDINALITY_LIMIT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("FLOWMETRICS_CARDINALITY_LIMIT=%q: %w", v, err))
		}
		c.CardinalityLimit = n
	}
	for _, s := range strings.Split(or(getenv("FLOWMETRICS_SINK"), DefaultSink), ",") {
		if s = strings.TrimSpace(s); s != "" {
			c.Sinks = append(c.Sinks, s)
		}
	}
	c.Naming.Name = getenv("FLOWMETRICS_METRIC_NAME")
	c.Naming.Template = getenv("FLOWMETRICS_NAME_TEMPLATE")
	if v := getenv("FLOWMETRICS_TAGS"); v != "" {
		c.Naming.Tags = map[string]string{}
		for _, kv := range strings.Split(v, ",") {
			k, val, ok := strings.Cut(strings.TrimSpace(kv), ":")
			if !ok {
				errs = append(errs, fmt.Errorf("FLOWMETRICS_TAGS: %q is not key:value", kv))
				continue
			}
			c.Naming.Tags[k] = val
		}
	}
	late := datadog.LatePolicy(getenv("FLOWMETRICS_LATE_POLICY"))
	mode := datadog.Mode(or(getenv("FLOWMETRICS_DATADOG_MODE"), string(DefaultDatadogMode)))
	if err := mode.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("FLOWMETRICS_DATADOG_MODE %w", err))
	}
	c.DogStatsD.Addr = getenv("FLOWMETRICS_DOGSTATSD_ADDR")
	c.DogStatsD.Mode = mode
	// In Lambda, DogStatsD is the Datadog Lambda Extension, whose rule for
	// counts is not the Agent's: Validate refuses count mode there.
	c.DogStatsD.Receiver = dogstatsd.LambdaExtension
	c.DogStatsD.LatePolicy = late
	c.Datadog.Mode = mode
	c.Datadog.URL = getenv("FLOWMETRICS_DATADOG_URL")
	c.Datadog.LatePolicy = late
	c.EMF.Namespace = getenv("FLOWMETRICS_EMF_NAMESPACE")
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	return c, c.Validate()
}

func or(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Validate checks the configuration without touching the network.
func (c Config) Validate() error {
	store := c.Store
	store.Table = c.Table
	if c.Table == "" {
		return errors.New("FLOWMETRICS_TABLE is required")
	}
	if err := store.Validate(); err != nil {
		return err
	}
	if c.Retention < 0 {
		return errors.New("FLOWMETRICS_RETENTION: must not be negative")
	}
	if err := c.Pipeline.Validate(); err != nil {
		return config.At("pipeline", err)
	}
	if err := c.Naming.Validate(); err != nil {
		return config.At("naming", err)
	}
	if len(c.Sinks) == 0 {
		return errors.New("FLOWMETRICS_SINK: no sink")
	}
	seen := map[string]bool{}
	for _, s := range c.Sinks {
		if seen[s] {
			return fmt.Errorf("FLOWMETRICS_SINK: %s twice", s)
		}
		seen[s] = true
		// The sinks' fields are named as in the YAML file's sections.
		var err error
		switch s {
		case "dogstatsd":
			err = c.DogStatsD.Validate()
		case "datadog":
			err = c.Datadog.Validate()
		case "emf":
			err = c.EMF.Validate()
		default:
			return fmt.Errorf("FLOWMETRICS_SINK: unknown sink %q (want dogstatsd, datadog or emf)", s)
		}
		if err != nil {
			return config.At(s, err)
		}
	}
	if c.FlushReserve < 0 || c.FunctionTimeout < 0 {
		return errors.New("FLOWMETRICS_FLUSH_RESERVE, FLOWMETRICS_FUNCTION_TIMEOUT: must not be negative")
	}
	return config.Rules(config.Settings{
		Retention: c.Retention, CacheTTL: c.Pipeline.CacheTTL, CacheConversations: c.Pipeline.CacheConversations,
		Lease: c.Store.Lease, Margin: c.Store.Margin, FunctionTimeout: c.FunctionTimeout, FlushReserve: c.FlushReserve,
	}, envNames)
}

// envNames are the settings' names in the function's environment.
var envNames = config.Names{
	Retention: "FLOWMETRICS_RETENTION", CacheTTL: "FLOWMETRICS_CACHE_TTL",
	Lease: "FLOWMETRICS_LEASE", Margin: "FLOWMETRICS_LEASE_MARGIN",
	FunctionTimeout: "FLOWMETRICS_FUNCTION_TIMEOUT", FlushReserve: "FLOWMETRICS_FLUSH_RESERVE",
}
