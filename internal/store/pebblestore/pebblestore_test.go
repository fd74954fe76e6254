package pebblestore_test

import (
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	dirs := map[flowmetrics.Store]string{}
	open := func(t *testing.T, dir string, opts store.Options) flowmetrics.Store {
		s, err := pebblestore.Open(dir, opts, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		dirs[s] = dir
		return s
	}
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T, opts store.Options) flowmetrics.Store {
			return open(t, t.TempDir(), opts)
		},
		Reopen: func(t *testing.T, s flowmetrics.Store, opts store.Options) flowmetrics.Store {
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			return open(t, dirs[s], opts)
		}, PathsOpenOnKnownKeys: true,
	})
}
