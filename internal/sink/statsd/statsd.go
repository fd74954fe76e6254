package statsd

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
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
	// ConfirmWait is how long the sink waits after each datagram for the
	// ICMP "port unreachable" a dead daemon's host answers with (default
	// 5 ms; it must exceed the round trip to the daemon).
	ConfirmWait time.Duration `yaml:"confirm_wait"`
}

// DefaultConfirmWait is far beyond a loopback or LAN round trip; each
// datagram costs it when the daemon is alive.
const DefaultConfirmWait = 5 * time.Millisecond

func (c Config) withDefaults() Config {
	if c.MaxDatagram == 0 {
		c.MaxDatagram = DefaultMaxDatagram
	}
	if c.TagStyle == "" {
		c.TagStyle = TagStyleNone
	}
	if c.ConfirmWait == 0 {
		c.ConfirmWait = DefaultConfirmWait
	}
	return c
}

// Validate checks the section without touching the network.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.Addr == "" {
		return errors.New("addr: required (host:port)")
	}
	host, port, err := net.SplitHostPort(c.Addr)
	if err != nil {
		return fmt.Errorf("addr %q: %w", c.Addr, err)
	}
	if host == "" {
		return fmt.Errorf("addr %q: host required", c.Addr)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("addr %q: bad port", c.Addr)
	}
	if c.MaxDatagram < 64 || c.MaxDatagram > 65507 {
		return fmt.Errorf("max_datagram %d: must be between 64 and 65507", c.MaxDatagram)
	}
	switch c.TagStyle {
	case TagStyleNone, TagStyleGraphite, TagStyleDogStatsD:
	default:
		return fmt.Errorf("tag_style %q: must be none, graphite or dogstatsd", c.TagStyle)
	}
	if c.ConfirmWait < 100*time.Microsecond || c.ConfirmWait > time.Second {
		return fmt.Errorf("confirm_wait %v: must be between 100µs and 1s", c.ConfirmWait)
	}
	if strings.ContainsAny(c.Prefix, ":|@\n;#, ") {
		return fmt.Errorf("prefix %q: must not contain ':|@;#,', spaces or newlines", c.Prefix)
	}
	return nil
}

// conn is the part of a connected UDP socket the sink uses.
type conn interface {
	Write([]byte) (int, error)
	// Read and SetReadDeadline collect the error an ICMP message left on
	// the socket (a daemon never answers).
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
	Close() error
}

// Sink sends counters to a StatsD daemon.
type Sink struct {
	cfg     Config
	namer   *naming.Namer
	perName bool // the namer has a template: one name per flow and metric
	m       *telemetry.Metrics
	log     *slog.Logger
	dial    func() (conn, error)

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
func New(cfg Config, d sink.Deps) (*Sink, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("statsd: %w", err)
	}
	d = d.WithDefaults()
	namer, m, log := d.Namer, d.Metrics, d.Log
	s := &Sink{
		cfg:     cfg,
		namer:   namer,
		perName: namer.Name("\x00a", "\x00b") != namer.Name("\x00c", "\x00d"),
		m:       m,
		log:     log.With("sink", Name),
	}
	s.dial = func() (conn, error) { return net.Dial("udp", cfg.Addr) }
	if cfg.TagStyle == TagStyleNone && len(namer.Static()) > 0 {
		s.log.Warn("plain StatsD has no tags: static tags are not sent (use prefix or tag_style)", "tags", len(namer.Static()))
	}
	return s, nil
}

// Name implements flowmetrics.Sink.
func (s *Sink) Name() string { return Name }

// Send implements flowmetrics.Sink. UDP has no acknowledgement, but a
// connected socket learns from the ICMP "port unreachable" that the host of
// a dead daemon answers with: after each datagram the sink waits up to
// ConfirmWait for it, and a refused datagram fails the batch (the pipeline
// retries it). A failed batch remembers which datagrams the daemon took, and
// the same batch sent again resumes after them, so nothing is counted twice.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	return s.send(ctx, s.Datagrams(points))
}

// SendPaths implements flowmetrics.PathSink: exits, funnels and experiments
// as counters (one per conversation, summed per series), step timings and
// timings as timers (|ms), one value per conversation, so the daemon's
// percentiles see every value. Delivery and resumption are Send's.
func (s *Sink) SendPaths(ctx context.Context, points []flowmetrics.PathPoint) error {
	return s.send(ctx, s.PathDatagrams(points))
}

// send writes datagrams, resuming a failed batch of the same datagrams
// after the ones the daemon took.
func (s *Sink) send(ctx context.Context, dgrams [][]byte) error {
	if len(dgrams) == 0 {
		return nil
	}
	sum := fingerprint(dgrams)

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
		again, reason, err := s.deliver(dgrams[i])
		if err == nil {
			continue
		}
		s.m.SinkFailures.WithLabelValues(Name, reason).Inc()
		if again {
			// A refusal reported by the write is for the datagram
			// before, whose ICMP message came after ConfirmWait.
			if i == 0 {
				// That datagram ended a batch already acknowledged.
				s.m.SinkFailures.WithLabelValues(Name, "late_refusal").Inc()
				s.log.Warn("the daemon refused a datagram after confirm_wait: it may be lost; raise statsd.confirm_wait", "addr", s.cfg.Addr, "confirm_wait", s.cfg.ConfirmWait)
			} else {
				i--
			}
		}
		s.resume.sum, s.resume.sent = sum, i
		return fmt.Errorf("statsd: %s: %w", s.cfg.Addr, err)
	}
	s.resume.sum, s.resume.sent = 0, 0
	return nil
}

// deliver writes one datagram and waits ConfirmWait for a refusal. An error
// means the datagram did not reach the daemon; again says the refusal was
// for the datagram written before this one. The socket is closed on any
// error, so the next attempt dials afresh (the daemon may have moved).
func (s *Sink) deliver(d []byte) (again bool, reason string, err error) {
	if s.conn == nil {
		if s.conn, err = s.dial(); err != nil {
			s.conn = nil
			return false, "dial", fmt.Errorf("dial: %w", err)
		}
	}
	defer func() {
		if err != nil {
			s.conn.Close()
			s.conn = nil
		}
	}()
	if _, err = s.conn.Write(d); err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return true, "refused", fmt.Errorf("write: %w", err)
		}
		return false, "write", fmt.Errorf("write: %w", err)
	}
	if err = s.conn.SetReadDeadline(time.Now().Add(s.cfg.ConfirmWait)); err != nil {
		return false, "write", fmt.Errorf("confirm: %w", err)
	}
	var buf [64]byte
	for {
		_, err = s.conn.Read(buf[:])
		switch {
		case err == nil:
			// A daemon that answers: ignore what it says, keep waiting.
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
			return false, "", nil
		case errors.Is(err, syscall.ECONNREFUSED):
			return false, "refused", fmt.Errorf("daemon refused the datagram: %w", err)
		default:
			return false, "write", fmt.Errorf("confirm: %w", err)
		}
	}
}

// Close implements flowmetrics.Sink. Nothing is buffered; it closes the
// socket and is safe to call twice.
func (s *Sink) Close(ctx context.Context) error {
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
	lines := make([][]byte, len(order))
	for i, se := range order {
		lines[i] = s.line(se.key, strconv.FormatInt(se.count, 10), "c")
	}
	return s.pack(lines)
}

// pack joins lines, in order, into datagrams of at most MaxDatagram bytes;
// a line longer than that goes alone.
func (s *Sink) pack(lines [][]byte) [][]byte {
	var out [][]byte
	var cur []byte
	for _, line := range lines {
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

// line renders one line of a series key: name:value|typ, then the tags of
// the dogstatsd style.
func (s *Sink) line(key, value, typ string) []byte {
	name, tags, _ := strings.Cut(key, "|#")
	l := name + ":" + value + "|" + typ
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

func sanitize(s, extra string) string {
	var b strings.Builder
	for _, r := range naming.Fold(s) {
		switch {
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

// PathDatagrams renders path points as StatsD lines packed like
// Datagrams: a counter line per count series (conversations summed) and a
// timer line (|ms) per duration. The series are named like the counts (see
// pathKey), with the kind's labels where the counts have flow and metric.
func (s *Sink) PathDatagrams(points []flowmetrics.PathPoint) [][]byte {
	var lines [][]byte
	idx := map[string]int{} // counter key -> index into counts
	var keys []string
	var counts []int64
	for _, p := range points {
		name, labels := pathLabels(p)
		if name == "" {
			s.m.PointsAdjusted.WithLabelValues(Name, "rejected").Inc()
			continue
		}
		k := s.pathKey(name, labels)
		if !p.Kind.IsDuration() {
			i, ok := idx[k]
			if !ok {
				i = len(keys)
				idx[k] = i
				keys, counts = append(keys, k), append(counts, 0)
			}
			counts[i]++
			continue
		}
		if math.IsNaN(p.Seconds) || math.IsInf(p.Seconds, 0) || p.Seconds < 0 {
			s.m.PointsAdjusted.WithLabelValues(Name, "rejected").Inc()
			continue
		}
		lines = append(lines, s.line(k, strconv.FormatFloat(p.Seconds*1000, 'f', -1, 64), "ms"))
	}
	counters := make([][]byte, len(keys))
	for i, k := range keys {
		counters[i] = s.line(k, strconv.FormatInt(counts[i], 10), "c")
	}
	return s.pack(append(counters, lines...))
}

// The path series' names, before the prefix; the same as the Datadog
// sinks', so one board reads both.
const (
	ExitName       = naming.PathExit
	StepName       = naming.PathStep
	TimingName     = naming.PathTiming
	FunnelName     = naming.PathFunnel
	ExperimentName = naming.PathExperiment
)

// pathLabels returns a path point's name and labels (key, value pairs in
// order); "" for a kind it does not know.
func pathLabels(p flowmetrics.PathPoint) (string, []naming.Tag) {
	switch p.Kind {
	case flowmetrics.PathExit:
		return ExitName, []naming.Tag{{Key: "flow", Value: p.Flow}, {Key: "metric", Value: p.Metric}}
	case flowmetrics.PathStep:
		return StepName, []naming.Tag{{Key: "flow", Value: p.Flow}, {Key: "metric", Value: p.Metric}}
	case flowmetrics.PathTiming:
		return TimingName, []naming.Tag{{Key: "timing", Value: p.Name}}
	case flowmetrics.PathFunnel:
		return FunnelName, []naming.Tag{{Key: "funnel", Value: p.Name}, {Key: "step", Value: p.Step}}
	case flowmetrics.PathExperiment:
		return ExperimentName, []naming.Tag{{Key: "experiment", Value: p.Name}, {Key: "variant", Value: p.Variant}, {Key: "step", Value: p.Step}}
	}
	return "", nil
}

// pathKey is key for a path series: in the none style its labels are the
// last segments of the name (genesys.flow.funnel.callback.Callback_Offered),
// in the tag styles they are tags, followed by the static tags.
func (s *Sink) pathKey(name string, labels []naming.Tag) string {
	name = s.cfg.Prefix + name
	switch s.cfg.TagStyle {
	case TagStyleGraphite:
		var b strings.Builder
		b.WriteString(name)
		for _, t := range append(labels, s.namer.Static()...) {
			b.WriteString(";" + sanitizeName(t.Key) + "=" + sanitizeName(t.Value))
		}
		return b.String()
	case TagStyleDogStatsD:
		tags := make([]string, 0, len(labels)+len(s.namer.Static()))
		for _, t := range append(labels, s.namer.Static()...) {
			tags = append(tags, sanitizeName(t.Key)+":"+sanitizeName(t.Value))
		}
		return name + "|#" + strings.Join(tags, ",")
	default:
		for _, t := range labels {
			name += "." + sanitizeSegment(t.Value)
		}
		return name
	}
}

var (
	_ flowmetrics.Sink     = (*Sink)(nil)
	_ flowmetrics.PathSink = (*Sink)(nil)
)
