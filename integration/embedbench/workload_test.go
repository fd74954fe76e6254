package embedbench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/corpus"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// eventsPerBatch is the size of one claim: an HTTP request of 100 events.
const eventsPerBatch = 100

// claim is what one conversation of a batch asks the store: its
// occurrences in the batch, each key once.
type claim struct {
	conv string
	occs []flowmetrics.Occurrence
}

// batch is one Claim call: the conversations of ~100 corpus events that carry
// metric attributes. It is what the pipeline sends the store when the cache
// of known keys is cold.
type batch []claim

// candidate is one embedded store doing the claim pattern pebblestore needs.
// claim returns how many occurrences were new. round is added to every
// conversation id, so a benchmark that runs past the end of the workload
// keeps claiming new keys instead of re-reading known ones.
type candidate interface {
	claim(b batch, round int) (int, error)
	close() error
}

type opener struct {
	name string
	open func(dir string) (candidate, error)
}

var candidates = []opener{
	{"pebble", openPebble},
	{"bbolt-update", func(dir string) (candidate, error) { return openBolt(dir, false) }},
	{"bbolt-batch", func(dir string) (candidate, error) { return openBolt(dir, true) }},
	{"badger", openBadger},
}

// workload cuts a corpus of the given size into batches of eventsPerBatch.
func workload(tb testing.TB, events int) []batch {
	tb.Helper()
	var out []batch
	var cur batch
	idx := map[string]int{} // conversation -> its claim in cur
	n := 0
	corpus.Generate(corpus.Options{Events: events, Seed: 7}, func(raw []byte) bool {
		rec := genesys.DecodeValue(raw)
		if rec.Outcome != genesys.Accepted {
			tb.Fatalf("corpus event not accepted: %v", rec.Err)
		}
		occs, _ := genesys.Extract(rec.Event)
		for _, o := range occs {
			i, ok := idx[rec.Event.ConversationID]
			if !ok {
				i = len(cur)
				idx[rec.Event.ConversationID] = i
				cur = append(cur, claim{conv: rec.Event.ConversationID})
			}
			if !hasKey(cur[i].occs, o.Key) {
				cur[i].occs = append(cur[i].occs, o)
			}
		}
		if n++; n%eventsPerBatch == 0 {
			out = append(out, cur)
			cur, idx = nil, map[string]int{}
		}
		return true
	})
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

func hasKey(occs []flowmetrics.Occurrence, k string) bool {
	for _, o := range occs {
		if o.Key == k {
			return true
		}
	}
	return false
}

func convID(conv string, round int) string {
	if round == 0 {
		return conv
	}
	return fmt.Sprintf("%s/%d", conv, round)
}

// merge returns the stored keys plus the new ones, and the occurrences whose
// keys were new.
func merge(stored []string, occs []flowmetrics.Occurrence) (keys []string, fresh []flowmetrics.Occurrence) {
	keys = stored
	for _, o := range occs {
		known := false
		for _, k := range stored {
			if k == o.Key {
				known = true
				break
			}
		}
		if !known {
			keys = append(keys, o.Key)
			fresh = append(fresh, o)
		}
	}
	return keys, fresh
}

// The encodings are those of pebblestore, in spirit: length-prefixed keys for
// a conversation, key, flow, metric and time per occurrence for an entry.

func encodeKeys(keys []string) []byte {
	var b []byte
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
	}
	return b
}

var errCorrupt = errors.New("corrupt record")

func decodeKeys(v []byte) ([]string, error) {
	var keys []string
	for len(v) > 0 {
		n, m := binary.Uvarint(v)
		if m <= 0 || n > uint64(len(v)-m) {
			return nil, errCorrupt
		}
		keys = append(keys, string(v[m:m+int(n)]))
		v = v[m+int(n):]
	}
	return keys, nil
}

func encodeEntry(occs []flowmetrics.Occurrence) []byte {
	b := binary.AppendUvarint(make([]byte, 0, 96*len(occs)), uint64(len(occs)))
	for _, o := range occs {
		for _, s := range []string{o.Key, o.Flow, o.Metric} {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
		b = binary.AppendVarint(b, o.Time.UnixNano())
	}
	return b
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// diskUsage returns the space the files under dir take on disk and their
// apparent size. They differ: Pebble keeps used write-ahead logs,
// preallocated, for reuse, and Badger preallocates sparse files.
func diskUsage(dir string) (allocated, apparent int64, err error) {
	err = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		apparent += fi.Size()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			allocated += st.Blocks * 512
		}
		return nil
	})
	return allocated, apparent, err
}
