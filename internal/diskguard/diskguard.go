// Package diskguard keeps a full disk from reaching the embedded store.
//
// It watches the free space of the data directory's filesystem (statfs,
// refreshed every 250 ms by Run, so the ingest path only reads an atomic)
// and refuses ingest when the free space falls below a watermark, MinFree:
// the store's own writes then never meet a full disk, which Pebble cannot
// survive. It also keeps an emergency ballast file in the data directory, as
// CockroachDB does: a reserved Ballast bytes, deleted the moment the
// watermark is crossed, so that whatever filled the disk (our own writes,
// or another process on the same filesystem) leaves room for the sinks'
// cursors, the outbox clean-up, flushes and a clean shutdown.
//
// Ingest resumes by itself when the space returns: once the free space is at
// least MinFree + Ballast + a margin, the ballast is written again (and
// synced), and only then is ingest admitted.
//
// The ballast's automatic size follows the data directory's use: what the
// store would need to finish its work once ingest stops grows with the store,
// so a fresh directory holds a small ballast (MinAutoBallast) and a larger
// one as the store grows, up to the filesystem-based cap. A first run writes
// a few MiB, not hundreds.
package diskguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// BallastName is the ballast file's name in the data directory. Deleting it
// by hand is always safe: the guard writes it again when there is room.
const BallastName = "EMERGENCY_BALLAST"

// Space is what a filesystem reports.
type Space struct {
	// Avail is the space an unprivileged writer may still use (statfs
	// f_bavail × f_bsize); Total is the filesystem's size.
	Avail, Total uint64
}

// SpaceOf reports the space of the filesystem holding dir (ErrUnsupported
// where statfs is not available).
func SpaceOf(dir string) (Space, error) { return statfs(dir) }

// Options configure a Guard. The zero value of each field takes its default.
type Options struct {
	// MinFree is the watermark: ingest is refused below this many free
	// bytes. Default: 2 % of the filesystem, at least 16 MiB, at most 1 GiB.
	MinFree int64
	// Ballast is the size of the emergency file; negative: none (a store
	// whose contents do not matter, such as the demo's). Default (0): a
	// quarter of the data directory's use, rounded up to a power of two, at
	// least MinAutoBallast, at most 1 % of the filesystem clamped to
	// 8 MiB–256 MiB; it grows with the store (see SizeInterval).
	Ballast int64
	// Interval is how often Run refreshes (default 250 ms).
	Interval time.Duration
	// SizeInterval is how often, with the automatic ballast, the data
	// directory's use is measured again and the ballast grown to match
	// (default 10 s).
	SizeInterval time.Duration
	// Statfs reports the space of the filesystem holding dir (statfs(2)
	// when nil).
	Statfs func(dir string) (Space, error)
	// Log receives the transitions (slog.Default when nil).
	Log *slog.Logger
}

// Default bounds of the automatic sizes.
const (
	minAutoMinFree = 16 << 20
	maxAutoMinFree = 1 << 30
	minAutoBallast = 8 << 20
	maxAutoBallast = 256 << 20
	// MinAutoBallast is the automatic ballast of a fresh data directory.
	MinAutoBallast = 4 << 20
)

// Status is the guard's view after its last refresh.
type Status struct {
	// Refusing is true while ingest is refused.
	Refusing bool
	// Avail is the free space last measured (bytes).
	Avail uint64
	// BallastPresent says whether the ballast file is in place.
	BallastPresent bool
	// MinFree and Ballast are the sizes in force (Ballast 0: none).
	MinFree, Ballast int64
	// Err is the last statfs or ballast error, if any.
	Err error
}

// ErrUnsupported is returned by New where free space cannot be measured
// (only Linux is supported).
var ErrUnsupported = errors.New("diskguard: free space is only measured on linux")

// ErrDiskLow is what Admit returns (wrapped) while ingest is refused.
var ErrDiskLow = errors.New("disk space low")

// Guard watches one data directory. Its methods are safe for concurrent use.
type Guard struct {
	dir        string
	ballast    string // path of the ballast file
	opts       Options
	autoCap    int64 // the automatic ballast's cap; 0 when its size is fixed
	log        *slog.Logger
	mu         sync.Mutex // serialises Refresh
	lastSizing time.Time  // under mu
	status     atomic.Pointer[Status]
	refusals   atomic.Int64
}

// New measures the filesystem of dir (creating dir if needed), settles the
// automatic sizes, and makes the first decision: it deletes the ballast when
// the disk is already low (so the store has room to open) or writes it when
// there is room. It fails only when dir cannot be created or measured.
func New(dir string, opts Options) (*Guard, error) {
	if opts.Interval <= 0 {
		opts.Interval = 250 * time.Millisecond
	}
	if opts.SizeInterval <= 0 {
		opts.SizeInterval = 10 * time.Second
	}
	if opts.Statfs == nil {
		opts.Statfs = statfs
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("diskguard: %w", err)
	}
	sp, err := opts.Statfs(dir)
	if err != nil {
		return nil, fmt.Errorf("diskguard: measuring %s: %w", dir, err)
	}
	if opts.MinFree <= 0 {
		opts.MinFree = clamp(int64(sp.Total/50), minAutoMinFree, maxAutoMinFree)
	}
	g := &Guard{dir: dir, ballast: filepath.Join(dir, BallastName), opts: opts, log: opts.Log.With("component", "diskguard")}
	size := opts.Ballast
	switch {
	case size < 0:
		size = 0
	case size == 0:
		g.autoCap = clamp(int64(sp.Total/100), minAutoBallast, maxAutoBallast)
		size = autoBallast(dirUse(dir), g.autoCap)
		g.lastSizing = time.Now()
	}
	// A ballast of another size (the setting or the store's use changed)
	// is replaced; none is kept where none is wanted.
	if fi, err := os.Stat(g.ballast); err == nil && fi.Size() != size {
		os.Remove(g.ballast)
	}
	g.status.Store(&Status{MinFree: opts.MinFree, Ballast: size, BallastPresent: g.ballastPresent()})
	st := g.Refresh()
	g.log.Info("disk guard", "dir", dir, "free", st.Avail, "min_free", opts.MinFree, "ballast", st.Ballast, "refusing", st.Refusing)
	return g, nil
}

func clamp(v, lo, hi int64) int64 { return min(max(v, lo), hi) }

// autoBallast is the automatic ballast for a data directory using used
// bytes: a quarter of it, rounded up to a power of two so that it is
// rewritten only each time the store doubles, at least MinAutoBallast, at
// most limit.
func autoBallast(used, limit int64) int64 {
	b := int64(MinAutoBallast)
	for b < used/4 && b < limit {
		b *= 2
	}
	return min(b, limit)
}

// dirUse is the size of the files under dir, the ballast excepted.
func dirUse(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == BallastName || d.Name() == BallastName+".tmp" {
			return nil
		}
		if fi, err := d.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// Run refreshes every Interval until ctx ends.
func (g *Guard) Run(ctx context.Context) {
	t := time.NewTicker(g.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.Refresh()
		}
	}
}

// Admit returns nil when ingest may go on, and an error wrapping ErrDiskLow
// that says why while it is refused. It only reads the last refresh.
func (g *Guard) Admit() error {
	err := g.Check()
	if err != nil {
		g.refusals.Add(1)
	}
	return err
}

// Check is Admit without counting a refusal (for health checks).
func (g *Guard) Check() error {
	st := g.status.Load()
	if !st.Refusing {
		return nil
	}
	return fmt.Errorf("%w: %s free on the data directory's filesystem, below the %s needed (min_free %s + ballast %s to restore)",
		ErrDiskLow, mib(int64(st.Avail)), mib(resumeAt(*st)), mib(st.MinFree), mib(st.Ballast))
}

// Refusals returns how many times Admit refused.
func (g *Guard) Refusals() int64 { return g.refusals.Load() }

// Status returns the guard's view after its last refresh.
func (g *Guard) Status() Status { return *g.status.Load() }

// resumeAt is the free space at which the ballast is restored and ingest
// resumes: the watermark, the ballast and a margin, so that the guard does
// not flap around the watermark.
func resumeAt(st Status) int64 {
	return st.MinFree + st.Ballast + max(st.MinFree/4, 1<<20)
}

// Refresh measures the filesystem once and applies the rules: below MinFree,
// refuse and delete the ballast; refusing and at least resumeAt free, write
// the ballast and admit again. It returns the new status.
func (g *Guard) Refresh() Status {
	g.mu.Lock()
	defer g.mu.Unlock()
	st := *g.status.Load()
	st.Err = nil
	sp, err := g.opts.Statfs(g.dir)
	if err != nil {
		// Keep the last decision: a failing statfs says nothing new.
		if prev := g.status.Load().Err; prev == nil {
			g.log.Error("measuring free space failed; keeping the last decision", "err", err)
		}
		st.Err = err
		g.status.Store(&st)
		return st
	}
	st.Avail = sp.Avail
	free := int64(sp.Avail)
	hadBallast := st.BallastPresent
	wanted := st.Ballast > 0
	switch {
	case !st.Refusing && free < g.opts.MinFree:
		st.Refusing = true
		if st.BallastPresent {
			if err := os.Remove(g.ballast); err != nil && !errors.Is(err, os.ErrNotExist) {
				st.Err = err
				g.log.Error("deleting the emergency ballast failed", "path", g.ballast, "err", err)
			} else {
				st.BallastPresent = false
			}
		}
		g.log.Warn("disk space low: refusing ingest (503) and released the emergency ballast", "free", free, "min_free", st.MinFree, "ballast", st.Ballast, "resume_at", resumeAt(st))
	case st.Refusing && free >= resumeAt(st), wanted && !st.Refusing && !st.BallastPresent && free >= resumeAt(st):
		if wanted && !st.BallastPresent {
			if err := writeBallast(g.ballast, st.Ballast); err != nil {
				st.Err = err
				st.Refusing = true
				g.log.Error("restoring the emergency ballast failed; still refusing ingest", "path", g.ballast, "err", err)
				break
			}
			st.BallastPresent = true
		}
		if st.Refusing {
			g.log.Info("disk space back: emergency ballast restored, accepting ingest", "free", free)
		}
		st.Refusing = false
	case wanted && !st.Refusing && !st.BallastPresent:
		// No ballast yet and no room for it: not safe to admit.
		st.Refusing = true
		g.log.Warn("disk space low: no room for the emergency ballast; refusing ingest (503)", "free", free, "resume_at", resumeAt(st))
	case g.autoCap > 0 && !st.Refusing && st.BallastPresent && time.Since(g.lastSizing) >= g.opts.SizeInterval:
		g.lastSizing = time.Now()
		g.grow(&st, free)
	}
	if st.BallastPresent != hadBallast {
		// The ballast moved the free space: report what is left now.
		if sp, err := g.opts.Statfs(g.dir); err == nil {
			st.Avail = sp.Avail
		}
	}
	g.status.Store(&st)
	return st
}

// grow replaces the automatic ballast by a larger one when the data
// directory's use has grown past what it covers and there is room for the
// new one beside the old while it is written. Where there is no room it
// keeps the old one: the watermark still refuses ingest before the disk
// is full.
func (g *Guard) grow(st *Status, free int64) {
	want := autoBallast(dirUse(g.dir), g.autoCap)
	if want <= st.Ballast {
		return
	}
	next := *st
	next.Ballast = want
	if free-want < resumeAt(next) {
		return
	}
	if err := writeBallast(g.ballast, want); err != nil {
		g.log.Warn("growing the emergency ballast failed; keeping the old one", "size", want, "err", err)
		return
	}
	g.log.Info("emergency ballast grown with the store", "size", want)
	st.Ballast = want
	if sp, err := g.opts.Statfs(g.dir); err == nil {
		st.Avail = sp.Avail
	}
}

func (g *Guard) ballastPresent() bool {
	_, err := os.Stat(g.ballast)
	return err == nil
}

// writeBallast creates the ballast file with its blocks allocated (not a
// sparse file, which would reserve nothing) and syncs it. A failed attempt
// leaves no partial file behind.
func writeBallast(path string, size int64) (err error) {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("diskguard: ballast: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := allocate(f, size); err != nil {
		return fmt.Errorf("diskguard: ballast: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("diskguard: ballast: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("diskguard: ballast: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("diskguard: ballast: %w", err)
	}
	return nil
}

// writeZeros fills f with size zero bytes: the portable way to allocate.
func writeZeros(f *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	for size > 0 {
		n := min(size, int64(len(buf)))
		if _, err := f.Write(buf[:n]); err != nil {
			return err
		}
		size -= n
	}
	return nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
