package swar

import (
	"encoding/binary"
	"math/bits"
	"math/rand/v2"
	"testing"
)

// Special must find the first byte that does not stand for itself in a
// JSON string, for every byte value in every position, whatever surrounds
// it, and report none in a word of plain bytes.
func TestSpecial(t *testing.T) {
	first := func(b []byte) int {
		for i, c := range b {
			if c < 0x20 || c >= 0x80 || c == '"' || c == '\\' {
				return i
			}
		}
		return 8
	}
	check := func(b []byte) {
		m := Special(binary.LittleEndian.Uint64(b))
		got := 8
		if m != 0 {
			got = bits.TrailingZeros64(m) / 8
		}
		if want := first(b); got != want {
			t.Fatalf("Special(%q): got first special byte at %d, want %d", b, got, want)
		}
	}
	b := make([]byte, 8)
	for c := range 256 {
		for pos := range 8 {
			for _, fill := range []byte{'a', ' ', '~', 0x7f, 0x21, 0x5d} {
				for i := range b {
					b[i] = fill
				}
				b[pos] = byte(c)
				check(b)
			}
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 1_000_000 {
		binary.LittleEndian.PutUint64(b, r.Uint64())
		check(b)
	}
}
