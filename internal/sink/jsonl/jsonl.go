// Package jsonl is the JSON-lines sink: one object per flow, metric and
// bucket per line, to stdout or to a file. It is the sink of replays and of
// tests, and an easy way to feed points to anything that reads lines.
//
// A line looks like:
//
//	{"flow":"CustomerRouting","metric":"Unknown","timestamp":"2023-03-05T08:18:00Z","interval_seconds":10,"count":1}
//
// The same flow, metric and bucket can appear on several lines (occurrences
// of one bucket that arrived in different batches, late events); consumers
// sum the counts.
//
// A file holds each batch whole or not at all, exactly once: the sink is a
// flowmetrics.StatefulSink whose state is the file's length after the last
// batch, committed with the sink's outbox cursor. On start the file is cut
// back to that length, so what a crash left of a batch whose cursor was not
// committed (part of it, or all of it) is removed before the batch is
// written again. A write or sync error (a full disk) cuts the file back too,
// and the next Send writes the batch again at the same place (package
// linefile).
//
// Stdout and other non-seekable outputs (pipes, FIFOs, devices) cannot be
// cut back: there a crash between writing a batch and committing its cursor
// writes that batch again after the restart (the duplicate window).
package jsonl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/linefile"
)

// Config is the sinks.jsonl section.
type Config struct {
	// Path of the file to append to; "-" or "" for stdout.
	Path string `yaml:"path"`
}

// Validate checks the section.
func (c Config) Validate() error { return nil }

// Line is one line of output.
type Line struct {
	Flow            string            `json:"flow"`
	Metric          string            `json:"metric"`
	Timestamp       time.Time         `json:"timestamp"`
	IntervalSeconds int64             `json:"interval_seconds"`
	Count           int64             `json:"count"`
	Tags            map[string]string `json:"tags,omitempty"`
}

// stateKey holds the file's identity and acknowledged length.
const stateKey = "file"

// pipeChunk is the most a write to a pipe may carry and still be atomic
// (POSIX PIPE_BUF on Linux), so a crash never leaves a torn line in a pipe.
const pipeChunk = 4096

// Sink writes lines. For a file, Send returns only after the lines are
// fsynced, so an acknowledged batch survives a crash.
type Sink struct {
	log      *slog.Logger
	tags     map[string]string
	tagsJSON []byte // `,"tags":{…}`, encoded once
	buf      []byte // Send's lines, kept between batches up to maxKeep
	stamps   stamps // the lines' times
	plains   plains // strings of path points found plain

	closed bool

	// A regular file, each batch whole and once (package linefile).
	file *linefile.File
	// Stdout, a pipe or a device: written in whole-line chunks.
	w   io.Writer
	dev *os.File // opened by path, closed on Close
	// resume is the unwritten rest of a batch whose write to w failed, so
	// the same batch sent again does not repeat the lines already out.
	resume struct {
		sum  uint64
		rest []byte
	}
}

// New opens the sink. A file left with a torn last line by a crash is cut
// back to its last complete line at once (that line was never
// acknowledged); Restore then cuts it back to the length committed with the
// cursor. log may be nil.
func New(cfg Config, d sink.Deps) (*Sink, error) {
	d = d.WithDefaults()
	namer := d.Namer
	s := &Sink{log: d.Log.With("sink", "jsonl")}
	if len(namer.Static()) > 0 {
		s.tags = map[string]string{}
		for _, t := range namer.Static() {
			s.tags[t.Key] = t.Value
		}
		s.tagsJSON = encodeTags(s.tags)
	}
	if cfg.Path == "" || cfg.Path == "-" {
		s.w = os.Stdout
		return s, nil
	}
	file, dev, err := linefile.Open(cfg.Path, s.log)
	if err != nil {
		return nil, fmt.Errorf("jsonl: %s: %w", cfg.Path, err)
	}
	if dev != nil {
		// A device or pipe (/dev/null, a FIFO): nothing to cut or sync.
		s.w, s.dev = dev, dev
		return s, nil
	}
	s.file = file
	return s, nil
}

// NewWriter returns a sink writing to w (tests, stdout wrappers).
func NewWriter(w io.Writer) *Sink {
	return &Sink{w: w, log: slog.Default().With("sink", "jsonl")}
}

// Name implements flowmetrics.Sink.
func (s *Sink) Name() string { return "jsonl" }

// Restore implements flowmetrics.StatefulSink: a file is cut back to the
// length committed with the cursor (linefile.File.Restore).
func (s *Sink) Restore(ctx context.Context, state map[string][]byte) error {
	if s.file == nil {
		return nil
	}
	if err := s.file.Restore(ctx, state, stateKey); err != nil {
		return fmt.Errorf("jsonl: %w", err)
	}
	return nil
}

// TakeState implements flowmetrics.StatefulSink: the file's identity and its
// length after the batches sent since the last call; nil for a stream.
func (s *Sink) TakeState() flowmetrics.StateUpdate {
	if s.file == nil {
		return nil
	}
	return s.file.TakeState(stateKey)
}

// Send implements flowmetrics.Sink. For a file the batch is written after
// the last whole batch and synced; on any error the file is cut back, so the
// batch is either wholly in the file or not at all, and the retried Send
// writes it at the same place.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	b := s.buf[:0]
	if need := len(points) * lineGuess; cap(b) < need {
		b = make([]byte, 0, need)
	}
	for i := range points {
		var err error
		if b, err = appendLine(b, &s.stamps, &points[i], s.tags, s.tagsJSON); err != nil {
			return fmt.Errorf("jsonl: %w", err)
		}
	}
	err := s.write(b)
	if cap(b) <= maxKeep {
		s.buf = b
	}
	return err
}

// maxKeep bounds the buffer a sink keeps between batches; lineGuess and
// pathLineGuess are the room made for a line before a batch, so the buffer
// seldom grows while it is written (a path line names its conversation:
// some 160 bytes without tags).
const (
	maxKeep       = 4 << 20
	lineGuess     = 128
	pathLineGuess = 224
)

// PathLine is the line of one point derived from a closed conversation
// path: Path says its kind (exit, step, timing, funnel, experiment), and
// only the fields of that kind are set. A consumer that sums Line counts
// tells the two apart by Path.
type PathLine struct {
	Path         string            `json:"path"`
	Flow         string            `json:"flow,omitempty"`
	Metric       string            `json:"metric,omitempty"`
	Timing       string            `json:"timing,omitempty"`
	Funnel       string            `json:"funnel,omitempty"`
	Experiment   string            `json:"experiment,omitempty"`
	Variant      string            `json:"variant,omitempty"`
	Step         string            `json:"step,omitempty"`
	Seconds      *float64          `json:"seconds,omitempty"`
	Timestamp    time.Time         `json:"timestamp"`
	Conversation string            `json:"conversation"`
	Tags         map[string]string `json:"tags,omitempty"`
}

// NewPathLine is the line of p.
func NewPathLine(p flowmetrics.PathPoint, tags map[string]string) PathLine {
	f := fieldsOf(&p)
	l := PathLine{Path: p.Kind.String(), Flow: f.flow, Metric: f.metric, Timing: f.timing, Funnel: f.funnel,
		Experiment: f.experiment, Variant: f.variant, Step: f.step, Timestamp: p.Time.UTC(), Conversation: p.Conversation, Tags: tags}
	if f.timed {
		l.Seconds = &f.seconds
	}
	return l
}

// pathFields are the fields of a path line that depend on its kind.
type pathFields struct {
	flow, metric, timing, funnel, experiment, variant, step string
	seconds                                                 float64
	timed                                                   bool // seconds set
}

func fieldsOf(p *flowmetrics.PathPoint) pathFields {
	switch p.Kind {
	case flowmetrics.PathExit:
		return pathFields{flow: p.Flow, metric: p.Metric}
	case flowmetrics.PathStep:
		return pathFields{flow: p.Flow, metric: p.Metric, seconds: p.Seconds, timed: true}
	case flowmetrics.PathTiming:
		return pathFields{timing: p.Name, seconds: p.Seconds, timed: true}
	case flowmetrics.PathFunnel:
		return pathFields{funnel: p.Name, step: p.Step}
	case flowmetrics.PathExperiment:
		return pathFields{experiment: p.Name, variant: p.Variant, step: p.Step}
	}
	return pathFields{}
}

// SendPaths implements flowmetrics.PathSink: one line per point, written
// like Send's.
func (s *Sink) SendPaths(ctx context.Context, points []flowmetrics.PathPoint) error {
	b := s.buf[:0]
	if need := len(points) * (pathLineGuess + len(s.tagsJSON)); cap(b) < need {
		b = make([]byte, 0, need)
	}
	for i := range points {
		var err error
		if b, err = appendPathLine(b, &s.stamps, &s.plains, &points[i], s.tags, s.tagsJSON); err != nil {
			return fmt.Errorf("jsonl: %w", err)
		}
	}
	err := s.write(b)
	if cap(b) <= maxKeep {
		s.buf = b
	}
	return err
}

// write appends whole lines: to a file after the last whole batch, synced.
func (s *Sink) write(b []byte) error {
	if s.closed {
		return errors.New("jsonl: closed")
	}
	if s.file == nil {
		return s.writeStream(b)
	}
	if err := s.file.Append(b); err != nil {
		return fmt.Errorf("jsonl: %w", err)
	}
	return nil
}

// writeStream writes b to a non-seekable output in chunks of whole lines of
// at most pipeChunk bytes (a longer line goes alone), each one write call.
// After a failed write it remembers the unwritten rest: the same batch sent
// again continues there instead of repeating lines.
func (s *Sink) writeStream(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	// The fingerprint is taken only when a write failed (its cost per
	// byte was most of a replay's writes to /dev/null).
	whole, sum := b, uint64(0)
	if s.resume.sum != 0 {
		if sum = fingerprint(b); sum == s.resume.sum {
			b = s.resume.rest
		}
	}
	s.resume.sum, s.resume.rest = 0, nil
	for len(b) > 0 {
		n := len(b)
		if n > pipeChunk {
			n = bytes.LastIndexByte(b[:pipeChunk], '\n') + 1
			if n == 0 {
				n = bytes.IndexByte(b, '\n') + 1 // one line longer than a chunk
			}
		}
		w, err := s.w.Write(b[:n])
		b = b[w:]
		if err != nil {
			if sum == 0 {
				sum = fingerprint(whole)
			}
			// b may be the sink's reused buffer: keep a copy.
			s.resume.sum, s.resume.rest = sum, bytes.Clone(b)
			return fmt.Errorf("jsonl: write: %w", err)
		}
	}
	return nil
}

func fingerprint(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64() | 1
}

// Close implements flowmetrics.Sink. Nothing is buffered; it closes the
// file and is safe to call twice.
func (s *Sink) Close(ctx context.Context) error {
	if s.closed {
		return nil
	}
	s.closed = true
	switch {
	case s.file != nil:
		return s.file.Close()
	case s.dev != nil:
		return s.dev.Close()
	}
	return nil
}

var (
	_ flowmetrics.StatefulSink = (*Sink)(nil)
	_ flowmetrics.PathSink     = (*Sink)(nil)
)
