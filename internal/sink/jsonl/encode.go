package jsonl

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/swar"
)

// appendLine appends p's line to b, byte for byte what encoding/json's
// Encoder (HTML escaping off) writes for its Line, newline included: the
// replay of an archive writes hundreds of thousands of lines, and the
// reflection and buffer growth of encoding/json were a tenth of its CPU.
// tagsJSON is the encoded `,"tags":{…}` of the static tags, or empty.
// Anything the fast path does not cover (a string needing escapes, a year
// outside 0–9999) goes through encoding/json itself.
func appendLine(b []byte, st *stamps, p *flowmetrics.Point, tags map[string]string, tagsJSON []byte) ([]byte, error) {
	if !plain(p.Flow) || !plain(p.Metric) || !st.ok(p.Bucket) {
		return appendEncoded(b, Line{Flow: p.Flow, Metric: p.Metric, Timestamp: p.Bucket.UTC(), IntervalSeconds: int64(p.Width / time.Second), Count: p.Count, Tags: tags})
	}
	b = append(b, `{"flow":"`...)
	b = append(b, p.Flow...)
	b = append(b, `","metric":"`...)
	b = append(b, p.Metric...)
	b = append(b, `","timestamp":"`...)
	b = st.append(b, p.Bucket)
	b = append(b, `","interval_seconds":`...)
	b = strconv.AppendInt(b, int64(p.Width/time.Second), 10)
	b = append(b, `,"count":`...)
	b = strconv.AppendInt(b, p.Count, 10)
	b = append(b, tagsJSON...)
	return append(b, "}\n"...), nil
}

// appendPathLine appends p's line to b, byte for byte what encoding/json's
// Encoder (HTML escaping off) writes for NewPathLine(p, tags), newline
// included: a replay closes a path per conversation and writes several
// lines for each. Anything the fast path does not cover (a string needing
// escapes, a year outside 0–9999, seconds that encoding/json writes with
// an exponent or refuses) goes through encoding/json itself.
//
// pl remembers strings found plain: a path's points share their
// conversation's id, and most share their flow and metric strings with
// many others.
func appendPathLine(b []byte, st *stamps, pl *plains, p *flowmetrics.PathPoint, tags map[string]string, tagsJSON []byte) ([]byte, error) {
	f, kind := fieldsOf(p), p.Kind.String()
	if f.timed && !plainSeconds(f.seconds) ||
		!plain(kind) || !pl.plain(f.flow) || !pl.plain(f.metric) || !pl.plain(f.timing) || !pl.plain(f.funnel) ||
		!pl.plain(f.experiment) || !pl.plain(f.variant) || !pl.plain(f.step) || !pl.plain(p.Conversation) || !st.ok(p.Time) {
		return appendEncoded(b, NewPathLine(*p, tags))
	}
	b = append(b, `{"path":"`...)
	b = append(b, kind...)
	b = append(b, '"')
	b = appendField(b, `,"flow":"`, f.flow)
	b = appendField(b, `,"metric":"`, f.metric)
	b = appendField(b, `,"timing":"`, f.timing)
	b = appendField(b, `,"funnel":"`, f.funnel)
	b = appendField(b, `,"experiment":"`, f.experiment)
	b = appendField(b, `,"variant":"`, f.variant)
	b = appendField(b, `,"step":"`, f.step)
	if f.timed {
		b = append(b, `,"seconds":`...)
		b = strconv.AppendFloat(b, f.seconds, 'f', -1, 64)
	}
	b = append(b, `,"timestamp":"`...)
	b = st.append(b, p.Time)
	b = append(b, `","conversation":"`...)
	b = append(b, p.Conversation...)
	b = append(b, '"')
	b = append(b, tagsJSON...)
	return append(b, "}\n"...), nil
}

// stamps writes times as time.RFC3339Nano writes them in UTC
// (encoding/json's form of a time.Time in UTC), keeping the date of the
// day it wrote last: a sink's lines mostly fall on a few days, and working
// out the date is most of what formatting a time costs.
type stamps struct {
	day  int64    // the day of date, in days since 1970-01-01
	date [11]byte // "2006-01-02T"; valid once set
	set  bool
}

// ok reports whether append can write t: its year in UTC is from 0 to
// 9999 (encoding/json refuses others). It sets the day of t as the
// current one.
func (st *stamps) ok(t time.Time) bool {
	day := floorDiv(t.Unix(), 86400)
	if st.set && day == st.day {
		return true
	}
	u := t.UTC()
	if y := u.Year(); y < 0 || y > 9999 {
		return false
	}
	u.AppendFormat(st.date[:0], "2006-01-02T")
	st.day, st.set = day, true
	return true
}

// append appends t as t.UTC().AppendFormat(b, time.RFC3339Nano) does. ok(t)
// must have been true just before.
func (st *stamps) append(b []byte, t time.Time) []byte {
	s := t.Unix() - st.day*86400
	h, m, sec := s/3600, s/60%60, s%60
	b = append(b, st.date[:]...)
	b = append(b, byte('0'+h/10), byte('0'+h%10), ':', byte('0'+m/10), byte('0'+m%10), ':', byte('0'+sec/10), byte('0'+sec%10))
	if ns := t.Nanosecond(); ns != 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, 'Z')
}

// floorDiv is a/b rounded down, b > 0.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b < 0 {
		q--
	}
	return q
}

// appendField appends a string field that encoding/json omits when empty
// (omitempty): its opening (`,"name":"`), its plain value and the closing
// quote.
func appendField(b []byte, open, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, open...)
	b = append(b, v...)
	return append(b, '"')
}

// plainSeconds reports whether encoding/json writes f as strconv's
// shortest 'f' format: a finite number not below 1e-6 nor from 1e21 on in
// magnitude (those it writes with an exponent), or zero.
func plainSeconds(f float64) bool {
	a := math.Abs(f)
	return a == 0 || a >= 1e-6 && a < 1e21
}

// plains remembers strings plain found plain, each in a slot chosen by
// where its bytes are: a string there with the same bytes' address and
// length is the same string (strings do not change, and the slot keeps
// its bytes from being reused), plain without a look at its bytes.
type plains [64]string

// plain is plain(s), remembered.
func (pl *plains) plain(s string) bool {
	if s == "" {
		return true
	}
	at := unsafe.StringData(s)
	slot := &pl[uintptr(unsafe.Pointer(at))>>4%uintptr(len(pl))]
	if unsafe.StringData(*slot) == at && len(*slot) == len(s) {
		return true
	}
	if !plain(s) {
		return false
	}
	*slot = s
	return true
}

// plain reports whether encoding/json writes s between its quotes as it
// is: no quote, backslash or control character, valid UTF-8, and neither
// U+2028 nor U+2029 (with HTML escaping off, <, > and & stay as they are).
func plain(s string) bool {
	// The common case, printable ASCII, eight bytes at a time; the first
	// word with anything else goes to the byte loop below.
	i := 0
	for ; i+8 <= len(s); i += 8 {
		w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		if swar.Special(w) != 0 {
			break
		}
	}
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == '"' || c == '\\' {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			return false
		}
		i += size
	}
	return true
}

// appendEncoded appends v as encoding/json's Encoder writes it, HTML
// escaping off, newline included.
func appendEncoded(b []byte, v any) ([]byte, error) {
	buf := bytes.NewBuffer(b)
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return b, err
	}
	return buf.Bytes(), nil
}

// encodeTags is the `,"tags":{…}` that ends every line of a sink with
// static tags: encoded once, by encoding/json, so keys are sorted and
// escaped as before.
func encodeTags(tags map[string]string) []byte {
	if len(tags) == 0 {
		return nil
	}
	b, err := appendEncoded(nil, tags)
	if err != nil {
		return nil // a map of strings always encodes
	}
	return append([]byte(`,"tags":`), bytes.TrimSuffix(b, []byte("\n"))...)
}
