// Package uuid reads a UUID written as Genesys Cloud writes conversation
// ids (8-4-4-4-12 lower-case hex digits) into its 16 bytes, and writes
// them back: the one text that gives them, so a store or a cache can keep
// an id in 16 bytes instead of 36 and give it back unchanged.
package uuid

// Parse reports whether s is a UUID in that form, and sets *u to its
// bytes when it is. Any other text (upper case, braces, another length)
// is refused, so that Text(u) is s again.
func Parse(s string, u *[16]byte) bool {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	var bad byte
	for i, p := range digits {
		hi, lo := hexValue[s[p]], hexValue[s[p+1]]
		bad |= hi | lo
		u[i] = hi<<4 | lo
	}
	return bad < 16
}

// Text writes u into b in the form Parse takes and returns it.
func Text(b *[36]byte, u *[16]byte) []byte {
	const hex = "0123456789abcdef"
	j := 0
	for i, x := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b[j] = '-'
			j++
		}
		b[j], b[j+1] = hex[x>>4], hex[x&15]
		j += 2
	}
	return b[:]
}

// digits are where each byte's two digits are in a UUID's text.
var digits = [16]uint8{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

// hexValue is the value of a lower-case hex digit, 0xff for any other byte.
var hexValue = func() (t [256]byte) {
	for c := range t {
		switch {
		case c >= '0' && c <= '9':
			t[c] = byte(c - '0')
		case c >= 'a' && c <= 'f':
			t[c] = byte(c - 'a' + 10)
		default:
			t[c] = 0xff
		}
	}
	return t
}()
