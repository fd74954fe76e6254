//go:build !linux

package pipeline

import "sync/atomic"

// hugePages: elsewhere than on Linux the known-key cache's arrays are on
// the Go heap.
const hugePages = false

// mapped stays 0: nothing is mapped.
var mapped atomic.Int64

// hugeMem is the Go heap where huge pages cannot be asked for (see
// hugemem_linux.go).
type hugeMem struct {
	heap  bool
	bytes int64
	free  [][]byte
}

func (m *hugeMem) alloc(n int) []byte { return make([]byte, n) }
func (m *hugeMem) release(a []byte)   {}
func (m *hugeMem) freeAll()           {}
