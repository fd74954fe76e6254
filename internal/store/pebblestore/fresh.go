package pebblestore

import (
	"hash/maphash"
	"math/bits"
	"sync/atomic"
)

// A claim reads the header of each of its conversations, and for a
// conversation the store has never held that read finds nothing, but only
// after a seek through every memtable and a Bloom filter of every table
// (a dozen of them while level 0 fills). When the store held no
// conversation at Open (a replay into a new data directory), every header
// it holds was written by a claim since, so a filter of the conversations
// claimed since Open answers most of those reads without Pebble: a
// conversation the filter has never been given has no header. The filter
// only errs the other way (a conversation it was given, or a false
// positive, is read as before), so nothing read is ever left out.
//
// It is bounded: freshBlocks cache lines of bits, turned off for good once
// it has been given maxFresh conversations (past that its false positives
// would make it worth little).
const (
	freshBlocks = 1 << 15 // 32,768 blocks of 512 bits: 2 MiB
	maxFresh    = 2_000_000
	freshProbes = 6
)

// freshFilter is a blocked Bloom filter of conversation prefixes: each
// prefix sets freshProbes bits of one 512-bit block, so a check reads one
// cache line. Its methods are safe for concurrent use.
type freshFilter struct {
	seed  maphash.Seed
	bits  []atomic.Uint64 // freshBlocks × 8 words
	added atomic.Int64
	off   atomic.Bool
	max   int64
}

func newFreshFilter(blocks int, max int64) *freshFilter {
	return &freshFilter{seed: maphash.MakeSeed(), bits: make([]atomic.Uint64, 8*blocks), max: max}
}

// probes returns the block's first word and the bits of prefix.
func (f *freshFilter) probes(prefix []byte) (block int, h uint64) {
	h = maphash.Bytes(f.seed, prefix)
	hi, _ := bits.Mul64(h, uint64(len(f.bits)/8))
	return int(hi) * 8, h
}

// add records that the store holds (or is about to hold) prefix's header.
func (f *freshFilter) add(prefix []byte) {
	if f == nil || f.off.Load() {
		return
	}
	if f.added.Add(1) > f.max {
		f.off.Store(true)
		return
	}
	block, h := f.probes(prefix)
	for i := range freshProbes {
		bit := (h >> (9 * i)) & 511
		w := &f.bits[block+int(bit>>6)]
		if m := uint64(1) << (bit & 63); w.Load()&m == 0 {
			w.Or(m)
		}
	}
}

// absent reports whether the store surely holds no header under prefix.
func (f *freshFilter) absent(prefix []byte) bool {
	if f == nil || f.off.Load() {
		return false
	}
	block, h := f.probes(prefix)
	for i := range freshProbes {
		bit := (h >> (9 * i)) & 511
		if f.bits[block+int(bit>>6)].Load()&(uint64(1)<<(bit&63)) == 0 {
			return true
		}
	}
	return false
}
