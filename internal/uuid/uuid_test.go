package uuid

import (
	"slices"
	"testing"
)

// TestParse changes each character of a canonical UUID to every byte,
// and checks that Parse takes exactly the texts that are canonical
// UUIDs (lower-case hex digits, dashes at 8, 13, 18 and 23) and that
// Text writes the same text back from their bytes.
func TestParse(t *testing.T) {
	canonical := func(s string) bool {
		if len(s) != 36 {
			return false
		}
		for i := range 36 {
			c := s[i]
			if i == 8 || i == 13 || i == 18 || i == 23 {
				if c != '-' {
					return false
				}
			} else if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
		return true
	}
	base := []byte("0c06df18-0001-4001-810d-38c7c42b8f0e")
	for i := range base {
		for c := range 256 {
			b := slices.Clone(base)
			b[i] = byte(c)
			var u [16]byte
			ok := Parse(string(b), &u)
			if ok != canonical(string(b)) {
				t.Fatalf("%q: taken %v", b, ok)
			}
			var text [36]byte
			if ok && string(Text(&text, &u)) != string(b) {
				t.Fatalf("%q written back as %q", b, text)
			}
		}
	}
	for _, s := range []string{"", "0c06df18-0001-4001-810d-38c7c42b8f0", "0c06df18-0001-4001-810d-38c7c42b8f0e0"} {
		var u [16]byte
		if Parse(s, &u) {
			t.Errorf("%q taken", s)
		}
	}
}
