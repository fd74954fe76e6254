// Package store holds what every implementation of flowmetrics.Store shares:
// the options and the outbox bookkeeping. Each backend is its own package
// (memstore, pebblestore, …); storetest is the conformance suite they all
// pass.
package store
