package embedbench

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestCandidatesClaimEachKeyOnce is the smoke test that keeps the benchmark
// honest: every candidate, with concurrent committers sending each batch
// twice, claims every distinct key exactly once.
func TestCandidatesClaimEachKeyOnce(t *testing.T) {
	w := workload(t, 3000)
	// Conversations span batches: count distinct (conversation, key).
	seen := map[[2]string]bool{}
	for _, b := range w {
		for _, c := range b {
			for _, o := range c.occs {
				seen[[2]string{c.conv, o.Key}] = true
			}
		}
	}
	want := len(seen)
	for _, c := range candidates {
		t.Run(c.name, func(t *testing.T) {
			db, err := c.open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer db.close()
			got, err := drive(db, 2*len(w), 8, func(i int) (batch, int) { return w[i%len(w)], 0 })
			if err != nil {
				t.Fatal(err)
			}
			if got != int64(want) {
				t.Errorf("got %d new occurrences, want %d (each distinct key once)", got, want)
			}
		})
	}
}

// BenchmarkEmbeddedCandidates compares the embedded stores pebblestore could
// be built on, doing what it does per Claim call: for a batch of 100 corpus
// events, read each conversation's stored keys, write back those with new
// keys and one outbox entry, and commit with fsync. One op is one batch.
//
//	cd integration/embedbench && go test -run '^$' -bench . -benchtime 2000x .
func BenchmarkEmbeddedCandidates(b *testing.B) {
	w := workload(b, 50_000)
	for _, c := range candidates {
		for _, committers := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/committers=%d", c.name, committers), func(b *testing.B) {
				dir := b.TempDir()
				db, err := c.open(dir)
				if err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				start := time.Now()
				_, err = drive(db, b.N, committers, func(i int) (batch, int) { return w[i%len(w)], i / len(w) })
				elapsed := time.Since(start)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if bd, ok := db.(*badgerDB); ok {
					b.ReportMetric(float64(bd.conflicts.Load())/float64(b.N), "conflicts/op")
				}
				if err := db.close(); err != nil {
					b.Fatal(err)
				}
				allocated, apparent, err := diskUsage(dir)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "claims/s")
				b.ReportMetric(float64(b.N*eventsPerBatch)/elapsed.Seconds(), "events/s")
				b.ReportMetric(float64(allocated)/(1<<20), "disk-MiB")
				b.ReportMetric(float64(apparent)/(1<<20), "apparent-MiB")
			})
		}
	}
}

// drive makes n claims from committers goroutines; claim i is pick(i). It
// returns how many occurrences were new.
func drive(db candidate, n, committers int, pick func(i int) (batch, int)) (int64, error) {
	var next, fresh atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, committers)
	for range committers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				bt, round := pick(i)
				k, err := db.claim(bt, round)
				if err != nil {
					errs <- err
					return
				}
				fresh.Add(int64(k))
			}
		})
	}
	wg.Wait()
	close(errs)
	return fresh.Load(), <-errs
}
