package memstore_test

import (
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T, opts store.Options) flowmetrics.Store {
			s := memstore.New(opts)
			t.Cleanup(func() { s.Close() })
			return s
		}, PathsOpenOnKnownKeys: true,
	})
}
