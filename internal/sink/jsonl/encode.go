package jsonl

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/flowmetrics/flowmetrics"
)

// appendLine appends p's line to b, byte for byte what encoding/json's
// Encoder (HTML escaping off) writes for its Line, newline included: the
// replay of an archive writes hundreds of thousands of lines, and the
// reflection and buffer growth of encoding/json were a tenth of its CPU.
// tagsJSON is the encoded `,"tags":{…}` of the static tags, or empty.
// Anything the fast path does not cover (a string needing escapes, a year
// outside 0–9999) goes through encoding/json itself.
func appendLine(b []byte, p flowmetrics.Point, tags map[string]string, tagsJSON []byte) ([]byte, error) {
	ts := p.Bucket.UTC()
	if y := ts.Year(); y < 0 || y > 9999 || !plain(p.Flow) || !plain(p.Metric) {
		return appendEncoded(b, Line{Flow: p.Flow, Metric: p.Metric, Timestamp: ts, IntervalSeconds: int64(p.Width / time.Second), Count: p.Count, Tags: tags})
	}
	b = append(b, `{"flow":"`...)
	b = append(b, p.Flow...)
	b = append(b, `","metric":"`...)
	b = append(b, p.Metric...)
	b = append(b, `","timestamp":"`...)
	b = ts.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","interval_seconds":`...)
	b = strconv.AppendInt(b, int64(p.Width/time.Second), 10)
	b = append(b, `,"count":`...)
	b = strconv.AppendInt(b, p.Count, 10)
	b = append(b, tagsJSON...)
	return append(b, "}\n"...), nil
}

// plain reports whether encoding/json writes s between its quotes as it
// is: no quote, backslash or control character, valid UTF-8, and neither
// U+2028 nor U+2029 (with HTML escaping off, <, > and & stay as they are).
func plain(s string) bool {
	for i := 0; i < len(s); {
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
