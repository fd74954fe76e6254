package statsd

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"golang.org/x/text/unicode/norm"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// Name is the sink's name in config, logs and self-metrics.
const Name = "statsd"

// DefaultMaxDatagram keeps a datagram within one Ethernet frame (1500 bytes
// MTU less IP and UDP headers, with a margin), so it is never fragmented.
const DefaultMaxDatagram = 1432

// Tag styles.
const (
	TagStyleNone      = "none"      // flow and metric become name segments
	TagStyleGraphite  = "graphite"  // name;flow=X;metric=Y (Graphite 1.1 tags)
	TagStyleDogStatsD = "dogstatsd" // name:1|c|#flow:X,metric:Y
)

// Config is the statsd section of the YAML config.
type Config struct {
	// Addr is the daemon's UDP address, host:port.
	Addr string `yaml:"addr"`
	// MaxDatagram is the largest datagram payload in bytes.
	MaxDatagram int `yaml:"max_datagram"`
	// TagStyle is none (default), graphite or dogstatsd.
	TagStyle string `yaml:"tag_style"`
	// Prefix is put before every name, e.g. "prod." (none style only has
	// no other place for an environment).
	Prefix string `yaml:"prefix"`
}

func (c Config) withDefaults() Config {
	if c.MaxDatagram == 0 {
		c.MaxDatagram = DefaultMaxDatagram
	}
	if c.TagStyle == "" {
		c.TagStyle = TagStyleNone
	}
	return c
}

// Validate checks the section without touching the network.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.Addr == "" {
		return errors.New("statsd.addr: required (host:port)")
	}
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return fmt.Errorf("statsd.addr %q: %w", c.Addr, err)
	}
	if host == "" {
		return fmt.Errorf("statsd.addr %q: host required", c.Addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("statsd.addr %q: bad port", c.Addr)
	}
	if c.MaxDatagram < 64 || c.MaxDatagram > 65507 {
		return fmt.Errorf("statsd.max_datagram %d: must be between 64 and 65507", c.MaxDatagram)
	}
	switch c.TagStyle {
	case TagStyleNone, TagStyleGraphite, TagStyleDogStatsD:
	default:
		return fmt.Errorf("statsd.tag_style %q: must be none, graphite or dogstatsd", c.TagStyle)
	}
	if strings.ContainsAny(c.Prefix, ":|@\n;#, ") {
		return fmt.Errorf("statsd.prefix %q: must not contain ':|@;#,', spaces or newlines", c.Prefix)
	}
	return nil
}

// conn is the part of a UDP connection the sink uses.
type conn interface {
	Write([]byte) (int, error)
	Close() error
}

// Sink sends counters to a StatsD daemon.
type Sink struct {
	cfg      Config
	namer    *naming.Namer
	perName  bool // the namer has a template: one name per flow and metric
	m        *telemetry.Metrics
	log      *slog.Logger
	dial     func() (conn, error)
	attempts int // writes tried per datagram before Send fails

	mu     sync.Mutex
	conn   conn
	closed bool
	// resume remembers how far a failed batch got, so that when the
	// pipeline sends the same batch again the datagrams already written are
	// not counted twice.
	resume struct {
		sum  uint64
		sent int
	}
}

// New returns a sink for cfg (which should have passed Validate). It does not
// touch the network: the socket is opened on the first Send.
func New(cfg Config, namer *naming.Namer, m *telemetry.Metrics, log *slog.Logger) (*Sink, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if namer == nil {
		namer = naming.New(naming.Config{})
	}
	if m == nil {
		m = telemetry.New()
	}
	if log == nil {
		log = slog.Default()
	}
	s := &Sink{
		cfg:      cfg,
		namer:    namer,
		perName:  namer.Name("\x00a", "\x00b") != namer.Name("\x00c", "\x00d"),
		m:        m,
		log:      log.With("sink", Name),
		attempts: 3,
	}
	s.dial = func() (conn, error) { return net.Dial("udp", cfg.Addr) }
	if cfg.TagStyle == TagStyleNone && len(namer.Static()) > 0 {
		s.log.Warn("plain StatsD has no tags: static tags are not sent (use prefix or tag_style)", "tags", len(namer.Static()))
	}
	return s, nil
}

// Name implements flowmetrics.Sink.
func (s *Sink) Name() string { return Name }

// Send implements flowmetrics.Sink. It returns nil once every datagram was
// written to the socket; UDP gives no acknowledgement beyond that. A failed
// batch remembers how many datagrams left, and the same batch sent again
// resumes after them.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	dgrams := s.Datagrams(points)
	if len(dgrams) == 0 {
		return nil
	}
	sum := fingerprint(dgrams)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("statsd: sink closed")
	}
	start := 0
	if s.resume.sum == sum {
		start = s.resume.sent
	}
	for i := start; i < len(dgrams); i++ {
		if err := ctx.Err(); err != nil {
			s.resume.sum, s.resume.sent = sum, i
			return fmt.Errorf("statsd: %w", err)
		}
		if err := s.write(dgrams[i]); err != nil {
			s.resume.sum, s.resume.sent = sum, i
			s.m.SinkFailures.WithLabelValues(Name, "write").Inc()
			return fmt.Errorf("statsd: write to %s: %w", s.cfg.Addr, err)
		}
	}
	s.resume.sum, s.resume.sent = 0, 0
	return nil
}

// write sends one datagram, reconnecting and retrying a few times: on Linux a
// connected UDP socket reports an ICMP error for an earlier datagram on the
// next write, which then did not send.
func (s *Sink) write(d []byte) error {
	var err error
	for a := 0; a < s.attempts; a++ {
		if a > 0 {
			time.Sleep(time.Duration(a) * 10 * time.Millisecond)
		}
		if s.conn == nil {
			if s.conn, err = s.dial(); err != nil {
				s.conn = nil
				continue
			}
		}
		if _, err = s.conn.Write(d); err == nil {
			return nil
		}
		s.conn.Close()
		s.conn = nil
	}
	return err
}

// Close implements flowmetrics.Sink. Nothing is buffered; it closes the
// socket and is safe to call twice.
func (s *Sink) Close(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.conn != nil {
		err := s.conn.Close()
		s.conn = nil
		return err
	}
	return nil
}

// Datagrams renders points as StatsD lines and packs them, in order, into
// datagrams of at most MaxDatagram bytes joined by "\n". A line longer than
// the limit on its own goes alone in a datagram. Points of the same series
// are summed first (StatsD would add them anyway; this keeps datagrams few).
func (s *Sink) Datagrams(points []flowmetrics.Point) [][]byte {
	type series struct {
		key   string
		count int64
	}
	var order []*series
	byKey := map[string]*series{}
	for _, p := range points {
		if p.Count <= 0 {
			s.m.PointsAdjusted.WithLabelValues(Name, "non_positive_count").Inc()
			continue
		}
		k := s.key(p.Flow, p.Metric)
		if se, ok := byKey[k]; ok {
			se.count += p.Count
			continue
		}
		se := &series{key: k, count: p.Count}
		byKey[k] = se
		order = append(order, se)
	}
	var out [][]byte
	var cur []byte
	for _, se := range order {
		line := s.line(se.key, se.count)
		if len(cur) > 0 && len(cur)+1+len(line) > s.cfg.MaxDatagram {
			out = append(out, cur)
			cur = nil
		}
		if len(cur) > 0 {
			cur = append(cur, '\n')
		}
		cur = append(cur, line...)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// key is the series identity: the line without ":count|c", with the tags of
// the dogstatsd style after a "|" marker.
func (s *Sink) key(flow, metric string) string {
	// Flow and metric are made safe before a template puts them in the
	// name, so that a '.' in a flow name adds no hierarchy level.
	name := s.cfg.Prefix + sanitizeName(s.namer.Name(sanitizeSegment(flow), sanitizeSegment(metric)))
	switch s.cfg.TagStyle {
	case TagStyleGraphite:
		var b strings.Builder
		b.WriteString(name)
		for _, t := range s.namer.Tags(flow, metric) {
			b.WriteString(";" + sanitizeName(t.Key) + "=" + sanitizeName(t.Value))
		}
		return b.String()
	case TagStyleDogStatsD:
		tags := make([]string, 0, 4)
		for _, t := range s.namer.Tags(flow, metric) {
			tags = append(tags, sanitizeName(t.Key)+":"+sanitizeName(t.Value))
		}
		return name + "|#" + strings.Join(tags, ",")
	default:
		if s.perName {
			return name
		}
		return name + "." + sanitizeSegment(flow) + "." + sanitizeSegment(metric)
	}
}

func (s *Sink) line(key string, count int64) []byte {
	name, tags, _ := strings.Cut(key, "|#")
	l := name + ":" + strconv.FormatInt(count, 10) + "|c"
	if tags != "" {
		l += "|#" + tags
	}
	return []byte(l)
}

func fingerprint(dgrams [][]byte) uint64 {
	h := fnv.New64a()
	for _, d := range dgrams {
		h.Write(d)
		h.Write([]byte{0})
	}
	return h.Sum64() | 1 // never 0, the "no resume" value
}

// sanitizeName keeps a dotted name safe for StatsD and Graphite: ASCII
// letters, digits, '_', '-' and '.'; accents are dropped ("é" → "e") and
// everything else, spaces included, becomes '_'.
func sanitizeName(s string) string { return sanitize(s, ".") }

// sanitizeSegment is sanitizeName for one path segment: a '.' inside a flow
// or metric name would add a Graphite hierarchy level, so it becomes '_'.
func sanitizeSegment(s string) string { return sanitize(s, "") }

// ligatures spells out the Latin letters that do not decompose into a base
// letter and an accent.
var ligatures = strings.NewReplacer("ß", "ss", "æ", "ae", "Æ", "AE", "œ", "oe", "Œ", "OE", "ø", "o", "Ø", "O", "ł", "l", "Ł", "L", "đ", "d", "Đ", "D", "þ", "th", "Þ", "TH")

func sanitize(s, extra string) string {
	var b strings.Builder
	for _, r := range norm.NFD.String(ligatures.Replace(s)) {
		switch {
		case unicode.Is(unicode.Mn, r):
			// combining mark left by decomposing an accented letter
		case r < 0x80 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-'):
			b.WriteRune(r)
		case r < 0x80 && strings.ContainsRune(extra, r):
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	if b.Len() == 0 {
		return "_"
	}
	return b.String()
}

var _ flowmetrics.Sink = (*Sink)(nil)
