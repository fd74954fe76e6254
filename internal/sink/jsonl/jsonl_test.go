package jsonl

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
)

var pts = []flowmetrics.Point{
	{Flow: "CustomerRouting", Metric: "Unknown", Bucket: time.Date(2023, 3, 5, 8, 18, 0, 0, time.UTC), Width: 10 * time.Second, Count: 1},
	{Flow: "Billing Main", Metric: "Payment<Taken>", Bucket: time.Date(2023, 3, 5, 8, 20, 10, 0, time.UTC), Width: 10 * time.Second, Count: 3},
}

func TestSendGolden(t *testing.T) {
	var buf bytes.Buffer
	s := NewWriter(&buf)
	if err := s.Send(context.Background(), pts); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/points.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != string(want) {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestStaticTags(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	s, err := New(Config{Path: path}, sink.Deps{Namer: naming.New(naming.Config{Tags: map[string]string{"env": "prod"}})})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), pts[:1]); err != nil {
		t.Fatal(err)
	}
	s.Close(context.Background())
	got, _ := os.ReadFile(path)
	want := `{"flow":"CustomerRouting","metric":"Unknown","timestamp":"2023-03-05T08:18:00Z","interval_seconds":10,"count":1,"tags":{"env":"prod"}}` + "\n"
	if string(got) != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestTornLineIsCut(t *testing.T) {
	tests := []struct {
		name, before, want string
	}{
		{"complete file kept", "{\"a\":1}\n", "{\"a\":1}\n"},
		{"torn tail cut", "{\"a\":1}\n{\"b\":", "{\"a\":1}\n"},
		{"only a torn line", "{\"b\":", ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "out.jsonl")
			os.WriteFile(path, []byte(tt.before), 0o644)
			s, err := New(Config{Path: path}, sink.Deps{})
			if err != nil {
				t.Fatal(err)
			}
			s.Close(context.Background())
			got, _ := os.ReadFile(path)
			if string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAppendsAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	for i := 0; i < 2; i++ {
		s, err := New(Config{Path: path}, sink.Deps{})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(context.Background(), pts); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("second close: got %v, want nil", err)
		}
	}
	got, _ := os.ReadFile(path)
	if n := bytes.Count(got, []byte("\n")); n != 4 {
		t.Errorf("got %d lines, want 4", n)
	}
}

func TestDevNull(t *testing.T) {
	s, err := New(Config{Path: os.DevNull}, sink.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), pts); err != nil {
		t.Errorf("send to %s: got %v, want nil", os.DevNull, err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Error(err)
	}
}

// committed is what the store would hold: the state the pipeline took after
// the last acknowledged batch.
type committed map[string][]byte

func (c committed) commit(s *Sink) {
	for k, v := range s.TakeState() {
		c[k] = v
	}
}

func openRestored(t *testing.T, path string, st committed) *Sink {
	t.Helper()
	s, err := New(Config{Path: path}, sink.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(context.Background(), st); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return s
}

func linesOf(pts []flowmetrics.Point) string {
	var b bytes.Buffer
	NewWriter(&b).Send(context.Background(), pts)
	return b.String()
}

// TestCrashWindowsDuplicateNothing: whatever a crash left of a batch whose
// cursor was not committed is cut on the next start, and the batch written
// again is in the file once.
func TestCrashWindowsDuplicateNothing(t *testing.T) {
	a, b := pts[:1], pts[1:]
	tests := []struct {
		name string
		// after batch a is acknowledged, what the crash leaves behind
		leftover string
	}{
		{"crash before writing", ""},
		{"crash mid-line", linesOf(b)[:20]},
		{"crash after the write, before the cursor", linesOf(b)},
		{"crash after one of two lines", linesOf(pts[:1])},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "out.jsonl")
			st := committed{}
			s := openRestored(t, path, st)
			if err := s.Send(context.Background(), a); err != nil {
				t.Fatal(err)
			}
			st.commit(s)
			s.Close(context.Background())
			f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString(tt.leftover)
			f.Close()

			s = openRestored(t, path, st)
			if got, _ := os.ReadFile(path); string(got) != linesOf(a) {
				t.Errorf("after restart: got %q, want only the acknowledged %q", got, linesOf(a))
			}
			if err := s.Send(context.Background(), b); err != nil {
				t.Fatal(err)
			}
			st.commit(s)
			s.Close(context.Background())
			if got, _ := os.ReadFile(path); string(got) != linesOf(a)+linesOf(b) {
				t.Errorf("after the resend: got %q, want %q", got, linesOf(a)+linesOf(b))
			}
		})
	}
}

// TestCrashBeforeTheFirstCommit: a first start (no state) on a file that
// already holds lines commits its length before the first batch, so a crash
// after that batch and before its commit cuts back to the old lines.
func TestCrashBeforeTheFirstCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	old := linesOf(pts[1:])
	os.WriteFile(path, []byte(old), 0o644)
	st := committed{}
	s := openRestored(t, path, st)
	st.commit(s) // what Pipeline.Register commits after Restore
	if err := s.Send(context.Background(), pts[:1]); err != nil {
		t.Fatal(err)
	}
	s.Close(context.Background()) // the crash: this batch's state is never committed

	s = openRestored(t, path, st)
	defer s.Close(context.Background())
	if got, _ := os.ReadFile(path); string(got) != old {
		t.Errorf("after the restart: got %q, want the lines from before, %q", got, old)
	}
}

func TestRestoreTrustsOnlyTheSameFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.jsonl")
	st := committed{}
	s := openRestored(t, path, st)
	if err := s.Send(context.Background(), pts); err != nil {
		t.Fatal(err)
	}
	st.commit(s)
	s.Close(context.Background())
	full := linesOf(pts)

	t.Run("another path", func(t *testing.T) {
		other := filepath.Join(dir, "other.jsonl")
		os.WriteFile(other, []byte(full+full), 0o644)
		s := openRestored(t, other, st)
		s.Close(context.Background())
		if got, _ := os.ReadFile(other); string(got) != full+full {
			t.Errorf("got %q, want the other file untouched", got)
		}
	})
	t.Run("replaced by a longer file", func(t *testing.T) {
		os.Rename(path, path+".1")
		os.WriteFile(path, []byte(full+full+full), 0o644)
		defer os.Rename(path+".1", path)
		s := openRestored(t, path, st)
		s.Close(context.Background())
		if got, _ := os.ReadFile(path); string(got) != full+full+full {
			t.Errorf("got %d bytes, want the new file untouched (%d)", len(got), 3*len(full))
		}
	})
	t.Run("truncated by a rotation", func(t *testing.T) {
		os.Truncate(path, 0)
		s := openRestored(t, path, st)
		if err := s.Send(context.Background(), pts[:1]); err != nil {
			t.Fatal(err)
		}
		s.Close(context.Background())
		if got, _ := os.ReadFile(path); string(got) != linesOf(pts[:1]) {
			t.Errorf("got %q, want the new batch at the start", got)
		}
	})
}

// TestTakeState: the state is the file's length after each batch, taken
// once; nothing for stdout.
func TestTakeState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	s := openRestored(t, path, committed{})
	defer s.Close(context.Background())
	if u := s.TakeState(); !bytes.Contains(u[stateKey], []byte(`"offset":0}`)) {
		t.Errorf("after Restore: got %q, want the baseline, offset 0", u)
	}
	if u := s.TakeState(); u != nil {
		t.Errorf("before any send: got %q, want nil", u)
	}
	s.Send(context.Background(), pts)
	u := s.TakeState()
	if err := flowmetrics.CheckState(u); err != nil || len(u) != 1 {
		t.Fatalf("got %q (%v), want one valid key", u, err)
	}
	if !bytes.Contains(u[stateKey], []byte(`"offset":`+strconv.Itoa(len(linesOf(pts))))) {
		t.Errorf("got %s, want offset %d", u[stateKey], len(linesOf(pts)))
	}
	if u := s.TakeState(); u != nil {
		t.Errorf("taken twice: got %q, want nil", u)
	}
	if u := NewWriter(io.Discard).TakeState(); u != nil {
		t.Errorf("stdout: got %q, want nil", u)
	}
}

// TestFullDiskRecovers mounts a 64 KiB tmpfs (CI runs as root), fills it,
// and checks that a Send that hits "no space left on device" leaves the file
// as it was, and that the same batch goes in whole once space returns,
// without reopening the sink.
func TestFullDiskRecovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	path := filepath.Join(dir, "out.jsonl")
	st := committed{}
	s := openRestored(t, path, st)
	defer s.Close(context.Background())
	if err := s.Send(context.Background(), pts); err != nil {
		t.Fatal(err)
	}
	st.commit(s)
	// A batch of about 20 KiB, and a filler that leaves less than that.
	var big []flowmetrics.Point
	for i := 0; i < 200; i++ {
		p := pts[0]
		p.Bucket = p.Bucket.Add(time.Duration(i) * 10 * time.Second)
		big = append(big, p)
	}
	filler := filepath.Join(dir, "filler")
	fill := make([]byte, 1<<20)
	f, _ := os.Create(filler)
	f.Write(fill) // stops at ENOSPC
	f.Close()
	fi, _ := os.Stat(filler)
	os.Truncate(filler, fi.Size()-8<<10)

	err := s.Send(context.Background(), big)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("send to a full disk: got %v, want no space left on device", err)
	}
	if got, _ := os.ReadFile(path); string(got) != linesOf(pts) {
		t.Errorf("after the failed send: got %d bytes, want the acknowledged %d", len(got), len(linesOf(pts)))
	}
	if u := s.TakeState(); u != nil {
		t.Errorf("state after a failed send: got %q, want nil", u)
	}
	os.Remove(filler)
	if err := s.Send(context.Background(), big); err != nil {
		t.Fatalf("send after space returned: got %v, want nil", err)
	}
	if got, _ := os.ReadFile(path); string(got) != linesOf(pts)+linesOf(big) {
		t.Errorf("after space returned: got %d bytes, want %d (each batch once)", len(got), len(linesOf(pts)+linesOf(big)))
	}
}

// flakyWriter accepts limit bytes, then fails until healed; it records the
// size of every write.
type flakyWriter struct {
	buf    bytes.Buffer
	limit  int
	writes []int
}

func (w *flakyWriter) Write(b []byte) (int, error) {
	if w.limit < len(b) {
		return 0, syscall.EPIPE
	}
	w.limit -= len(b)
	w.writes = append(w.writes, len(b))
	return w.buf.Write(b)
}

// TestStreamWholeLinesAndResume: a stream is written in whole-line chunks of
// at most PIPE_BUF bytes (atomic in a pipe); after a failed write the same
// batch sent again continues where it stopped.
func TestStreamWholeLinesAndResume(t *testing.T) {
	var big []flowmetrics.Point
	for i := 0; i < 300; i++ {
		p := pts[1]
		p.Bucket = p.Bucket.Add(time.Duration(i) * 10 * time.Second)
		big = append(big, p)
	}
	want := linesOf(big)
	w := &flakyWriter{limit: 10000}
	s := NewWriter(w)
	if err := s.Send(context.Background(), big); err == nil {
		t.Fatal("first send: got nil, want the write error")
	}
	w.limit = 1 << 20
	if err := s.Send(context.Background(), big); err != nil {
		t.Fatal(err)
	}
	if w.buf.String() != want {
		t.Errorf("got %d bytes, want the batch once (%d)", w.buf.Len(), len(want))
	}
	for i, n := range w.writes {
		if n > pipeChunk {
			t.Errorf("write %d: got %d bytes, want at most %d", i, n, pipeChunk)
		}
	}
	for _, chunk := range splitWrites(w.buf.Bytes(), w.writes) {
		if !bytes.HasSuffix(chunk, []byte("\n")) {
			t.Errorf("got a write ending mid-line: %q", chunk[len(chunk)-20:])
		}
	}
	if err := s.Send(context.Background(), big); err != nil || w.buf.String() != want+want {
		t.Errorf("a new send of the same points: got %v and %d bytes, want them written again whole", err, w.buf.Len())
	}
}

func splitWrites(b []byte, sizes []int) [][]byte {
	var out [][]byte
	for _, n := range sizes {
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}
