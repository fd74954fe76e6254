// Package swar finds, eight bytes at a time, the bytes a JSON string cannot
// hold as they are: the decoder skips the runs of plain bytes between them,
// and the JSON-lines encoder checks that a field needs no escaping.
package swar

const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// Special returns w (eight bytes of a string, little-endian) with the top
// bit of each byte set where it holds a quote, a backslash, a control
// character or a byte outside ASCII. It is zero exactly when none of the
// eight bytes is one of those. Borrows can also mark bytes above the first
// marked one, so only the lowest mark is exact.
func Special(w uint64) uint64 {
	q := w ^ (lsb * '"')
	b := w ^ (lsb * '\\')
	return ((q-lsb)&^q | (b-lsb)&^b | (w - lsb*0x20) | w) & msb
}
