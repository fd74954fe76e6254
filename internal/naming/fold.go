package naming

import (
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// ligatures spells out the Latin letters that do not decompose into a base
// letter and an accent.
var ligatures = strings.NewReplacer("ß", "ss", "æ", "ae", "Æ", "AE", "œ", "oe", "Œ", "OE", "ø", "o", "Ø", "O", "ł", "l", "Ł", "L", "đ", "d", "Đ", "D", "þ", "th", "Þ", "TH")

// Fold brings s as close to ASCII as spelling allows, for backends whose
// names take nothing else: accents are dropped ("é" → "e", "Ä" → "A") and
// the Latin letters that do not decompose are spelled out ("ß" → "ss",
// "æ" → "ae"), so "Größe" is "Grosse" in every such backend. Characters
// with no ASCII spelling are left as they are, for the backend's own rule
// to replace.
func Fold(s string) string {
	s = norm.NFD.String(ligatures.Replace(s))
	if !strings.ContainsFunc(s, isMark) {
		return s
	}
	return strings.Map(func(r rune) rune {
		if isMark(r) {
			return -1
		}
		return r
	}, s)
}

// isMark reports a combining mark, left by decomposing an accented letter.
func isMark(r rune) bool { return unicode.Is(unicode.Mn, r) }
