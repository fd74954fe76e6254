package pebblestore

import (
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// BenchmarkLogSyncBesideTable measures what a table written beside the
// write-ahead log does to the log's syncs, on the disk of the test's
// temporary directory: a log appends 14 KB (a serve request of 100
// archive events) and syncs it every 10 ms (10,000 events/s offered),
// while an 8 MiB table is written the way Pebble writes one (its
// writeback started every BytesPerSync):
//
//   - alone: no table (the log's syncs over a quarter of a second);
//   - full-speed: Pebble's defaults, as fast as the disk takes it, in
//     writebacks of 512 KiB;
//   - paced: as serve writes its tables (serveTableWriteRate, see pacer),
//     32 MiB/s in writebacks of 128 KiB.
//
// It reports the syncs' p50, p90 and p99 in ms, counting only those that
// ran while the table was being written:
//
//	go test ./internal/store/pebblestore -run '^$' -bench LogSyncBesideTable -benchtime 40x
func BenchmarkLogSyncBesideTable(b *testing.B) {
	for _, tc := range []struct {
		name         string
		table        bool
		rate         int64
		bytesPerSync int
	}{
		{"alone", false, 0, 0},
		{"full-speed", true, 0, 512 << 10},
		{"paced", true, 32 << 20, pacedBytesPerSync},
	} {
		b.Run(tc.name, func(b *testing.B) {
			dir := b.TempDir()
			fs := vfs.Default
			log, err := fs.Create(filepath.Join(dir, "000001.log"), vfs.WriteCategoryUnspecified)
			if err != nil {
				b.Fatal(err)
			}
			defer log.Close()
			// A recycled log, as serve's are once the first memtables are
			// flushed: its appends overwrite blocks it already has.
			const logSize = 16 << 20
			if _, err := log.Write(make([]byte, logSize)); err != nil {
				b.Fatal(err)
			}
			if err := log.Sync(); err != nil {
				b.Fatal(err)
			}
			record := make([]byte, 14<<10)
			var syncs []time.Duration
			for i := 0; b.Loop(); i++ {
				var writing atomic.Bool
				writing.Store(true)
				done := make(chan error, 1)
				go func() {
					if !tc.table {
						time.Sleep(250 * time.Millisecond)
						writing.Store(false)
						done <- nil
						return
					}
					done <- writeTable(fs, filepath.Join(dir, "table.sst"), tc.rate, tc.bytesPerSync)
					writing.Store(false)
				}()
				for off := int64(0); writing.Load(); off = (off + int64(len(record))) % (logSize - int64(len(record))) {
					time.Sleep(10 * time.Millisecond)
					start := time.Now()
					if _, err := log.WriteAt(record, off); err != nil {
						b.Fatal(err)
					}
					if err := log.SyncData(); err != nil {
						b.Fatal(err)
					}
					if writing.Load() {
						syncs = append(syncs, time.Since(start))
					}
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			}
			if len(syncs) == 0 {
				return
			}
			slices.Sort(syncs)
			for _, p := range []struct {
				q    float64
				unit string
			}{{0.5, "p50-ms"}, {0.9, "p90-ms"}, {0.99, "p99-ms"}} {
				b.ReportMetric(float64(syncs[int(p.q*float64(len(syncs)-1))])/float64(time.Millisecond), p.unit)
			}
			b.ReportMetric(float64(len(syncs)), "syncs")
		})
	}
}

// writeTable writes an 8 MiB table as Pebble does, paced at rate (0: not
// paced), and removes it.
func writeTable(fs vfs.FS, name string, rate int64, bytesPerSync int) error {
	f, err := fs.Create(name, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	if p := newPacer(rate); p != nil {
		l0 := func() int64 { return 0 }
		p.l0Tables.Store(&l0)
		f = p.file(name, f)
	}
	f = vfs.NewSyncingFile(f, vfs.SyncingFileOptions{BytesPerSync: bytesPerSync})
	block := make([]byte, 32<<10)
	for range (8 << 20) / len(block) {
		if _, err := f.Write(block); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return fs.Remove(name)
}
