//go:build unix

package pipeline

import (
	"bytes"
	"context"
	"runtime"
	"syscall"
	"testing"

	"github.com/flowmetrics/flowmetrics/internal/cardinality"
	"github.com/flowmetrics/flowmetrics/internal/corpus"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// BenchmarkPrepare is the work between a decoded record and the store's
// claim: sorting records out, extracting their occurrences, and the
// cardinality guard's admission, over the events of an archive
// (internal/corpus), shuffled and in time order, in replay's batches, and
// shuffled in a serve request's. The
// known-key cache is off (as over the memory store), so every event's
// names are extracted; nothing is claimed, so every pass does the same.
// cpu-ns/event is the CPU time of the whole process (the garbage
// collector included) per event.
//
//	go test ./internal/pipeline -run '^$' -bench Prepare -benchmem
func BenchmarkPrepare(b *testing.B) {
	archive := func(shuffle bool) []genesys.Record {
		var file bytes.Buffer
		if _, err := corpus.WriteArchive(&file, corpus.ArchiveOptions{Conversations: 5000, Seed: 17, Shuffle: shuffle}); err != nil {
			b.Fatal(err)
		}
		var recs []genesys.Record
		if err := genesys.Decode(&file, func(r genesys.Record) error {
			recs = append(recs, r)
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		return recs
	}
	shuffled, ordered := archive(true), archive(false)
	for _, bc := range []struct {
		name  string
		recs  []genesys.Record
		batch int
	}{{"replay-shuffled", shuffled, 2000}, {"replay-ordered", ordered, 2000}, {"request", shuffled, 100}} {
		b.Run(bc.name, func(b *testing.B) {
			recs := bc.recs
			ctx := context.Background()
			ms := memstore.New(store.Options{})
			defer ms.Close()
			g, err := cardinality.Open(ctx, 0, ms, nil)
			if err != nil {
				b.Fatal(err)
			}
			p := New(ms, nil, Config{CacheConversations: -1, Guard: g}, telemetry.New(), nil)
			b.ReportAllocs()
			runtime.GC() // the archive's garbage
			cpu0 := cpuTime(b)
			for b.Loop() {
				for i := 0; i < len(recs); i += bc.batch {
					pr := p.Prepare(ctx, recs[i:min(i+bc.batch, len(recs))])
					if pr.err != nil {
						b.Fatal(pr.err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(recs)), "ns/event")
			b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N*len(recs)), "cpu-ns/event")
		})
	}
}

// cpuTime returns the CPU time (user and system) the process used so far,
// in nanoseconds: on a machine others share, it moves less than the time
// that passed.
func cpuTime(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
