package dynamostore_test

import (
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// TestConformanceMoto runs the conformance suite on moto, whose DynamoDB has
// the TransactWriteItems that sink state needs.
func TestConformanceMoto(t *testing.T) {
	srv := dynalitetest.StartMoto(t)
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T, opts store.Options) flowmetrics.Store {
			return open(t, srv, srv.CreateTable(t), dynamostore.Config{ReadFirst: true}, opts)
		},
	})
}
