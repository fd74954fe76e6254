package dogstatsd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
)

// DefaultAddr is where the Agent and the Lambda Extension listen by default.
const DefaultAddr = "127.0.0.1:8125"

// Config is the sinks.dogstatsd section of the YAML config.
type Config struct {
	// Addr is host:port for UDP, or unix:///path/to/dsd.socket for a Unix
	// socket (unixgram:// and unixstream:// force the socket type). Empty:
	// the client's environment variables DD_DOGSTATSD_URL, or
	// DD_AGENT_HOST and DD_DOGSTATSD_PORT; else 127.0.0.1:8125.
	Addr string `yaml:"addr"`
	// Mode: count (default) sends each series-second's running total as a
	// count stamped with the bucket time (|T); distribution sends one
	// value of 1 per occurrence as a distribution (|d), which DogStatsD
	// stamps with its arrival time. See README.md for which to pick.
	Mode datadog.Mode `yaml:"mode"`
	// LatePolicy: clamp (default) or drop, for points older than an hour
	// or more than ten minutes ahead, which Datadog would not keep (count
	// mode only).
	LatePolicy datadog.LatePolicy `yaml:"late_policy"`
	// WriteTimeout bounds a write to a Unix socket (client default 100ms).
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// MaxDatagramBytes overrides the client's datagram size (1432 bytes
	// for UDP, 8192 for Unix sockets).
	MaxDatagramBytes int `yaml:"max_datagram_bytes"`
	// OriginDetection lets the client send its container ID so the Agent
	// adds container tags. Off by default: extra tags are extra billed
	// custom metrics, and Lambda has no container.
	OriginDetection bool `yaml:"origin_detection"`
	// ClientTelemetry lets the client send its own datadog.dogstatsd.client.*
	// metrics every 10 s (off by default).
	ClientTelemetry bool `yaml:"client_telemetry"`
	// Receiver is what listens on Addr: agent (the default: the Datadog
	// Agent) or lambda_extension (the Datadog Lambda Extension, which the
	// Lambda entry point sets itself). They aggregate counts by different
	// rules, so count mode is exact through the Agent only (see Receiver).
	Receiver Receiver `yaml:"receiver"`
	// Now is the clock (time.Now if nil). Not configurable from YAML.
	Now func() time.Time `yaml:"-"`
}

// Receiver names the DogStatsD server the sink sends to, whose rule decides
// what it stores.
type Receiver string

const (
	// Agent is the Datadog Agent (7.40 or later). A count with a timestamp
	// (|T) skips its aggregation: each one is forwarded as one point at its
	// time (the Agent's no-aggregation pipeline), and Datadog keeps the last
	// value per series and second. Running totals are exact.
	Agent Receiver = "agent"
	// LambdaExtension is the Datadog Lambda Extension. It aggregates every
	// count, timestamped or not: points that share a name, tags and 10 s
	// bucket (the timestamp rounded down to 10 s) are added up until its
	// next flush, and each flush sends the sums to Datadog, which keeps the
	// last value per series and second. Running totals sent between two
	// flushes are summed (an overcount); increments sent across a flush
	// overwrite each other (an undercount). When it flushes is its own
	// business (at the end of an invocation, or periodically), so no
	// sequence of counts is exact through it: count mode is refused there.
	// Distributions are exact: it merges them, and Datadog adds them up.
	LambdaExtension Receiver = "lambda_extension"
)

// Validate checks the receiver against the mode.
func (r Receiver) Validate(mode datadog.Mode) error {
	switch r {
	case "", Agent:
		return nil
	case LambdaExtension:
		if mode == "" || mode == datadog.Count {
			return errors.New("mode count is not exact through the Datadog Lambda Extension: it adds up the counts that share a name, tags and 10-second bucket until its next flush, so the running totals count mode sends would be summed (an overcount), and Datadog keeps only the last value of each flush; use mode distribution (FLOWMETRICS_DATADOG_MODE=distribution, the default in Lambda), or the datadog API sink for count mode")
		}
		return nil
	default:
		return fmt.Errorf("receiver %q: want agent or lambda_extension", string(r))
	}
}

// Validate checks the section without touching the network.
func (c Config) Validate() error {
	if c.Addr != "" {
		if err := validateAddr(c.Addr); err != nil {
			return err
		}
	}
	if err := c.Mode.Validate(); err != nil {
		return fmt.Errorf("mode %w", err)
	}
	if err := c.LatePolicy.Validate(); err != nil {
		return fmt.Errorf("late_policy %w", err)
	}
	if err := c.Receiver.Validate(c.Mode); err != nil {
		return err
	}
	if c.WriteTimeout < 0 {
		return errors.New("write_timeout: must not be negative")
	}
	if c.MaxDatagramBytes < 0 || c.MaxDatagramBytes > 65467 {
		return errors.New("max_datagram_bytes: must be between 1 and 65467")
	}
	return nil
}

var socketPrefixes = []string{"unix://", "unixgram://", "unixstream://"}

func validateAddr(a string) error {
	for _, p := range socketPrefixes {
		if path, ok := strings.CutPrefix(a, p); ok {
			if !strings.HasPrefix(path, "/") {
				return fmt.Errorf("addr %q: want an absolute socket path, e.g. unix:///var/run/datadog/dsd.socket", a)
			}
			return nil
		}
	}
	host, port, err := net.SplitHostPort(strings.TrimPrefix(a, "udp://"))
	if err != nil {
		return fmt.Errorf("addr %q: want host:port or unix:///path: %v", a, err)
	}
	if host == "" {
		return fmt.Errorf("addr %q: empty host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("addr %q: bad port", a)
	}
	return nil
}

// addr returns the address to dial; empty means the client reads it from
// its environment variables.
func (c Config) addr() string {
	if c.Addr != "" {
		return strings.TrimPrefix(c.Addr, "udp://")
	}
	if os.Getenv("DD_DOGSTATSD_URL") != "" || os.Getenv("DD_AGENT_HOST") != "" {
		return ""
	}
	return DefaultAddr
}

// isUDP reports whether addr (from Config.addr) is a UDP host:port rather
// than a socket or the client's environment.
func isUDP(addr string) bool {
	if addr == "" || strings.HasPrefix(addr, `\\.\pipe\`) {
		return false
	}
	for _, p := range socketPrefixes {
		if strings.HasPrefix(addr, p) {
			return false
		}
	}
	return true
}
