//go:build !cgo

package pebblestore

// Without cgo (static builds), Pebble allocates its block cache and
// memtables on the Go heap.
const cacheOnGoHeap = true
