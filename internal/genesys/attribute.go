package genesys

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// marker separates the flow name from the metric name in an attribute name.
const marker = "Metric_"

var markerBytes = []byte(marker)

// The longest flow and metric names, in bytes. A longer one is malformed:
// names become labels, tags and series in every sink, and no backend wants
// a 5 MiB tag. Real names are a few dozen bytes.
const (
	MaxFlowLen   = 200
	MaxMetricLen = 200
)

// ErrNameTooLong is wrapped by the malformed reasons of a flow or metric
// name longer than MaxFlowLen or MaxMetricLen, so callers can count them.
var ErrNameTooLong = errors.New("longer than 200 bytes")

// Attribute is a well-formed flow metric attribute name, taken apart.
type Attribute struct {
	Flow   string
	Metric string
	// Time is the time written in the name, converted to UTC.
	Time time.Time
}

// The reasons a metric-shaped name is malformed. They are fixed values, so
// that a feed full of one typo costs no allocation per attribute.
var (
	errNoClosingParen   = errors.New("missing closing parenthesis")
	errTextAfterParen   = errors.New("text after the closing parenthesis")
	errInvalidUTF8      = errors.New("name is not valid UTF-8")
	errEmptyFlow        = errors.New("empty flow name")
	errEmptyMetric      = errors.New("empty metric name")
	errControlInFlow    = errors.New("control character in flow name")
	errControlInMetric  = errors.New("control character in metric name")
	errFormatInFlow     = errors.New("invisible format character (a bidirectional control, zero-width character or byte-order mark) in flow name")
	errFormatInMetric   = errors.New("invisible format character (a bidirectional control, zero-width character or byte-order mark) in metric name")
	errFlowTooLong      = fmt.Errorf("flow name %w", ErrNameTooLong)
	errMetricTooLong    = fmt.Errorf("metric name %w", ErrNameTooLong)
	errTimeEmpty        = errors.New("empty time")
	errTimeLayout       = errors.New("time is not RFC 3339 (want e.g. 2023-03-05T08:18:04.568Z)")
	errTimeSpace        = errors.New("time has a space where RFC 3339 wants T")
	errTimeNoFraction   = errors.New("time has a decimal point without digits")
	errTimeLongFraction = errors.New("time has more than 9 fractional digits")
	errTimeZone         = errors.New("time has no valid zone (want Z or ±hh:mm)")
	errTimeMonth        = errors.New("time has month out of range")
	errTimeDay          = errors.New("time has day out of range")
	errTimeHour         = errors.New("time has hour out of range")
	errTimeMinute       = errors.New("time has minute out of range")
	errTimeSecond       = errors.New("time has second out of range")
	errTimeOffset       = errors.New("time has zone offset out of range")
	errTimeYear         = errors.New("time is outside the years 0000 to 9999 in UTC")
)

// AttributeName is the inverse of ParseAttribute: the attribute name a flow
// writes for one occurrence of metric at t, with the time in UTC to the
// millisecond, as Architect's flows write it.
func AttributeName(flow, metric string, t time.Time) string {
	return flow + "Metric_" + metric + "(" + t.UTC().Format("2006-01-02T15:04:05.000Z") + ")"
}

// ParseAttribute parses a Participant Data attribute name.
//
// A name has the metric shape when it contains "Metric_" and a "(" somewhere
// after the first "Metric_". A name without that shape is not a metric
// attribute at all: ParseAttribute returns ok=false and a nil error, and the
// name is meant to be ignored. The shape is deliberately looser than the
// contract's `…Metric_…(…)`: a name that lacks its closing parenthesis or
// has text (even a space) after it is exactly the kind of slip a flow author
// makes and must be told about, so such names are malformed, not ignored.
//
// A metric-shaped name that breaks a rule returns a non-nil error saying
// which, and a.Flow set to the text before the first "Metric_" (possibly
// empty, cut to MaxFlowLen bytes, with invalid UTF-8 replaced) so the caller
// can count malformed names per flow. The rules, checked in this order:
//   - the name ends with ")"; the text inside the last "(" and that ")" is
//     TIME, the text between the first "Metric_" and that "(" is METRIC
//     (which may itself hold parentheses and "Metric_");
//   - the name is valid UTF-8;
//   - FLOW and METRIC are not empty, at most MaxFlowLen and MaxMetricLen
//     bytes long, hold no control characters (Unicode Cc: ASCII's, DEL
//     and U+0080–U+009F) and no invisible format characters (Unicode Cf,
//     such as the bidirectional overrides U+202A–U+202E and isolates
//     U+2066–U+2069, the zero-width U+200B–U+200F and U+FEFF, and the
//     line and paragraph separators U+2028, U+2029): they would let two
//     names that are different keys look identical, or one look like
//     another, in every sink and on the dashboard;
//   - TIME is an RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS, then optionally
//     "." and 1 to 9 digits, then "Z" or ±hh:mm; "T" and "Z" may be lower
//     case, as RFC 3339's grammar allows; a space instead of "T" is
//     rejected (RFC 3339 mentions it only as something applications may
//     choose); the date must exist, the second 60 (a leap second, which Go
//     cannot represent) is rejected, and so is a time that falls outside
//     the years 0000 to 9999 once converted to UTC.
//
// Otherwise ok is true and a holds the parts; a.Flow and a.Metric are
// substrings of name.
func ParseAttribute(name string) (a Attribute, ok bool, err error) {
	i := strings.Index(name, marker)
	if i < 0 {
		return Attribute{}, false, nil
	}
	rest := name[i+len(marker):]
	open := strings.LastIndexByte(rest, '(')
	if open < 0 {
		return Attribute{}, false, nil
	}
	a.Flow = name[:i]
	if !strings.HasSuffix(rest, ")") {
		a.Flow = flowLabel(a.Flow)
		return a, false, parenError(rest[open:])
	}
	// A name of printable ASCII (nearly every name) is valid UTF-8 and
	// holds no control or format character: one pass over it says so.
	ascii := printableASCII(name)
	if !ascii && !utf8.ValidString(name) {
		a.Flow = flowLabel(a.Flow)
		return a, false, errInvalidUTF8
	}
	a.Metric = rest[:open]
	switch {
	case a.Flow == "":
		return a, false, errEmptyFlow
	case len(a.Flow) > MaxFlowLen:
		a.Flow = flowLabel(a.Flow)
		return a, false, errFlowTooLong
	case !ascii && hasControl(a.Flow):
		return a, false, errControlInFlow
	case !ascii && hasFormat(a.Flow):
		return a, false, errFormatInFlow
	case a.Metric == "":
		return a, false, errEmptyMetric
	case len(a.Metric) > MaxMetricLen:
		return a, false, errMetricTooLong
	case !ascii && hasControl(a.Metric):
		return a, false, errControlInMetric
	case !ascii && hasFormat(a.Metric):
		return a, false, errFormatInMetric
	}
	a.Time, err = parseTime(rest[open+1 : len(rest)-1])
	if err != nil {
		return a, false, err
	}
	return a, true, nil
}

// flowLabel makes the flow of a malformed name fit to be a label: at most
// MaxFlowLen bytes, cut on a rune boundary, and valid UTF-8, as labels must
// be.
func flowLabel(f string) string {
	if len(f) > MaxFlowLen {
		n := MaxFlowLen
		for n > 0 && !utf8.RuneStart(f[n]) {
			n--
		}
		f = f[:n]
	}
	return strings.ToValidUTF8(f, "\uFFFD")
}

// parenError tells a missing ")" from one followed by more text; tail starts
// at the last "(".
func parenError(tail string) error {
	if strings.IndexByte(tail, ')') >= 0 {
		return errTextAfterParen
	}
	return errNoClosingParen
}

// printableASCII reports whether every byte of s is printable ASCII
// (0x20 to 0x7e), eight bytes at a time.
func printableASCII(s string) bool {
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		// A byte below 0x20 borrows into its top bit; a byte above 0x7e
		// has its top bit set once 1 is added (or already).
		if ((w-lsb*0x20)&^w|(w+lsb)|w)&msb != 0 {
			return false
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// hasControl reports whether valid UTF-8 s holds a control character
// (Unicode Cc: ASCII's, DEL, U+0080–U+009F): such a name is never what a
// flow author meant, and it would break the line-oriented sinks (StatsD,
// logs) downstream. An ASCII name costs one pass over its bytes.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			return true
		}
		if c >= 0x80 {
			return hasRune(s[i:], unicode.IsControl)
		}
	}
	return false
}

// hasFormat reports whether valid UTF-8 s holds an invisible format
// character (Unicode Cf, Zl or Zp). All of them are outside ASCII, so an
// ASCII name costs one pass over its bytes.
func hasFormat(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return hasRune(s[i:], isFormat)
		}
	}
	return false
}

func isFormat(r rune) bool { return unicode.In(r, unicode.Cf, unicode.Zl, unicode.Zp) }

func hasRune(s string, f func(rune) bool) bool {
	for _, r := range s {
		if f(r) {
			return true
		}
	}
	return false
}

// parseTime parses an RFC 3339 date-time by hand rather than with
// time.Parse, so that exactly the forms the contract names are accepted,
// each rejection has a reason a flow author can act on, and the hot path
// does not allocate.
func parseTime(s string) (time.Time, error) {
	if t, ok, err := parseUsualTime(s); ok {
		return t, err
	}
	return parseAnyTime(s)
}

// parseUsualTime is parseTime of the two forms flows write,
// YYYY-MM-DDTHH:MM:SS.mmmZ and YYYY-MM-DDTHH:MM:SSZ (a name's time is
// read for every occurrence of every event), with the fields read without
// a loop; ok is false for any other text, which parseAnyTime reads.
func parseUsualTime(s string) (t time.Time, ok bool, err error) {
	nsec := 0
	switch {
	case len(s) == 24 && s[19] == '.' && s[23] == 'Z':
		a, b, c := s[20]-'0', s[21]-'0', s[22]-'0'
		if a > 9 || b > 9 || c > 9 {
			return time.Time{}, false, nil
		}
		nsec = (int(a)*100 + int(b)*10 + int(c)) * 1e6
	case len(s) == 20 && s[19] == 'Z':
	default:
		return time.Time{}, false, nil
	}
	if s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return time.Time{}, false, nil
	}
	y0, y1, y2, y3 := s[0]-'0', s[1]-'0', s[2]-'0', s[3]-'0'
	mo0, mo1, d0, d1 := s[5]-'0', s[6]-'0', s[8]-'0', s[9]-'0'
	h0, h1, mi0, mi1, s0, s1 := s[11]-'0', s[12]-'0', s[14]-'0', s[15]-'0', s[17]-'0', s[18]-'0'
	if y0 > 9 || y1 > 9 || y2 > 9 || y3 > 9 || mo0 > 9 || mo1 > 9 || d0 > 9 || d1 > 9 ||
		h0 > 9 || h1 > 9 || mi0 > 9 || mi1 > 9 || s0 > 9 || s1 > 9 {
		return time.Time{}, false, nil
	}
	t, err = civilTime(int(y0)*1000+int(y1)*100+int(y2)*10+int(y3), int(mo0)*10+int(mo1), int(d0)*10+int(d1),
		int(h0)*10+int(h1), int(mi0)*10+int(mi1), int(s0)*10+int(s1), nsec, 0)
	return t, true, err
}

// parseAnyTime is parseTime of any text.
func parseAnyTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errTimeEmpty
	}
	// YYYY-MM-DDTHH:MM:SS is 19 bytes; the zone needs at least one more.
	if len(s) < 20 {
		return time.Time{}, errTimeLayout
	}
	year, ok1 := Digits(s[0:4])
	month, ok2 := Digits(s[5:7])
	day, ok3 := Digits(s[8:10])
	hour, ok4 := Digits(s[11:13])
	minute, ok5 := Digits(s[14:16])
	sec, ok6 := Digits(s[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) ||
		s[4] != '-' || s[7] != '-' || s[13] != ':' || s[16] != ':' {
		return time.Time{}, errTimeLayout
	}
	switch s[10] {
	case 'T', 't':
	case ' ':
		return time.Time{}, errTimeSpace
	default:
		return time.Time{}, errTimeLayout
	}

	i, nsec := 19, 0
	if s[i] == ',' {
		// ISO 8601 allows a comma here; RFC 3339 does not.
		return time.Time{}, errTimeLayout
	}
	if s[i] == '.' {
		i++
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		n := i - start
		switch {
		case n == 0:
			return time.Time{}, errTimeNoFraction
		case n > 9:
			return time.Time{}, errTimeLongFraction
		}
		for j := start; j < start+9; j++ {
			nsec *= 10
			if j < i {
				nsec += int(s[j] - '0')
			}
		}
	}

	var offset int // seconds east of UTC
	switch zone := s[i:]; {
	case zone == "Z" || zone == "z":
	case len(zone) == 6 && (zone[0] == '+' || zone[0] == '-') && zone[3] == ':':
		oh, okh := Digits(zone[1:3])
		om, okm := Digits(zone[4:6])
		if !okh || !okm {
			return time.Time{}, errTimeZone
		}
		if oh > 23 || om > 59 {
			return time.Time{}, errTimeOffset
		}
		offset = oh*3600 + om*60
		if zone[0] == '-' {
			offset = -offset
		}
	default:
		return time.Time{}, errTimeZone
	}

	return civilTime(year, month, day, hour, minute, sec, nsec, offset)
}

// civilTime returns the time of a date-time's fields, read from its text,
// with offset its zone's seconds east of UTC; an error says which field is
// out of range.
func civilTime(year, month, day, hour, minute, sec, nsec, offset int) (time.Time, error) {
	switch {
	case month < 1 || month > 12:
		return time.Time{}, errTimeMonth
	case day < 1 || day > daysIn(month, year):
		return time.Time{}, errTimeDay
	case hour > 23:
		return time.Time{}, errTimeHour
	case minute > 59:
		return time.Time{}, errTimeMinute
	case sec > 59:
		return time.Time{}, errTimeSecond
	}
	unix := daysSinceEpoch(year, month, day)*86400 + int64(hour*3600+minute*60+sec-offset)
	// Outside these years the time has no RFC 3339 form, so it could not be
	// written back (sinks, the outbox) the way it was read.
	if unix < minUnix || unix >= maxUnix {
		return time.Time{}, errTimeYear
	}
	return time.Unix(unix, int64(nsec)).UTC(), nil
}

// The Unix times of 0000-01-01T00:00:00Z and 10000-01-01T00:00:00Z.
const (
	minUnix = -62167219200
	maxUnix = 253402300800
)

// daysSinceEpoch returns the days from 1970-01-01 to the given date of the
// proleptic Gregorian calendar (Howard Hinnant's days_from_civil). It is
// time.Date without the normalisation and zone lookup this hot path does
// not need.
func daysSinceEpoch(year, month, day int) int64 {
	y := int64(year)
	if month <= 2 {
		y--
	}
	era := y
	if era < 0 {
		era -= 399
	}
	era /= 400
	yoe := y - era*400 // [0, 399]
	m := int64(month)
	if m > 2 {
		m -= 3
	} else {
		m += 9
	}
	doy := (153*m+2)/5 + int64(day) - 1    // [0, 365]
	doe := yoe*365 + yoe/4 - yoe/100 + doy // [0, 146096]
	return era*146097 + doe - 719468
}

// Digits parses s, which must be all ASCII digits: the attribute parser's
// reading of a time's fields, for others that read them too.
func Digits(s string) (int, bool) {
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// ValidDate reports whether year-month-day is a date of the proleptic
// Gregorian calendar, and returns the days from 1970-01-01 to it: the
// calendar attribute times are read by, for others that encode them.
func ValidDate(year, month, day int) (days int64, ok bool) {
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) {
		return 0, false
	}
	return daysSinceEpoch(year, month, day), true
}
