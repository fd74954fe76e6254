// Package linefile keeps an append-only file of lines exact across crashes
// for a sink that writes it (jsonl, emf): each batch is in the file whole or
// not at all, and once.
//
// The file's length after the last acknowledged batch is the sink's state
// (flowmetrics.StatefulSink), committed by the pipeline with the sink's
// outbox cursor. On start the file is cut back to that length, so whatever a
// crash left of a batch whose cursor was not committed (a torn line, some
// lines, or all of them, synced) is removed before the batch is written
// again. A write or sync error cuts the file back at once, and the next
// Append writes at the same place.
//
// The caller serialises calls.
package linefile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/flowmetrics/flowmetrics"
)

// File is a regular file of lines written by one sink.
type File struct {
	f     *os.File
	path  string
	inode uint64
	off   int64 // length after the last batch written whole and synced
	dirty bool  // a failed write may have left bytes after off
	taken bool  // the current length was handed to TakeState
	log   *slog.Logger
}

// state is the committed state.
type state struct {
	Path   string `json:"path"`
	Inode  uint64 `json:"inode"`
	Offset int64  `json:"offset"`
}

// Open opens (creates) the regular file at path. It returns (nil, f, nil)
// when path is not a regular file (a device or a FIFO, opened for writing:
// nothing can be cut or synced there). A torn last line left by a crash is
// cut at once: it was never acknowledged.
func Open(path string, log *slog.Logger) (*File, *os.File, error) {
	if log == nil {
		log = slog.Default()
	}
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, f, nil
	}
	if errors.Is(statErr, fs.ErrNotExist) {
		// A new file: its directory entry must be durable too, or the
		// batches acknowledged into it could vanish with a power loss.
		if err := syncDir(filepath.Dir(path)); err != nil {
			f.Close()
			return nil, nil, err
		}
	}
	size, err := trimTornLine(f)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	lf := &File{f: f, path: path, off: size, taken: true, log: log}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		lf.inode = st.Ino
	}
	return lf, nil, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
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

// Restore cuts the file back to the length committed under key, removing
// whatever a crash left of a batch that was not acknowledged. The committed
// length is trusted only for the same file (path and inode); a file shorter
// than it (rotated or truncated by someone else) is appended to where it
// ends. The length it starts from is the next TakeState, which the pipeline
// commits before the first Send: without it, a crash after the first batch
// of a first start and before its commit would leave that batch in the
// file, with no length to cut back to.
func (lf *File) Restore(ctx context.Context, st map[string][]byte, key string) error {
	lf.taken = false
	raw, ok := st[key]
	if !ok {
		return nil // first start: what the file holds was there before
	}
	var s state
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if s.Path != lf.path || s.Inode != lf.inode {
		lf.log.Info("a new file; nothing to cut back", "path", lf.path, "acknowledged_path", s.Path)
		return nil
	}
	switch {
	case lf.off > s.Offset:
		if err := lf.cut(s.Offset); err != nil {
			return fmt.Errorf("%s: cut back to the acknowledged %d bytes: %w", lf.path, s.Offset, err)
		}
		lf.log.Info("cut the unacknowledged end of the file; it is written again", "path", lf.path, "bytes", lf.off-s.Offset)
		lf.off = s.Offset
	case lf.off < s.Offset:
		lf.log.Warn("file is shorter than acknowledged (rotated or truncated?); appending at its end", "path", lf.path, "length", lf.off, "acknowledged", s.Offset)
	}
	return nil
}

// TakeState returns the file's identity and length under key if they
// changed since the last call, else nil.
func (lf *File) TakeState(key string) flowmetrics.StateUpdate {
	if lf.taken {
		return nil
	}
	lf.taken = true
	b, _ := json.Marshal(state{Path: lf.path, Inode: lf.inode, Offset: lf.off})
	return flowmetrics.StateUpdate{key: b}
}

// Append writes b after the last whole batch and syncs it. On any error the
// file is cut back, so b is either wholly in the file or not at all, and the
// next Append (the retried batch) writes at the same place.
func (lf *File) Append(b []byte) error {
	if lf.dirty {
		if err := lf.cut(lf.off); err != nil {
			return fmt.Errorf("cut back after a failed write: %w", err)
		}
		lf.dirty = false
	}
	if len(b) == 0 {
		return nil
	}
	if _, err := lf.f.WriteAt(b, lf.off); err != nil {
		lf.failed()
		return fmt.Errorf("write: %w", err)
	}
	if err := lf.f.Sync(); err != nil {
		// After a failed fsync the written pages cannot be trusted: cut
		// them and write the batch again.
		lf.failed()
		return fmt.Errorf("sync: %w", err)
	}
	lf.off += int64(len(b))
	lf.taken = false
	return nil
}

// failed marks the bytes after off as garbage and tries to cut them at
// once (the next Append tries again if this fails).
func (lf *File) failed() {
	lf.dirty = true
	if err := lf.cut(lf.off); err == nil {
		lf.dirty = false
	}
}

// cut truncates the file to n bytes and syncs, so a crash cannot bring the
// cut bytes back.
func (lf *File) cut(n int64) error {
	if err := lf.f.Truncate(n); err != nil {
		return err
	}
	return lf.f.Sync()
}

// Close closes the file.
func (lf *File) Close() error { return lf.f.Close() }
