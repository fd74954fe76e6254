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
package jsonl

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
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

// Sink writes lines. For a file, Send returns only after the lines are
// fsynced, so an acknowledged batch survives a crash.
type Sink struct {
	mu     sync.Mutex
	w      *bufio.Writer
	f      *os.File // a regular file, synced on Send; nil otherwise
	dev    *os.File // a device or pipe opened by path, closed on Close
	tags   map[string]string
	closed bool
}

// New opens the sink. A file left with a torn last line by a crash is cut
// back to its last complete line: that batch was not acknowledged, so it will
// be sent again.
func New(cfg Config, namer *naming.Namer) (*Sink, error) {
	s := &Sink{}
	if namer != nil && len(namer.Static()) > 0 {
		s.tags = map[string]string{}
		for _, t := range namer.Static() {
			s.tags[t.Key] = t.Value
		}
	}
	if cfg.Path == "" || cfg.Path == "-" {
		s.w = bufio.NewWriter(os.Stdout)
		return s, nil
	}
	f, err := os.OpenFile(cfg.Path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("jsonl: %w", err)
	}
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() {
		// A device or pipe (/dev/null, a FIFO): nothing to trim or sync.
		s.w = bufio.NewWriterSize(f, 64<<10)
		s.dev = f
		return s, nil
	}
	if err := trimTornLine(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("jsonl: %s: %w", cfg.Path, err)
	}
	s.f = f
	s.w = bufio.NewWriterSize(f, 64<<10)
	return s, nil
}

// NewWriter returns a sink writing to w (tests, stdout wrappers).
func NewWriter(w io.Writer) *Sink { return &Sink{w: bufio.NewWriter(w)} }

func trimTornLine(f *os.File) error {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size == 0 {
		return err
	}
	// Walk back to the last newline.
	buf := make([]byte, 4096)
	end := size
	for end > 0 {
		n := int64(len(buf))
		if end < n {
			n = end
		}
		if _, err := f.ReadAt(buf[:n], end-n); err != nil {
			return err
		}
		for i := n - 1; i >= 0; i-- {
			if buf[i] == '\n' {
				cut := end - n + i + 1
				if cut == size {
					return nil
				}
				if err := f.Truncate(cut); err != nil {
					return err
				}
				_, err := f.Seek(cut, io.SeekStart)
				return err
			}
		}
		end -= n
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

// Name implements flowmetrics.Sink.
func (s *Sink) Name() string { return "jsonl" }

// Send implements flowmetrics.Sink.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("jsonl: closed")
	}
	enc := json.NewEncoder(s.w)
	enc.SetEscapeHTML(false)
	for _, p := range points {
		if err := enc.Encode(Line{Flow: p.Flow, Metric: p.Metric, Timestamp: p.Bucket.UTC(), IntervalSeconds: int64(p.Width / time.Second), Count: p.Count, Tags: s.tags}); err != nil {
			return fmt.Errorf("jsonl: %w", err)
		}
	}
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("jsonl: %w", err)
	}
	if s.f != nil {
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("jsonl: sync: %w", err)
		}
	}
	return nil
}

// Close implements flowmetrics.Sink.
func (s *Sink) Close(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.w.Flush()
	for _, f := range []*os.File{s.f, s.dev} {
		if f != nil {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	return err
}
