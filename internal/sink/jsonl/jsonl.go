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
// and the next Send writes the batch again at the same place.
//
// Stdout and other non-seekable outputs (pipes, FIFOs, devices) cannot be
// cut back: there a crash between writing a batch and committing its cursor
// writes that batch again after the restart (the duplicate window).
package jsonl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
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

// stateKey holds the file's identity and acknowledged length.
const stateKey = "file"

// fileState is the sink's committed state for a file.
type fileState struct {
	Path   string `json:"path"`
	Inode  uint64 `json:"inode"`
	Offset int64  `json:"offset"`
}

// pipeChunk is the most a write to a pipe may carry and still be atomic
// (POSIX PIPE_BUF on Linux), so a crash never leaves a torn line in a pipe.
const pipeChunk = 4096

// Sink writes lines. For a file, Send returns only after the lines are
// fsynced, so an acknowledged batch survives a crash.
type Sink struct {
	log  *slog.Logger
	tags map[string]string

	mu     sync.Mutex
	closed bool

	// A regular file: written at off with pwrite, synced on each Send.
	f     *os.File
	path  string
	inode uint64
	off   int64 // length after the last batch written whole and synced
	dirty bool  // a failed write may have left bytes after off
	taken bool  // the current length was handed to TakeState
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
func New(cfg Config, namer *naming.Namer, log *slog.Logger) (*Sink, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &Sink{log: log.With("sink", "jsonl")}
	if namer != nil && len(namer.Static()) > 0 {
		s.tags = map[string]string{}
		for _, t := range namer.Static() {
			s.tags[t.Key] = t.Value
		}
	}
	if cfg.Path == "" || cfg.Path == "-" {
		s.w = os.Stdout
		return s, nil
	}
	_, statErr := os.Stat(cfg.Path)
	f, err := os.OpenFile(cfg.Path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("jsonl: %w", err)
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		// A new file: its directory entry must be durable too, or the
		// batches acknowledged into it could vanish with a power loss.
		if err := syncDir(filepath.Dir(cfg.Path)); err != nil {
			f.Close()
			return nil, fmt.Errorf("jsonl: %s: %w", cfg.Path, err)
		}
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("jsonl: %s: %w", cfg.Path, err)
	}
	if !fi.Mode().IsRegular() {
		// A device or pipe (/dev/null, a FIFO): nothing to cut or sync.
		s.w, s.dev = f, f
		return s, nil
	}
	size, err := trimTornLine(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("jsonl: %s: %w", cfg.Path, err)
	}
	s.f, s.path, s.off, s.taken = f, cfg.Path, size, true
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.inode = st.Ino
	}
	return s, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// NewWriter returns a sink writing to w (tests, stdout wrappers).
func NewWriter(w io.Writer) *Sink {
	return &Sink{w: w, log: slog.Default().With("sink", "jsonl")}
}

// trimTornLine cuts f after its last newline and returns its new length.
func trimTornLine(f *os.File) (int64, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size == 0 {
		return size, err
	}
	buf := make([]byte, 4096)
	end := size
	for end > 0 {
		n := min(int64(len(buf)), end)
		if _, err := f.ReadAt(buf[:n], end-n); err != nil {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			cut := end - n + int64(i) + 1
			if cut == size {
				return size, nil
			}
			return cut, f.Truncate(cut)
		}
		end -= n
	}
	return 0, f.Truncate(0)
}

// Name implements flowmetrics.Sink.
func (s *Sink) Name() string { return "jsonl" }

// Restore implements flowmetrics.StatefulSink: it cuts the file back to the
// length committed with the cursor, removing whatever a crash left of a
// batch that was not acknowledged. The committed length is trusted only for
// the same file (path and inode); a file that is shorter than it (rotated
// or truncated by someone else) is appended to where it ends. The length it
// starts from is the next TakeState, which the pipeline commits before the
// first Send: without it, a crash after the first batch of a first start
// and before its commit would leave that batch in the file, with no length
// to cut back to.
func (s *Sink) Restore(ctx context.Context, state map[string][]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	s.taken = false
	raw, ok := state[stateKey]
	if !ok {
		return nil // first start: what the file holds was there before
	}
	var st fileState
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("jsonl: state: %w", err)
	}
	if st.Path != s.path || st.Inode != s.inode {
		s.log.Info("jsonl: a new file; nothing to cut back", "path", s.path, "acknowledged_path", st.Path)
		return nil
	}
	switch {
	case s.off > st.Offset:
		if err := s.cut(st.Offset); err != nil {
			return fmt.Errorf("jsonl: %s: cut back to the acknowledged %d bytes: %w", s.path, st.Offset, err)
		}
		s.log.Info("jsonl: cut the unacknowledged end of the file; it is written again", "path", s.path, "bytes", s.off-st.Offset)
		s.off = st.Offset
	case s.off < st.Offset:
		s.log.Warn("jsonl: file is shorter than acknowledged (rotated or truncated?); appending at its end", "path", s.path, "length", s.off, "acknowledged", st.Offset)
	}
	return nil
}

// TakeState implements flowmetrics.StatefulSink: the file's identity and its
// length after the batches sent since the last call.
func (s *Sink) TakeState() flowmetrics.StateUpdate {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil || s.taken {
		return nil
	}
	s.taken = true
	b, _ := json.Marshal(fileState{Path: s.path, Inode: s.inode, Offset: s.off})
	return flowmetrics.StateUpdate{stateKey: b}
}

// cut truncates the file to n bytes and syncs, so a crash cannot bring the
// cut bytes back.
func (s *Sink) cut(n int64) error {
	if err := s.f.Truncate(n); err != nil {
		return err
	}
	return s.f.Sync()
}

// Send implements flowmetrics.Sink. For a file the batch is written after
// the last whole batch and synced; on any error the file is cut back, so the
// batch is either wholly in the file or not at all, and the retried Send
// writes it at the same place.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for _, p := range points {
		if err := enc.Encode(Line{Flow: p.Flow, Metric: p.Metric, Timestamp: p.Bucket.UTC(), IntervalSeconds: int64(p.Width / time.Second), Count: p.Count, Tags: s.tags}); err != nil {
			return fmt.Errorf("jsonl: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("jsonl: closed")
	}
	if s.f == nil {
		return s.writeStream(buf.Bytes())
	}
	if s.dirty {
		if err := s.cut(s.off); err != nil {
			return fmt.Errorf("jsonl: cut back after a failed write: %w", err)
		}
		s.dirty = false
	}
	if buf.Len() == 0 {
		return nil
	}
	if _, err := s.f.WriteAt(buf.Bytes(), s.off); err != nil {
		s.failed()
		return fmt.Errorf("jsonl: write: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		// After a failed fsync the written pages cannot be trusted: cut
		// them and write the batch again.
		s.failed()
		return fmt.Errorf("jsonl: sync: %w", err)
	}
	s.off += int64(buf.Len())
	s.taken = false
	return nil
}

// failed marks the bytes after off as garbage and tries to cut them at
// once (the next Send tries again if this fails).
func (s *Sink) failed() {
	s.dirty = true
	if err := s.cut(s.off); err == nil {
		s.dirty = false
	}
}

// writeStream writes b to a non-seekable output in chunks of whole lines of
// at most pipeChunk bytes (a longer line goes alone), each one write call.
// After a failed write it remembers the unwritten rest: the same batch sent
// again continues there instead of repeating lines.
func (s *Sink) writeStream(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	sum := fingerprint(b)
	if s.resume.sum == sum {
		b = s.resume.rest
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
			s.resume.sum, s.resume.rest = sum, b
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var err error
	for _, f := range []*os.File{s.f, s.dev} {
		if f != nil {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	return err
}

var _ flowmetrics.StatefulSink = (*Sink)(nil)
