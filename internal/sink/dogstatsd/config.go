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
	// Now is the clock (time.Now if nil). Not configurable from YAML.
	Now func() time.Time `yaml:"-"`
}

// Validate checks the section without touching the network.
func (c Config) Validate() error {
	if c.Addr != "" {
		if err := validateAddr(c.Addr); err != nil {
			return err
		}
	}
	if err := c.Mode.Validate(); err != nil {
		return fmt.Errorf("dogstatsd.%w", err)
	}
	if err := c.LatePolicy.Validate(); err != nil {
		return fmt.Errorf("dogstatsd.%w", err)
	}
	if c.WriteTimeout < 0 {
		return errors.New("dogstatsd.write_timeout: must not be negative")
	}
	if c.MaxDatagramBytes < 0 || c.MaxDatagramBytes > 65467 {
		return errors.New("dogstatsd.max_datagram_bytes: must be between 1 and 65467")
	}
	return nil
}

var socketPrefixes = []string{"unix://", "unixgram://", "unixstream://"}

func validateAddr(a string) error {
	for _, p := range socketPrefixes {
		if path, ok := strings.CutPrefix(a, p); ok {
			if !strings.HasPrefix(path, "/") {
				return fmt.Errorf("dogstatsd.addr %q: want an absolute socket path, e.g. unix:///var/run/datadog/dsd.socket", a)
			}
			return nil
		}
	}
	host, port, err := net.SplitHostPort(strings.TrimPrefix(a, "udp://"))
	if err != nil {
		return fmt.Errorf("dogstatsd.addr %q: want host:port or unix:///path: %v", a, err)
	}
	if host == "" {
		return fmt.Errorf("dogstatsd.addr %q: empty host", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("dogstatsd.addr %q: bad port", a)
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
