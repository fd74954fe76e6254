package embedbench

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/dgraph-io/badger/v4"
	bolt "go.etcd.io/bbolt"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// Pebble: no transactions, so conversations are locked (striped, as in
// pebblestore) from the read of their state until the batch is synced.
// Concurrent Commit(pebble.Sync) calls share one write-ahead-log fsync.

type pebbleDB struct {
	db      *pebble.DB
	stripes store.Stripes
	seq     atomic.Uint64
}

func openPebble(dir string) (candidate, error) {
	db, err := pebble.Open(dir, &pebble.Options{Logger: quiet{}, MemTableSize: 32 << 20})
	if err != nil {
		return nil, err
	}
	return &pebbleDB{db: db}, nil
}

func (p *pebbleDB) claim(bt batch, round int) (int, error) {
	ids := make([]string, len(bt))
	for i, c := range bt {
		ids[i] = convID(c.conv, round)
	}
	unlock := p.stripes.Lock(ids)
	defer unlock()
	wb := p.db.NewBatch()
	defer wb.Close()
	var out []flowmetrics.Occurrence
	for i, c := range bt {
		key := []byte("c/" + ids[i])
		var stored []string
		v, closer, err := p.db.Get(key)
		switch {
		case err == nil:
			stored, err = decodeKeys(v)
			closer.Close()
			if err != nil {
				return 0, err
			}
		case !errors.Is(err, pebble.ErrNotFound):
			return 0, err
		}
		keys, fresh := merge(stored, c.occs)
		if len(fresh) == 0 {
			continue
		}
		if err := wb.Set(key, encodeKeys(keys), nil); err != nil {
			return 0, err
		}
		out = append(out, fresh...)
	}
	if len(out) == 0 {
		return 0, nil
	}
	if err := wb.Set(append([]byte("o/"), be64(p.seq.Add(1))...), encodeEntry(out), nil); err != nil {
		return 0, err
	}
	return len(out), wb.Commit(pebble.Sync)
}

// close flushes the memtable first, as pebblestore's Close does, so the disk
// holds tables rather than write-ahead logs.
func (p *pebbleDB) close() error {
	if err := p.db.Flush(); err != nil {
		p.db.Close()
		return err
	}
	return p.db.Close()
}

type quiet struct{}

func (quiet) Infof(string, ...any)         {}
func (quiet) Errorf(string, ...any)        {}
func (quiet) Fatalf(f string, args ...any) { panic("pebble: " + fmt.Sprintf(f, args...)) }

// bbolt: one writer at a time. db.Update fsyncs every transaction on its
// own; db.Batch runs concurrent callers' functions in one transaction (and
// one fsync), waiting up to MaxBatchDelay (10 ms) for company.

type boltDB struct {
	db    *bolt.DB
	batch bool
}

var (
	convBucket   = []byte("c")
	outboxBucket = []byte("o")
)

func openBolt(dir string, batch bool) (candidate, error) {
	db, err := bolt.Open(filepath.Join(dir, "state.db"), 0o600, nil)
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{convBucket, outboxBucket} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &boltDB{db: db, batch: batch}, nil
}

func (b *boltDB) claim(bt batch, round int) (int, error) {
	var n int
	// db.Batch may run fn more than once: it must start from scratch.
	fn := func(tx *bolt.Tx) error {
		n = 0
		convs, outbox := tx.Bucket(convBucket), tx.Bucket(outboxBucket)
		var out []flowmetrics.Occurrence
		for _, c := range bt {
			key := []byte(convID(c.conv, round))
			stored, err := decodeKeys(convs.Get(key))
			if err != nil {
				return err
			}
			keys, fresh := merge(stored, c.occs)
			if len(fresh) == 0 {
				continue
			}
			if err := convs.Put(key, encodeKeys(keys)); err != nil {
				return err
			}
			out = append(out, fresh...)
		}
		if len(out) == 0 {
			return nil
		}
		seq, err := outbox.NextSequence()
		if err != nil {
			return err
		}
		n = len(out)
		return outbox.Put(be64(seq), encodeEntry(out))
	}
	var err error
	if b.batch {
		err = b.db.Batch(fn)
	} else {
		err = b.db.Update(fn)
	}
	return n, err
}

func (b *boltDB) close() error { return b.db.Close() }

// Badger: optimistic transactions; two that read the same conversation
// conflict and the loser runs again. SyncWrites makes every commit wait for
// the fsync, and concurrent commits share one.

type badgerDB struct {
	db        *badger.DB
	seq       atomic.Uint64
	conflicts atomic.Int64
}

func openBadger(dir string) (candidate, error) {
	db, err := badger.Open(badger.DefaultOptions(dir).WithSyncWrites(true).WithLogger(nil))
	if err != nil {
		return nil, err
	}
	return &badgerDB{db: db}, nil
}

func (d *badgerDB) claim(bt batch, round int) (int, error) {
	for {
		var n int
		err := d.db.Update(func(txn *badger.Txn) error {
			var out []flowmetrics.Occurrence
			for _, c := range bt {
				key := []byte("c/" + convID(c.conv, round))
				var stored []string
				item, err := txn.Get(key)
				switch {
				case err == nil:
					if err := item.Value(func(v []byte) error {
						stored, err = decodeKeys(v)
						return err
					}); err != nil {
						return err
					}
				case !errors.Is(err, badger.ErrKeyNotFound):
					return err
				}
				keys, fresh := merge(stored, c.occs)
				if len(fresh) == 0 {
					continue
				}
				if err := txn.Set(key, encodeKeys(keys)); err != nil {
					return err
				}
				out = append(out, fresh...)
			}
			if len(out) == 0 {
				return nil
			}
			n = len(out)
			return txn.Set(append([]byte("o/"), be64(d.seq.Add(1))...), encodeEntry(out))
		})
		if errors.Is(err, badger.ErrConflict) {
			d.conflicts.Add(1)
			continue
		}
		return n, err
	}
}

func (d *badgerDB) close() error { return d.db.Close() }
