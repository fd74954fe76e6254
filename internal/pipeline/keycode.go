package pipeline

import (
	"strings"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// The known-key cache keeps most keys as one 64-bit code each: the id of
// the key's name (everything before its time's "(": the flow, "Metric_",
// the metric) in the cache's name table, one bit telling the time's two
// usual forms apart, and the time in milliseconds since 1970. A code is
// made only from a text that is the one way of writing it, so two keys
// with the same code are the same string: the cache never answers "known"
// for a key it was not given. Any other key is kept as its bytes.
const (
	codeTimeBits  = 45 // milliseconds from 1970 to the year 3084
	codeMillis    = 1 << codeTimeBits
	codeNameShift = codeTimeBits + 1
	maxNameID     = 1<<(64-codeNameShift) - 1
)

// splitKey cuts k, name + "(" + text + ")", into its name and the text of
// its time, at the last "(" as the attribute parser does.
func splitKey(k string) (name, text string, ok bool) {
	if len(k) < 2 || k[len(k)-1] != ')' {
		return "", "", false
	}
	i := strings.LastIndexByte(k[:len(k)-1], '(')
	if i < 0 {
		return "", "", false
	}
	return k[:i], k[i+1 : len(k)-1], true
}

// timeCode returns the code bits of a time written exactly
// YYYY-MM-DDTHH:MM:SSZ or YYYY-MM-DDTHH:MM:SS.mmmZ (upper-case T and Z),
// a real date and time of the years 1970 to 3084. Each such text is the
// only way of writing its code, so different texts have different codes;
// any other text (another zone, another precision, lower case, a leap
// second) has no code.
func timeCode(s string) (uint64, bool) {
	var form uint64
	switch {
	case len(s) == 20 && s[19] == 'Z':
	case len(s) == 24 && s[19] == '.' && s[23] == 'Z':
		form = codeMillis
	default:
		return 0, false
	}
	if s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return 0, false
	}
	year, ok1 := genesys.Digits(s[0:4])
	month, ok2 := genesys.Digits(s[5:7])
	day, ok3 := genesys.Digits(s[8:10])
	hour, ok4 := genesys.Digits(s[11:13])
	minute, ok5 := genesys.Digits(s[14:16])
	sec, ok6 := genesys.Digits(s[17:19])
	ms, ok7 := 0, true
	if form != 0 {
		ms, ok7 = genesys.Digits(s[20:23])
	}
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) || year < 1970 || hour > 23 || minute > 59 || sec > 59 {
		return 0, false
	}
	days, ok := genesys.ValidDate(year, month, day)
	if !ok {
		return 0, false
	}
	t := (days*86400+int64(hour*3600+minute*60+sec))*1000 + int64(ms)
	if t >= 1<<codeTimeBits {
		return 0, false
	}
	return form | uint64(t), true
}

// uuidBytes puts id's 16 bytes into u when id is a UUID written the
// canonical way: 36 characters, lower-case hex digits, dashes at 8, 13, 18
// and 23. That text is the only one that gives those bytes.
func uuidBytes(id string, u *[16]byte) bool {
	if len(id) != 36 || id[8] != '-' || id[13] != '-' || id[18] != '-' || id[23] != '-' {
		return false
	}
	var bad byte
	for i, p := range uuidDigits {
		hi, lo := hexValue[id[p]], hexValue[id[p+1]]
		bad |= hi | lo
		u[i] = hi<<4 | lo
	}
	return bad < 16
}

// uuidDigits are where each byte's two digits are in a UUID's text.
var uuidDigits = [16]uint8{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

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

// uuidText writes u as a UUID the canonical way (the text uuidBytes takes)
// into b and returns it.
func uuidText(b *[36]byte, u *[16]byte) []byte {
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
