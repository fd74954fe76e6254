//go:build cgo

package pebblestore

// With cgo, Pebble allocates its block cache and memtables with C's
// malloc, outside the Go heap.
const cacheOnGoHeap = false
