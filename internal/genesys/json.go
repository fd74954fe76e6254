package genesys

import (
	"encoding/binary"
	"math/bits"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/flowmetrics/flowmetrics/internal/swar"
)

// This file is a small JSON reader made for one job: validate a whole value
// exactly as RFC 8259 (and encoding/json) would, while picking out the few
// fields of an EventBridge event that flowmetrics needs, without building
// anything for the rest. encoding/json into minimal structs scans every
// record twice and allocates per field; this reads it once and allocates
// only what the caller keeps. FuzzDecodeValue checks it against
// encoding/json.

// maxDepth matches encoding/json, so both accept and refuse the same values.
const maxDepth = 10000

// strRef locates a JSON string's contents (without quotes) in parser.data.
type strRef struct {
	start, end int
	flags      uint8
}

const (
	strEscaped  uint8 = 1 << iota // holds a backslash escape
	strNonASCII                   // holds bytes >= 0x80, maybe invalid UTF-8
)

// plain marks the bytes that stand for themselves inside a JSON string.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// parser reads one JSON value from data. Its methods return false on
// failure, having set either incomplete (data ended, more may follow) or
// errMsg and errOff (data is not JSON).
type parser struct {
	data  []byte
	pos   int
	final bool // no input follows data, so running out of it is an error
	depth int

	incomplete bool
	errMsg     string
	errOff     int

	// attrs holds the refs of the attribute names that may be metric
	// names.
	attrs []strRef
	// scratch holds an escaped object key, unescaped for comparison.
	scratch []byte
	// arena is reused to build the strings of each accepted event.
	arena []byte
}

func (p *parser) reset(data []byte, final bool) {
	p.data, p.pos, p.final, p.depth = data, 0, final, 0
	p.incomplete, p.errMsg, p.errOff = false, "", 0
	p.attrs = p.attrs[:0]
}

func (p *parser) fail(off int, msg string) bool {
	if p.errMsg == "" && !p.incomplete {
		p.errMsg, p.errOff = msg, off
	}
	return false
}

// eof reports running out of data: final data is truncated JSON, otherwise
// the caller should read more and try again.
func (p *parser) eof() bool {
	if p.final {
		return p.fail(len(p.data), "unexpected end of input")
	}
	p.incomplete = true
	return false
}

func (p *parser) skipWS() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// peek skips whitespace and returns the next byte; ok is false (with eof
// called) when there is none.
func (p *parser) peek() (byte, bool) {
	p.skipWS()
	if p.pos >= len(p.data) {
		return 0, p.eof()
	}
	return p.data[p.pos], true
}

// describe quotes a byte for an error message the way encoding/json does.
func describe(c byte) string {
	if c == '\'' {
		return `'\''`
	}
	if c == '"' {
		return `'"'`
	}
	s := strconv.Quote(string(rune(c)))
	if c >= utf8.RuneSelf {
		s = strconv.Quote(string([]byte{c}))
	}
	return "'" + s[1:len(s)-1] + "'"
}

func (p *parser) enter() bool {
	p.depth++
	if p.depth > maxDepth {
		return p.fail(p.pos, "exceeded max depth")
	}
	return true
}

// member moves to the next member of an object. Call it with first=true
// just after the '{' and with first=false after each value. It returns the
// member's key, with p.pos at the value, or end=true once '}' is consumed.
func (p *parser) member(first bool) (key strRef, end, ok bool) {
	c, ok := p.peek()
	if !ok {
		return key, false, false
	}
	if c == '}' && first {
		p.pos++
		p.depth--
		return key, true, true
	}
	if !first {
		switch c {
		case '}':
			p.pos++
			p.depth--
			return key, true, true
		case ',':
			p.pos++
			if c, ok = p.peek(); !ok {
				return key, false, false
			}
		default:
			return key, false, p.fail(p.pos, "invalid character "+describe(c)+" after object key:value pair")
		}
	}
	if c != '"' {
		return key, false, p.fail(p.pos, "invalid character "+describe(c)+" looking for beginning of object key string")
	}
	if key, ok = p.scanString(); !ok {
		return key, false, false
	}
	if c, ok = p.peek(); !ok {
		return key, false, false
	}
	if c != ':' {
		return key, false, p.fail(p.pos, "invalid character "+describe(c)+" after object key")
	}
	p.pos++
	return key, false, true
}

// element moves to the next element of an array, like member.
func (p *parser) element(first bool) (end, ok bool) {
	c, ok := p.peek()
	if !ok {
		return false, false
	}
	if c == ']' && first {
		p.pos++
		p.depth--
		return true, true
	}
	if !first {
		switch c {
		case ']':
			p.pos++
			p.depth--
			return true, true
		case ',':
			p.pos++
		default:
			return false, p.fail(p.pos, "invalid character "+describe(c)+" after array element")
		}
	}
	return false, true
}

// keyBytes returns a key's contents, unescaped if need be, for comparison.
func (p *parser) keyBytes(k strRef) []byte {
	if k.flags&strEscaped == 0 {
		return p.data[k.start:k.end]
	}
	p.scratch = appendUnquoted(p.scratch[:0], p.data[k.start:k.end])
	return p.scratch
}

// skipValue validates the value at p.pos and moves past it.
func (p *parser) skipValue() bool {
	c, ok := p.peek()
	if !ok {
		return false
	}
	switch {
	case c == '{':
		if !p.enter() {
			return false
		}
		p.pos++
		for first := true; ; first = false {
			_, end, ok := p.member(first)
			if !ok {
				return false
			}
			if end {
				return true
			}
			if !p.skipValue() {
				return false
			}
		}
	case c == '[':
		if !p.enter() {
			return false
		}
		p.pos++
		for first := true; ; first = false {
			end, ok := p.element(first)
			if !ok {
				return false
			}
			if end {
				return true
			}
			if !p.skipValue() {
				return false
			}
		}
	case c == '"':
		_, ok := p.scanString()
		return ok
	case c == '-' || c >= '0' && c <= '9':
		return p.scanNumber()
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	}
	return p.fail(p.pos, "invalid character "+describe(c)+" looking for beginning of value")
}

// scanString validates the string at p.pos (its opening quote) and moves
// past it.
func (p *parser) scanString() (strRef, bool) {
	data := p.data
	i := p.pos + 1
	var flags uint8
	for {
		// The common case: a run of printable ASCII, eight bytes at a time.
		for i+8 <= len(data) {
			m := swar.Special(binary.LittleEndian.Uint64(data[i:]))
			if m != 0 {
				i += bits.TrailingZeros64(m) / 8
				break
			}
			i += 8
		}
		for i < len(data) && plain[data[i]] {
			i++
		}
		if i >= len(data) {
			return strRef{}, p.eof()
		}
		switch c := data[i]; {
		case c == '"':
			r := strRef{start: p.pos + 1, end: i, flags: flags}
			p.pos = i + 1
			return r, true
		case c == '\\':
			flags |= strEscaped
			if i+1 >= len(data) {
				return strRef{}, p.eof()
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				for j := i + 2; j < i+6; j++ {
					if j >= len(data) {
						return strRef{}, p.eof()
					}
					if !isHex(data[j]) {
						return strRef{}, p.fail(j, "invalid character "+describe(data[j])+" in \\u hexadecimal character escape")
					}
				}
				i += 6
			default:
				return strRef{}, p.fail(i+1, "invalid character "+describe(data[i+1])+" in string escape code")
			}
		case c < 0x20:
			return strRef{}, p.fail(i, "invalid character "+describe(c)+" in string literal")
		default:
			flags |= strNonASCII
			i++
		}
	}
}

// lsb and msb set the lowest and the top bit of each of a word's eight
// bytes (printableASCII tests eight bytes of a name at a time).
const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// scanNumber validates the number at p.pos and moves past it.
func (p *parser) scanNumber() bool {
	data := p.data
	i := p.pos
	if data[i] == '-' {
		i++
		if i >= len(data) {
			return p.eof()
		}
	}
	switch c := data[i]; {
	case c == '0':
		i++
	case c >= '1' && c <= '9':
		i++
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	default:
		return p.fail(i, "invalid character "+describe(c)+" in numeric literal")
	}
	if i < len(data) && data[i] == '.' {
		i++
		if i >= len(data) {
			return p.eof()
		}
		if !isDigit(data[i]) {
			return p.fail(i, "invalid character "+describe(data[i])+" after decimal point in numeric literal")
		}
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if i >= len(data) {
			return p.eof()
		}
		if !isDigit(data[i]) {
			return p.fail(i, "invalid character "+describe(data[i])+" in exponent of numeric literal")
		}
		for i < len(data) && isDigit(data[i]) {
			i++
		}
	}
	p.pos = i
	return true
}

func (p *parser) literal(lit string) bool {
	for j := 0; j < len(lit); j++ {
		i := p.pos + j
		if i >= len(p.data) {
			return p.eof()
		}
		if p.data[i] != lit[j] {
			return p.fail(i, "invalid character "+describe(p.data[i])+" in literal "+lit+" (expecting "+describe(lit[j])+")")
		}
	}
	p.pos += len(lit)
	return true
}

// appendStr appends the contents of the string r refers to.
func (p *parser) appendStr(dst []byte, r strRef) []byte {
	raw := p.data[r.start:r.end]
	if r.flags == 0 || r.flags == strNonASCII && utf8.Valid(raw) {
		return append(dst, raw...)
	}
	return appendUnquoted(dst, raw)
}

// unquoted returns the contents of the string r refers to, valid only until
// the parser is used again.
func (p *parser) unquoted(r strRef) []byte {
	raw := p.data[r.start:r.end]
	if r.flags == 0 || r.flags == strNonASCII && utf8.Valid(raw) {
		return raw
	}
	p.scratch = appendUnquoted(p.scratch[:0], raw)
	return p.scratch
}

// str returns the contents of the string r refers to as a new string.
func (p *parser) str(r strRef) string {
	raw := p.data[r.start:r.end]
	if r.flags == 0 || r.flags == strNonASCII && utf8.Valid(raw) {
		return string(raw)
	}
	return string(appendUnquoted(nil, raw))
}

// appendKey appends the contents of the attribute name r refers to without
// changing its bytes: unlike appendStr, invalid UTF-8 is kept as it is and a
// lone surrogate escape becomes its WTF-8 bytes, so two different names never
// become one, and a name that is not valid Unicode stays invalid UTF-8, which
// ParseAttribute then reports as malformed instead of counting it.
func (p *parser) appendKey(dst []byte, r strRef) []byte {
	raw := p.data[r.start:r.end]
	if r.flags&strEscaped == 0 {
		return append(dst, raw...)
	}
	return unquote(dst, raw, true)
}

// appendUnquoted appends the unescaped contents of a valid JSON string,
// replacing invalid UTF-8 and lone surrogates with U+FFFD as encoding/json
// does, so that ids and values are always valid UTF-8 downstream.
func appendUnquoted(dst, s []byte) []byte { return unquote(dst, s, false) }

// unquote appends the unescaped contents of a valid JSON string. With keep,
// invalid UTF-8 is copied as it is and a lone surrogate escape is written as
// the three bytes UTF-8 would give it if it allowed surrogates (WTF-8);
// otherwise both become U+FFFD.
func unquote(dst, s []byte, keep bool) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\':
			switch s[i+1] {
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				r := hex4(s[i+2 : i+6])
				i += 6
				if utf16.IsSurrogate(r) {
					r2 := rune(-1)
					if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
						r2 = hex4(s[i+2 : i+6])
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						i += 6
						r = dec
					} else if keep {
						dst = append(dst, 0xe0|byte(r>>12), 0x80|byte(r>>6)&0x3f, 0x80|byte(r)&0x3f)
						continue
					} else {
						r = utf8.RuneError
					}
				}
				dst = utf8.AppendRune(dst, r)
				continue
			default: // '"', '\\', '/'
				dst = append(dst, s[i+1])
			}
			i += 2
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			i++
		default:
			r, size := utf8.DecodeRune(s[i:])
			if r == utf8.RuneError && size == 1 && !keep {
				dst = utf8.AppendRune(dst, utf8.RuneError)
			} else {
				dst = append(dst, s[i:i+size]...)
			}
			i += size
		}
	}
	return dst
}

func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}
