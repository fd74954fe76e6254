package emf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/linefile"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// Name is the sink's name in config, logs and self-metrics.
const Name = "emf"

// DefaultNamespace is the CloudWatch namespace when none is configured.
const DefaultNamespace = "Genesys/Flows"

// Limits of the EMF specification and of CloudWatch.
const (
	MaxMetricsPerLine  = 100  // MetricDefinitions per MetricDirective
	MaxDimensions      = 30   // dimension keys per DimensionSet
	MaxDimensionName   = 250  // DimensionReference maxLength in the EMF schema
	MaxDimensionValue  = 1024 // characters of a dimension target member
	MaxMetricName      = 255  // CloudWatch MetricName
	MaxNamespaceLength = 255  // CloudWatch Namespace
)

// Config is the emf section of the YAML config.
type Config struct {
	// Namespace is the CloudWatch namespace; DefaultNamespace if empty.
	Namespace string `yaml:"namespace"`
	// Path is "-" (or empty) for stdout, or a file the lines are appended to.
	Path string `yaml:"path"`
	// StorageResolution is 60 (standard, the default: CloudWatch keeps one
	// value a minute) or 1 (high resolution, billed higher).
	StorageResolution int `yaml:"storage_resolution"`
	// OmitFlowDimensions drops the flow and metric dimensions, leaving the
	// static tags only. It needs a naming template (the name then says which
	// flow and metric), and lets up to 100 metrics share one line, like the
	// original tool's one-metric-per-attribute layout.
	OmitFlowDimensions bool `yaml:"omit_flow_dimensions"`

	// Writer, when set, receives the lines instead of Path (tests, or a
	// Lambda handler's own log writer). If it has Sync() error or
	// Flush() error, Send calls it.
	Writer io.Writer `yaml:"-"`
}

func (c Config) withDefaults() Config {
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.Path == "" {
		c.Path = "-"
	}
	if c.StorageResolution == 0 {
		c.StorageResolution = 60
	}
	return c
}

// Validate checks the section without touching the file system.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := validNamespace(c.Namespace); err != nil {
		return fmt.Errorf("namespace %q: %w", c.Namespace, err)
	}
	if c.StorageResolution != 1 && c.StorageResolution != 60 {
		return fmt.Errorf("storage_resolution %d: must be 1 or 60", c.StorageResolution)
	}
	return nil
}

// validNamespace applies CloudWatch's rules: 1 to 255 of the characters
// below, not starting with "AWS/" (reserved for AWS services).
func validNamespace(ns string) error {
	if len(ns) > MaxNamespaceLength {
		return fmt.Errorf("longer than %d characters", MaxNamespaceLength)
	}
	if strings.HasPrefix(ns, "AWS/") {
		return errors.New(`"AWS/" is reserved for AWS services`)
	}
	if strings.TrimSpace(ns) == "" {
		return errors.New("must have a non-space character")
	}
	for _, r := range ns {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(" ._-/#:", r)
		if !ok {
			return fmt.Errorf("character %q not allowed (letters, digits, space and . _ - / # :)", r)
		}
	}
	return nil
}

// Sink writes EMF lines.
type Sink struct {
	cfg     Config
	namer   *naming.Namer
	m       *telemetry.Metrics
	log     *slog.Logger
	static  []naming.Tag // sanitised static tags
	dimKeys []string     // the one DimensionSet

	w      io.Writer
	dev    *os.File       // a FIFO or device opened by path, closed on Close
	file   *linefile.File // when Path is a file: each batch whole and once
	closed bool
}

// CheckNaming checks the section against the naming config it will be used
// with. New and serve's config check (-check-config) share it.
func (c Config) CheckNaming(namer *naming.Namer) error {
	if c.OmitFlowDimensions && namer.Name("\x00a", "\x00b") == namer.Name("\x00c", "\x00d") {
		return errors.New("omit_flow_dimensions: needs naming.template, or every flow would add up in one metric")
	}
	return nil
}

// New returns a sink for cfg (which should have passed Validate). For a file
// path it opens (creates) the file and cuts a torn last line left by a
// crash; Restore then cuts it back to the length committed with the cursor.
func New(cfg Config, d sink.Deps) (*Sink, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("emf: %w", err)
	}
	d = d.WithDefaults()
	namer, m, log := d.Namer, d.Metrics, d.Log
	s := &Sink{cfg: cfg, namer: namer, m: m, log: log.With("sink", Name)}
	if err := cfg.CheckNaming(namer); err != nil {
		return nil, fmt.Errorf("emf: %w", err)
	}
	if !cfg.OmitFlowDimensions {
		s.dimKeys = []string{"flow", "metric"}
	}
	seen := map[string]bool{"_aws": true}
	for _, k := range pathDimensions {
		seen[k] = true
	}
	for _, t := range namer.Static() {
		k := dimensionName(t.Key)
		if seen[k] {
			return nil, fmt.Errorf("emf: static tag %q: dimension name %q is used twice (flow, metric, timing, funnel, experiment, variant and step are the points' own)", t.Key, k)
		}
		seen[k] = true
		s.static = append(s.static, naming.Tag{Key: k, Value: dimensionValue(t.Value)})
		s.dimKeys = append(s.dimKeys, k)
	}
	if n := len(s.static) + 3; n > MaxDimensions {
		return nil, fmt.Errorf("emf: %d dimensions, CloudWatch allows %d (experiment, variant, step and at most %d static tags)", n, MaxDimensions, MaxDimensions-3)
	}
	switch {
	case cfg.Writer != nil:
		s.w = cfg.Writer
	case cfg.Path == "-":
		s.w = os.Stdout
	default:
		file, dev, err := linefile.Open(cfg.Path, s.log)
		if err != nil {
			return nil, fmt.Errorf("emf: open %s: %w", cfg.Path, err)
		}
		if dev != nil {
			s.w, s.dev = dev, dev // a FIFO or device: written as a stream
		} else {
			s.file = file
		}
	}
	return s, nil
}

// Name implements flowmetrics.Sink.
func (s *Sink) Name() string { return Name }

// Send implements flowmetrics.Sink: it writes the batch's lines in one write
// and, for a file, fsyncs it, so nil means the lines are durable. If the
// write or the sync fails, the file is cut back to where the batch began, so
// the retried batch is not counted twice; after a crash, Restore cuts it
// back to the last acknowledged batch.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("emf: %w", err)
	}
	return s.write(s.Lines(points))
}

// SendPaths implements flowmetrics.PathSink: the path points' lines (see
// PathLines), written, synced and cut back on failure like Send's.
func (s *Sink) SendPaths(ctx context.Context, points []flowmetrics.PathPoint) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("emf: %w", err)
	}
	return s.write(s.PathLines(points))
}

func (s *Sink) write(buf []byte) error {
	if s.closed {
		return errors.New("emf: sink closed")
	}
	if len(buf) == 0 {
		return nil
	}
	var err error
	if s.file != nil {
		err = s.appendFile(buf)
	} else if _, err = s.w.Write(buf); err != nil {
		err = fmt.Errorf("emf: write: %w", err)
	} else {
		err = flush(s.w)
	}
	if err != nil {
		s.m.SinkFailures.WithLabelValues(Name, "write").Inc()
	}
	return err
}

func (s *Sink) appendFile(buf []byte) error {
	if err := s.file.Append(buf); err != nil {
		return fmt.Errorf("emf: %s: %w", s.cfg.Path, err)
	}
	return nil
}

// Restore implements flowmetrics.StatefulSink: a file is cut back to the
// length committed with the cursor (linefile.File.Restore), so what a crash
// left of a batch that was not acknowledged is not counted twice.
func (s *Sink) Restore(ctx context.Context, state map[string][]byte) error {
	if s.file == nil {
		return nil
	}
	if err := s.file.Restore(ctx, state, fileStateKey); err != nil {
		return fmt.Errorf("emf: %w", err)
	}
	return nil
}

// TakeState implements flowmetrics.StatefulSink: the file's identity and
// length after the batches sent since the last call; nil for stdout.
func (s *Sink) TakeState() flowmetrics.StateUpdate {
	if s.file == nil {
		return nil
	}
	return s.file.TakeState(fileStateKey)
}

// fileStateKey holds the file's identity and acknowledged length.
const fileStateKey = "file"

// flush syncs or flushes w when it can: a file or a bufio.Writer.
func flush(w io.Writer) error {
	switch f := w.(type) {
	case *os.File:
		// Stdout is usually a pipe or a terminal, which cannot be synced.
		if err := f.Sync(); err != nil && !isNotSyncable(err) {
			return fmt.Errorf("emf: sync: %w", err)
		}
	case interface{ Sync() error }:
		if err := f.Sync(); err != nil {
			return fmt.Errorf("emf: sync: %w", err)
		}
	case interface{ Flush() error }:
		if err := f.Flush(); err != nil {
			return fmt.Errorf("emf: flush: %w", err)
		}
	}
	return nil
}

// Close implements flowmetrics.Sink: every line is already written by Send,
// so it only closes a file. It is safe to call twice.
func (s *Sink) Close(ctx context.Context) error {
	if s.closed {
		return nil
	}
	s.closed = true
	if s.file != nil {
		// Every batch was synced by its Send.
		if err := s.file.Close(); err != nil {
			return fmt.Errorf("emf: close %s: %w", s.cfg.Path, err)
		}
		return nil
	}
	err := flush(s.w)
	if s.dev != nil {
		if cerr := s.dev.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// series is one CloudWatch metric in one bucket: a count, or (values not
// nil) the durations observed, at most MaxValuesPerMetric of them.
type series struct {
	bucket time.Time
	keys   []string // dimension names
	dims   []string // values, in keys order
	name   string
	unit   string
	count  int64
	values []float64
}

// group is the identity of a line: bucket and dimensions.
func (se *series) group() string {
	return strconv.FormatInt(se.bucket.UnixMilli(), 10) + "\x00" + strings.Join(se.keys, "\x00") + "\x00\x00" + strings.Join(se.dims, "\x00")
}

// Lines renders points as EMF lines, each ending in "\n". Points of the same
// metric, dimensions and bucket are summed; metrics that share their
// dimensions and bucket share a line, up to 100 a line. Lines are ordered by
// bucket, dimensions and name, so the output is deterministic.
func (s *Sink) Lines(points []flowmetrics.Point) []byte {
	byKey := map[string]*series{}
	var all []*series
	for _, p := range points {
		if p.Count <= 0 {
			s.m.PointsAdjusted.WithLabelValues(Name, "non_positive_count").Inc()
			continue
		}
		var dims []string
		if !s.cfg.OmitFlowDimensions {
			dims = append(dims, dimensionValue(p.Flow), dimensionValue(p.Metric))
		}
		for _, t := range s.static {
			dims = append(dims, t.Value)
		}
		name := s.metricName(p.Flow, p.Metric)
		b := p.Bucket.UTC().Truncate(time.Millisecond)
		k := strconv.FormatInt(b.UnixMilli(), 10) + "\x00" + strings.Join(dims, "\x00") + "\x00\x00" + name
		if se, ok := byKey[k]; ok {
			se.count += p.Count
			continue
		}
		se := &series{bucket: b, keys: s.dimKeys, dims: dims, name: name, unit: "Count", count: p.Count}
		byKey[k] = se
		all = append(all, se)
	}
	return s.render(all)
}

// render writes the series as lines: those sharing bucket and dimensions
// share a line, up to 100 metrics and each name once a line. Lines are
// ordered by bucket, dimensions and name, so the output is deterministic.
func (s *Sink) render(all []*series) []byte {
	groups := make(map[*series]string, len(all))
	for _, se := range all {
		groups[se] = se.group()
	}
	sort.SliceStable(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if !a.bucket.Equal(b.bucket) {
			return a.bucket.Before(b.bucket)
		}
		if ga, gb := groups[a], groups[b]; ga != gb {
			return ga < gb
		}
		return a.name < b.name
	})
	var out bytes.Buffer
	for i := 0; i < len(all); {
		j := i + 1
		for j < len(all) && j-i < MaxMetricsPerLine && groups[all[j]] == groups[all[i]] && all[j].name != all[j-1].name {
			j++
		}
		s.writeLine(&out, all[i:j])
		i = j
	}
	return out.Bytes()
}

// writeLine writes one EMF document for metrics sharing bucket and
// dimensions. Members are written in a fixed order (encoding/json would sort
// map keys, burying _aws) so golden files are stable.
func (s *Sink) writeLine(out *bytes.Buffer, group []*series) {
	out.WriteString(`{"_aws":{"Timestamp":`)
	out.WriteString(strconv.FormatInt(group[0].bucket.UnixMilli(), 10))
	out.WriteString(`,"CloudWatchMetrics":[{"Namespace":`)
	writeString(out, s.cfg.Namespace)
	out.WriteString(`,"Dimensions":[[`)
	keys := group[0].keys
	for i, k := range keys {
		if i > 0 {
			out.WriteByte(',')
		}
		writeString(out, k)
	}
	out.WriteString(`]],"Metrics":[`)
	for i, se := range group {
		if i > 0 {
			out.WriteByte(',')
		}
		out.WriteString(`{"Name":`)
		writeString(out, se.name)
		out.WriteString(`,"Unit":`)
		writeString(out, se.unit)
		if s.cfg.StorageResolution == 1 {
			out.WriteString(`,"StorageResolution":1`)
		}
		out.WriteByte('}')
	}
	out.WriteString(`]}]}`)
	for i, k := range keys {
		out.WriteByte(',')
		writeString(out, k)
		out.WriteByte(':')
		writeString(out, group[0].dims[i])
	}
	for _, se := range group {
		out.WriteByte(',')
		writeString(out, se.name)
		out.WriteByte(':')
		if se.values == nil {
			out.WriteString(strconv.FormatInt(se.count, 10))
			continue
		}
		out.WriteByte('[')
		for i, v := range se.values {
			if i > 0 {
				out.WriteByte(',')
			}
			out.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
		}
		out.WriteByte(']')
	}
	out.WriteString("}\n")
}

func writeString(out *bytes.Buffer, v string) {
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	enc.Encode(v) // a string always encodes
	out.Truncate(out.Len() - 1)
}

// metricName is the namer's name made fit for CloudWatch: ASCII, no control
// characters, at most 255 characters, and not the name of a dimension or of
// _aws, which are members of the same JSON object.
func (s *Sink) metricName(flow, metric string) string {
	n := truncate(ascii(s.namer.Name(flow, metric), true), MaxMetricName)
	for _, k := range s.dimKeys {
		if n == k {
			return n + "_count"
		}
	}
	if n == "_aws" {
		return "aws_count"
	}
	return n
}

// dimensionValue makes v a valid CloudWatch dimension value: only ASCII
// characters, no control characters, at least one non-space character, at
// most 1024 characters. Accents are dropped ("é" → "e"); other non-ASCII
// characters become '_'.
func dimensionValue(v string) string {
	return truncate(ascii(v, true), MaxDimensionValue)
}

// dimensionName is dimensionValue for names: at most 250 characters and not
// starting with ':'.
func dimensionName(k string) string {
	k = ascii(k, true)
	if strings.HasPrefix(k, ":") {
		k = "_" + k[1:]
	}
	return truncate(k, MaxDimensionName)
}

func ascii(s string, keepSpace bool) string {
	var b strings.Builder
	for _, r := range naming.Fold(s) {
		switch {
		case r == ' ' && keepSpace:
			b.WriteRune(r)
		case r > ' ' && r < 0x7f:
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	if strings.TrimSpace(b.String()) == "" {
		return "_"
	}
	return b.String()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] // ASCII by now, so bytes are characters
	}
	return s
}

var _ flowmetrics.StatefulSink = (*Sink)(nil)

// isNotSyncable reports the errors fsync gives for pipes and terminals.
func isNotSyncable(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.ENOTTY)
}
