package diskguard

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const mb = 1 << 20

// fakeFS is a filesystem of total bytes of which used are taken by others;
// the ballast file, a real file in dir, takes its own size on top, so that
// deleting it gives the space back as it would on a disk.
type fakeFS struct {
	t     *testing.T
	dir   string
	total int64
	used  int64
	err   error
}

func (f *fakeFS) statfs(dir string) (Space, error) {
	if dir != f.dir {
		f.t.Errorf("statfs of %q, want the data directory %q", dir, f.dir)
	}
	if f.err != nil {
		return Space{}, f.err
	}
	used := f.used
	if fi, err := os.Stat(filepath.Join(f.dir, BallastName)); err == nil {
		used += fi.Size()
	}
	return Space{Avail: uint64(max(f.total-used, 0)), Total: uint64(f.total)}, nil
}

func newFake(t *testing.T, total, used int64) *fakeFS {
	return &fakeFS{t: t, dir: t.TempDir(), total: total, used: used}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func ballastSize(t *testing.T, dir string) int64 {
	t.Helper()
	fi, err := os.Stat(filepath.Join(dir, BallastName))
	if errors.Is(err, os.ErrNotExist) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// TestWatermarkAndBallast walks the guard through a disk filling up, the
// ballast being released, the space coming back and the ballast restored.
func TestWatermarkAndBallast(t *testing.T) {
	fs := newFake(t, 100*mb, 10*mb)
	g, err := New(fs.dir, Options{MinFree: 20 * mb, Ballast: 10 * mb, Statfs: fs.statfs, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	// resumeAt = 20 + 10 + max(20/4, 1) = 35 MiB free.
	steps := []struct {
		name        string
		used        int64 // by others, before the refresh
		wantRefuse  bool
		wantBallast int64 // -1: absent
		wantAvail   int64
	}{
		{"room: the ballast is written at start", 10 * mb, false, 10 * mb, 80 * mb},
		{"filling, still above the watermark", 69 * mb, false, 10 * mb, 21 * mb},
		{"just at the watermark", 70 * mb, false, 10 * mb, 20 * mb},
		{"below the watermark: refuse, release the ballast", 70*mb + 1, true, -1, 30*mb - 1},
		{"some space back, not enough to restore the ballast and the margin", 66 * mb, true, -1, 34 * mb},
		{"space back: ballast restored, admitted", 65 * mb, false, 10 * mb, 25 * mb},
		{"the disk fills to the last byte", 90 * mb, true, -1, 10 * mb},
		{"emptied", 0, false, 10 * mb, 90 * mb},
	}
	for i, s := range steps {
		fs.used = s.used
		var st Status
		if i == 0 {
			st = g.Status()
		} else {
			st = g.Refresh()
		}
		if st.Refusing != s.wantRefuse {
			t.Errorf("%s: got refusing %v, want %v", s.name, st.Refusing, s.wantRefuse)
		}
		if got := ballastSize(t, fs.dir); got != s.wantBallast {
			t.Errorf("%s: got ballast %d bytes, want %d", s.name, got, s.wantBallast)
		}
		if st.BallastPresent != (s.wantBallast > 0) {
			t.Errorf("%s: got BallastPresent %v, want %v", s.name, st.BallastPresent, s.wantBallast > 0)
		}
		if st.Avail != uint64(s.wantAvail) {
			t.Errorf("%s: got avail %d, want %d", s.name, st.Avail, s.wantAvail)
		}
		err := g.Admit()
		if (err != nil) != s.wantRefuse {
			t.Errorf("%s: got Admit() = %v, want refusal %v", s.name, err, s.wantRefuse)
		}
		if err != nil && !errors.Is(err, ErrDiskLow) {
			t.Errorf("%s: got %v, want an error wrapping ErrDiskLow", s.name, err)
		}
	}
	if got := g.Refusals(); got != 3 {
		t.Errorf("got %d refusals counted, want 3", got)
	}
}

func TestStart(t *testing.T) {
	tests := []struct {
		name        string
		used        int64
		ballast     int64 // already on disk from an earlier run (-1: none)
		wantRefuse  bool
		wantBallast int64
	}{
		{"fresh, room", 0, -1, false, 10 * mb},
		{"restart with the ballast in place", 40 * mb, 10 * mb, false, 10 * mb},
		{"restart on a low disk: the ballast is released so the store can open", 75 * mb, 10 * mb, true, -1},
		{"fresh, no room for the ballast", 70 * mb, -1, true, -1},
		{"ballast of another size is replaced", 0, 3 * mb, false, 10 * mb},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFake(t, 100*mb, tt.used)
			if tt.ballast > 0 {
				if err := writeBallast(filepath.Join(fs.dir, BallastName), tt.ballast); err != nil {
					t.Fatal(err)
				}
			}
			g, err := New(fs.dir, Options{MinFree: 20 * mb, Ballast: 10 * mb, Statfs: fs.statfs, Log: quiet()})
			if err != nil {
				t.Fatal(err)
			}
			if got := g.Status().Refusing; got != tt.wantRefuse {
				t.Errorf("got refusing %v, want %v", got, tt.wantRefuse)
			}
			if got := ballastSize(t, fs.dir); got != tt.wantBallast {
				t.Errorf("got ballast %d bytes, want %d", got, tt.wantBallast)
			}
		})
	}
}

// TestBallastDeletedByHand: an operator deleting the ballast is safe; the
// guard writes it again when there is room, and refuses while there is not.
func TestBallastDeletedByHand(t *testing.T) {
	fs := newFake(t, 100*mb, 50*mb)
	g, err := New(fs.dir, Options{MinFree: 20 * mb, Ballast: 10 * mb, Statfs: fs.statfs, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(fs.dir, BallastName))
	g.mu.Lock()
	st := *g.status.Load()
	st.BallastPresent = g.ballastPresent()
	g.status.Store(&st)
	g.mu.Unlock()
	if st := g.Refresh(); st.Refusing || ballastSize(t, fs.dir) != 10*mb {
		t.Errorf("got refusing %v, ballast %d, want admitted with the ballast back", st.Refusing, ballastSize(t, fs.dir))
	}
}

func TestStatfsErrorKeepsTheLastDecision(t *testing.T) {
	fs := newFake(t, 100*mb, 0)
	g, err := New(fs.dir, Options{MinFree: 20 * mb, Ballast: 10 * mb, Statfs: fs.statfs, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	fs.err = errors.New("input/output error")
	if st := g.Refresh(); st.Refusing || st.Err == nil {
		t.Errorf("admitting before: got refusing %v err %v, want still admitting with the error recorded", st.Refusing, st.Err)
	}
	fs.err, fs.used = nil, 85*mb
	g.Refresh()
	fs.err = errors.New("input/output error")
	if st := g.Refresh(); !st.Refusing {
		t.Errorf("refusing before: got refusing %v, want still refusing", st.Refusing)
	}
}

func TestBallastCannotBeWritten(t *testing.T) {
	fs := newFake(t, 100*mb, 0)
	// A file where the ballast's temporary file must go makes its creation
	// fail: the guard must refuse rather than admit without a ballast.
	if err := os.Mkdir(filepath.Join(fs.dir, BallastName+".tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	g, err := New(fs.dir, Options{MinFree: 20 * mb, Ballast: 10 * mb, Statfs: fs.statfs, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	st := g.Status()
	if !st.Refusing || st.Err == nil {
		t.Errorf("got refusing %v err %v, want refusing with the error", st.Refusing, st.Err)
	}
	if err := g.Admit(); err == nil || !strings.Contains(err.Error(), "MiB free") {
		t.Errorf("got Admit() = %v, want a refusal naming the free space", err)
	}
}

func TestAutoSizes(t *testing.T) {
	tests := []struct {
		total            int64
		minFree, ballast int64
	}{
		// A fresh data directory: the watermark from the filesystem, the
		// ballast at its floor whatever the disk's size.
		{40 * mb, 16 * mb, MinAutoBallast},
		{10 << 30, (10 << 30) / 50, MinAutoBallast},
		{1 << 40, 1 << 30, MinAutoBallast},
	}
	for _, tt := range tests {
		fs := newFake(t, tt.total, tt.total/10)
		g, err := New(fs.dir, Options{Statfs: fs.statfs, Log: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		st := g.Status()
		if st.MinFree != tt.minFree || st.Ballast != tt.ballast || ballastSize(t, fs.dir) != tt.ballast {
			t.Errorf("filesystem of %d bytes: got min_free %d ballast %d (file %d), want %d and %d", tt.total, st.MinFree, st.Ballast, ballastSize(t, fs.dir), tt.minFree, tt.ballast)
		}
	}
}

func TestAutoBallast(t *testing.T) {
	for _, tt := range []struct{ used, limit, want int64 }{
		{0, 256 * mb, MinAutoBallast},
		{16 * mb, 256 * mb, MinAutoBallast},
		{16*mb + 4, 256 * mb, 8 * mb},
		{100 * mb, 256 * mb, 32 * mb},
		{10 << 30, 256 * mb, 256 * mb},
		{100 * mb, 8 * mb, 8 * mb},
	} {
		if got := autoBallast(tt.used, tt.limit); got != tt.want {
			t.Errorf("autoBallast(%d, %d): got %d, want %d", tt.used, tt.limit, got, tt.want)
		}
	}
}

// write puts a (sparse) file of size bytes at path, as the store's files
// would be; the fake filesystem is told the space it takes.
func write(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// TestBallastGrowsWithTheStore: the automatic ballast starts small and is
// replaced by a larger one as the data directory's use grows, up to its cap,
// only where there is room for it; a restart sizes it from the use again.
func TestBallastGrowsWithTheStore(t *testing.T) {
	fs := newFake(t, 2<<30, 0) // cap: 1 % of 2 GiB = 20.5 MiB
	opts := Options{Statfs: fs.statfs, Log: quiet(), SizeInterval: 1}
	g, err := New(fs.dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := ballastSize(t, fs.dir); got != MinAutoBallast {
		t.Fatalf("fresh: got ballast %d, want %d", got, MinAutoBallast)
	}
	for _, step := range []struct {
		name  string
		store int64 // bytes of store files under the data directory
		want  int64
	}{
		{"a small store keeps the floor", 10 * mb, MinAutoBallast},
		{"a quarter of 40 MiB, rounded up", 40 * mb, 16 * mb},
		{"capped at 1 % of the disk", 100 * mb, 2 << 30 / 100},
	} {
		write(t, filepath.Join(fs.dir, "state", "000001.sst"), step.store)
		fs.used = step.store
		st := g.Refresh()
		if got := ballastSize(t, fs.dir); got != step.want || st.Ballast != step.want || st.Refusing {
			t.Errorf("%s: got ballast file %d, status %d, refusing %v; want %d, admitting", step.name, got, st.Ballast, st.Refusing, step.want)
		}
	}

	// No room for the larger ballast beside the old one: keep the old.
	fs2 := newFake(t, 200*mb, 0)
	g2, err := New(fs2.dir, Options{MinFree: 20 * mb, Statfs: fs2.statfs, Log: quiet(), SizeInterval: 1})
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(fs2.dir, "state", "big"), 160*mb)
	fs2.used = 160 * mb // 36 MiB free: 8 MiB more would leave less than 20 + 8 + 5
	if st := g2.Refresh(); st.Refusing || ballastSize(t, fs2.dir) != MinAutoBallast {
		t.Errorf("no room to grow: got refusing %v, ballast %d, want admitting with the old %d", st.Refusing, ballastSize(t, fs2.dir), MinAutoBallast)
	}

	// A restart sizes it from the use: a smaller store, a smaller ballast.
	write(t, filepath.Join(fs.dir, "state", "000001.sst"), 40*mb)
	fs.used = 40 * mb
	if _, err := New(fs.dir, opts); err != nil {
		t.Fatal(err)
	}
	if got := ballastSize(t, fs.dir); got != 16*mb {
		t.Errorf("restart with 40 MiB of store: got ballast %d, want %d", got, 16*mb)
	}
}

// TestNoBallast: with Ballast negative (the demo's store) no file is
// written, an old one is removed, and the watermark works as before.
func TestNoBallast(t *testing.T) {
	fs := newFake(t, 100*mb, 10*mb)
	if err := writeBallast(filepath.Join(fs.dir, BallastName), 3*mb); err != nil {
		t.Fatal(err)
	}
	g, err := New(fs.dir, Options{MinFree: 20 * mb, Ballast: -1, Statfs: fs.statfs, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if st := g.Status(); st.Refusing || st.Ballast != 0 || ballastSize(t, fs.dir) != -1 {
		t.Errorf("start: got refusing %v, ballast %d, file %d; want admitting, no ballast", st.Refusing, st.Ballast, ballastSize(t, fs.dir))
	}
	fs.used = 81 * mb
	if st := g.Refresh(); !st.Refusing {
		t.Errorf("19 MiB free, watermark 20: got admitting, want refusing")
	}
	fs.used = 70 * mb // 30 MiB free: the watermark, no ballast, the 5 MiB margin
	if st := g.Refresh(); st.Refusing || ballastSize(t, fs.dir) != -1 {
		t.Errorf("space back: got refusing %v, ballast file %d; want admitting, no ballast", st.Refusing, ballastSize(t, fs.dir))
	}
}

// TestRealFilesystem runs New against the real statfs of a temporary
// directory: the ballast it writes must take real space.
func TestRealFilesystem(t *testing.T) {
	dir := t.TempDir()
	before, err := statfs(dir)
	if errors.Is(err, ErrUnsupported) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if before.Avail < 64*mb {
		t.Skipf("only %d bytes free in %s", before.Avail, dir)
	}
	g, err := New(dir, Options{MinFree: 1 * mb, Ballast: 8 * mb, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Admit(); err != nil {
		t.Fatalf("got %v, want admitted", err)
	}
	fi, err := os.Stat(filepath.Join(dir, BallastName))
	if err != nil || fi.Size() != 8*mb {
		t.Fatalf("got ballast %v %v, want 8 MiB", fi, err)
	}
}
