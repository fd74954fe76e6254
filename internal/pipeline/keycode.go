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
