package genesys

import (
	"bytes"
	"fmt"
	"io"
)

// Decode reads records from r and calls fn for each, in order. The input is
// one of:
//
//   - one JSON array, when the whole input is one: each element is a
//     record. An array that ends on its first line is one only if nothing
//     but whitespace follows it; otherwise that line is the first line of
//     NDJSON, one record rejected as an array, so a stray "[1,2,3]" line
//     never takes the events after it down with it. An array that goes on
//     past its first line is read element by element without holding the
//     whole of it (an archive may be gigabytes); a syntax error in it is
//     handled as in a multi-line value, below;
//   - newline-delimited JSON, recognised by a first record that fits on its
//     line: each non-blank line is then one record, decoded on its own, so
//     a bad line is rejected alone and never affects the others;
//   - otherwise a stream of JSON values that may span lines, as
//     pretty-printed (one value, or several one after another as jq prints
//     them).
//
// A record that is not JSON or not a usable event is reported as Rejected
// and decoding goes on. A syntax error that leaves no way to tell where the
// next record starts (inside an array, or inside a multi-line value) is
// reported as one Rejected record for the broken part, and Decode stops and
// returns nil. One exception keeps NDJSON robust when its first line is the
// broken one: if the line where the error shows (when it starts there) or
// else the next non-blank line starts with '{' and holds a whole JSON value,
// the lines before it are rejected as one record and decoding goes on line
// by line from there.
//
// A leading UTF-8 byte order mark is ignored. Records larger than
// MaxRecordSize are rejected with ErrTooLarge. Syntax errors give the line
// and column (in bytes, both from 1) of the offending byte.
//
// Decode returns an error only when reading r fails or fn returns an error;
// either stops it.
func Decode(r io.Reader, fn func(Record) error) error {
	d := &decoder{r: r, fn: fn, buf: make([]byte, 64<<10), line: 1}
	return d.run()
}

// DecodeBytes is Decode of input already in memory (a request body): it
// parses data where it lies, with no read buffer and no copy of it, and
// never writes to it. The records passed to fn hold copies of what they
// keep, so data may be reused once DecodeBytes returns. It returns an
// error only when fn does.
func DecodeBytes(data []byte, fn func(Record) error) error {
	// All of the input is read: fill never reads, so it never moves or
	// grows buf.
	d := &decoder{fn: fn, buf: data, wpos: len(data), eof: true, line: 1}
	return d.run()
}

type decoder struct {
	r  io.Reader
	fn func(Record) error

	// buf[rpos:wpos] is the input read and not yet consumed.
	buf        []byte
	rpos, wpos int
	eof        bool
	ioErr      error
	// line and col (0-based, in bytes) locate buf[rpos] in the input.
	line, col int

	index    int
	tooLarge bool
	p        parser

	// workers is how many goroutines parse NDJSON lines, in chunks of
	// about chunk bytes (DecodeParallel).
	workers, chunk int
}

var newline = []byte{'\n'}

// fill reads more input, keeping the unread part. It returns false at the
// end of input and on an I/O error (d.ioErr).
func (d *decoder) fill() bool {
	if d.eof || d.ioErr != nil {
		return false
	}
	if d.rpos > 0 {
		d.wpos = copy(d.buf, d.buf[d.rpos:d.wpos])
		d.rpos = 0
	}
	if d.wpos == len(d.buf) {
		nb := make([]byte, 2*len(d.buf))
		copy(nb, d.buf[:d.wpos])
		d.buf = nb
	}
	for range 100 {
		n, err := d.r.Read(d.buf[d.wpos:])
		d.wpos += n
		switch {
		case err == io.EOF:
			d.eof = true
			return n > 0
		case err != nil:
			d.ioErr = fmt.Errorf("read: %w", err)
			return n > 0
		case n > 0:
			return true
		}
	}
	d.ioErr = fmt.Errorf("read: %w", io.ErrNoProgress)
	return false
}

// unread returns the number of bytes read and not consumed.
func (d *decoder) unread() int { return d.wpos - d.rpos }

// consume moves past n unread bytes, keeping line and col up to date.
func (d *decoder) consume(n int) {
	seg := d.buf[d.rpos : d.rpos+n]
	if nl := bytes.LastIndexByte(seg, '\n'); nl >= 0 {
		d.line += bytes.Count(seg, newline)
		d.col = n - nl - 1
	} else {
		d.col += n
	}
	d.rpos += n
}

// position returns the 1-based line and column of the unread byte at off.
func (d *decoder) position(off int) (line, col int) {
	seg := d.buf[d.rpos : d.rpos+off]
	if nl := bytes.LastIndexByte(seg, '\n'); nl >= 0 {
		return d.line + bytes.Count(seg, newline), off - nl
	}
	return d.line, d.col + off + 1
}

// skipSpace consumes whitespace, blank lines included. It returns false at
// the end of input or on an I/O error.
func (d *decoder) skipSpace() bool {
	for {
		i := d.rpos
		for i < d.wpos && isSpace(d.buf[i]) {
			i++
		}
		d.consume(i - d.rpos)
		if d.rpos < d.wpos {
			return true
		}
		if !d.fill() {
			return false
		}
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func blank(b []byte) bool {
	for _, c := range b {
		if !isSpace(c) {
			return false
		}
	}
	return true
}

// lineEnd returns the offset (from rpos) of the first '\n' at or after off,
// reading as needed, or the end of input. ok is false on an I/O error or
// when the line is longer than MaxRecordSize.
func (d *decoder) lineEnd(off int) (end int, ok bool) {
	for {
		if i := bytes.IndexByte(d.buf[d.rpos+off:d.wpos], '\n'); i >= 0 {
			return off + i, true
		}
		off = d.unread()
		if off > MaxRecordSize {
			return 0, false
		}
		if !d.fill() {
			return d.unread(), d.ioErr == nil
		}
	}
}

func (d *decoder) emit(rec Record, line int) error {
	rec.Index = d.index
	rec.Line = line
	d.index++
	return d.fn(rec)
}

// syntaxRecord makes the record of a syntax error at unread offset off.
func (d *decoder) syntaxRecord(msg string, off int) Record {
	line, col := d.position(off)
	return reject(fmt.Errorf("%w: %s (line %d, column %d)", ErrNotJSON, msg, line, col))
}

// stop reports the rest of the input, from rpos, as one broken record.
func (d *decoder) stop(msg string, off int) error {
	return d.emit(d.syntaxRecord(msg, off), d.line)
}

func (d *decoder) run() error {
	for d.unread() < 3 && d.fill() {
	}
	if d.ioErr != nil {
		return d.ioErr
	}
	if bytes.HasPrefix(d.buf[d.rpos:d.wpos], []byte("\xef\xbb\xbf")) {
		d.consume(3)
	}
	if !d.skipSpace() {
		return d.ioErr
	}
	if d.buf[d.rpos] == '[' {
		return d.arrayOrLines()
	}
	return d.stream()
}

// arrayOrLines reads input that starts with '[' as one array or as NDJSON
// (see Decode).
func (d *decoder) arrayOrLines() error {
	eol, ok := d.lineEnd(0)
	if !ok {
		if d.ioErr != nil {
			return d.ioErr
		}
		// A first line larger than MaxRecordSize: no NDJSON record can
		// be that large, so it can only be one array.
		return d.array()
	}
	line := d.buf[d.rpos : d.rpos+eol]
	var q parser
	q.reset(line, true)
	switch {
	case !q.skipValue() && q.errOff >= len(line):
		// The array goes on past its first line.
		return d.array()
	case q.errMsg != "" || !blank(line[q.pos:]):
		// Broken, or more after it on the line: not one array.
		return d.ndjson()
	}
	only, err := d.blankFrom(eol)
	if err != nil {
		return err
	}
	if only {
		return d.array()
	}
	return d.ndjson()
}

// blankFrom reports whether nothing but whitespace follows the unread
// offset off, reading as needed. It holds at most 2×MaxRecordSize unread
// bytes (the first line and the whitespace after it) and reports false
// beyond that, so that no input can make it hold more.
func (d *decoder) blankFrom(off int) (bool, error) {
	for {
		rest := d.buf[d.rpos+off : d.wpos]
		for _, c := range rest {
			if !isSpace(c) {
				return false, nil
			}
		}
		off = d.unread()
		if off > 2*MaxRecordSize {
			return false, nil
		}
		if !d.fill() {
			return d.ioErr == nil, d.ioErr
		}
	}
}

// parseValue parses the value at rpos, reading more input as needed.
// When ok is false, d.ioErr, d.tooLarge or d.p's error says why.
func (d *decoder) parseValue() (rec Record, ok bool) {
	d.tooLarge = false
	for {
		d.p.reset(d.buf[d.rpos:d.wpos], d.eof)
		rec, ok = d.p.value()
		// However the input was read, a record found to be larger than
		// the limit is rejected for that alone, so chunking never changes
		// the outcome.
		if ok && d.p.pos > MaxRecordSize || !ok && !d.p.incomplete && d.p.errOff > MaxRecordSize {
			d.tooLarge = true
			return rec, false
		}
		if ok || !d.p.incomplete {
			return rec, ok
		}
		// Read until the unread input has doubled before parsing again,
		// so a large value read in small chunks costs linear time.
		n := d.unread()
		if n > MaxRecordSize {
			d.tooLarge = true
			return rec, false
		}
		for d.unread() < 2*n && d.fill() {
		}
		if d.ioErr != nil {
			return rec, false
		}
	}
}

// stream reads values that may span lines, until the first record shows
// the input is NDJSON.
func (d *decoder) stream() error {
	for first := true; ; first = false {
		if !d.skipSpace() {
			return d.ioErr
		}
		line := d.line
		rec, ok := d.parseValue()
		switch {
		case d.ioErr != nil:
			return d.ioErr
		case d.tooLarge:
			return d.tooLargeRecord()
		case !ok:
			return d.resync(false)
		}
		end := d.p.pos
		if first && bytes.IndexByte(d.buf[d.rpos:d.rpos+end], '\n') < 0 {
			eol, ok := d.lineEnd(end)
			if !ok && d.ioErr != nil {
				return d.ioErr
			}
			if ok && blank(d.buf[d.rpos+end:d.rpos+eol]) {
				if err := d.emit(rec, line); err != nil {
					return err
				}
				d.consume(min(eol+1, d.unread()))
				return d.ndjson()
			}
		}
		if err := d.emit(rec, line); err != nil {
			return err
		}
		d.consume(end)
	}
}

// tooLargeRecord rejects the record at rpos (with more than MaxRecordSize
// bytes unread). One whose first line alone is too large is skipped like a
// bad NDJSON line; in a multi-line value there is no telling where the next
// record starts.
func (d *decoder) tooLargeRecord() error {
	rec := tooLarge()
	if bytes.IndexByte(d.buf[d.rpos:d.rpos+MaxRecordSize], '\n') >= 0 {
		return d.emit(rec, d.line)
	}
	if err := d.skipLongLine(rec); err != nil {
		return err
	}
	return d.ndjson()
}

func tooLarge() Record {
	return reject(fmt.Errorf("%w: larger than %d bytes", ErrTooLarge, MaxRecordSize))
}

// skipLongLine reports rec for the line at rpos and discards the line
// without keeping it in memory.
func (d *decoder) skipLongLine(rec Record) error {
	if err := d.emit(rec, d.line); err != nil {
		return err
	}
	for {
		if i := bytes.IndexByte(d.buf[d.rpos:d.wpos], '\n'); i >= 0 {
			d.rpos += i + 1
			d.line++
			d.col = 0
			return nil
		}
		d.rpos = d.wpos
		if !d.fill() {
			return d.ioErr
		}
	}
}

// resync handles a syntax error in a stream value or an array (see
// Decode). afterElement says the error is at rpos, where a comma or ']'
// should have followed an array element, or the input should have ended
// after the array.
func (d *decoder) resync(afterElement bool) error {
	msg, off := d.p.errMsg, d.p.errOff
	rec := d.syntaxRecord(msg, off)
	line := d.line

	// Where the next record would start: the error's line, when the error
	// is the first thing on it, or else the line after it.
	cand := -1
	before := d.buf[d.rpos : d.rpos+off]
	if nl := bytes.LastIndexByte(before, '\n'); nl >= 0 && blank(before[nl+1:]) {
		cand = nl + 1
	} else if afterElement && nl < 0 && d.col == 0 && blank(before) {
		// An array element ended, and the line after it starts with
		// what is not a comma: it may be the next record.
		cand = 0
	} else if eol, ok := d.lineEnd(off); ok && eol < d.unread() {
		cand = eol + 1
	}
	for cand >= 0 {
		eol, ok := d.lineEnd(cand)
		if !ok {
			cand = -1
			break
		}
		text := d.buf[d.rpos+cand : d.rpos+eol]
		if !blank(text) {
			// Only an object flush with the margin looks like the next
			// NDJSON record: inside a pretty-printed value, lines are
			// indented, and a line holding a whole scalar is common.
			if text[0] != '{' {
				cand = -1
				break
			}
			var q parser
			q.reset(text, true)
			if !q.skipValue() {
				cand = -1
				break
			}
			q.skipWS()
			if q.pos < len(text) {
				cand = -1
			}
			break
		}
		if eol >= d.unread() {
			cand = -1
			break
		}
		cand = eol + 1
	}
	if d.ioErr != nil {
		return d.ioErr
	}
	if err := d.emit(rec, line); err != nil || cand < 0 {
		return err
	}
	d.consume(cand)
	return d.ndjson()
}

// ndjson reads the rest of the input one line at a time, from the start of
// a line.
func (d *decoder) ndjson() error {
	if d.workers > 1 && d.r != nil {
		return d.ndjsonParallel()
	}
	scanned := 0 // unread bytes known to hold no '\n'
	for {
		i := bytes.IndexByte(d.buf[d.rpos+scanned:d.wpos], '\n')
		if i < 0 {
			scanned = d.unread()
			if scanned > MaxRecordSize {
				if err := d.skipLongLine(tooLarge()); err != nil {
					return err
				}
				scanned = 0
				continue
			}
			if d.fill() {
				continue
			}
			if d.ioErr != nil {
				return d.ioErr
			}
			// The last line has no newline.
			if err := d.ndjsonLine(d.buf[d.rpos:d.wpos]); err != nil {
				return err
			}
			d.rpos = d.wpos
			return nil
		}
		n := scanned + i
		if err := d.ndjsonLine(d.buf[d.rpos : d.rpos+n]); err != nil {
			return err
		}
		d.rpos += n + 1
		d.line++
		scanned = 0
	}
}

// ndjsonLine decodes one NDJSON line, which starts at column 1 of d.line.
func (d *decoder) ndjsonLine(text []byte) error {
	rec, ok := lineRecord(&d.p, text, d.line)
	if !ok {
		return nil
	}
	return d.emit(rec, d.line)
}

// lineRecord decodes NDJSON line number line with p; ok is false when the
// line is blank, and holds no record.
func lineRecord(p *parser, text []byte, line int) (rec Record, ok bool) {
	if len(text) > MaxRecordSize {
		return tooLarge(), true
	}
	if blank(text) {
		return Record{}, false
	}
	p.reset(text, true)
	rec, ok = p.value()
	if ok {
		p.skipWS()
		if p.pos < len(text) {
			ok = p.fail(p.pos, "invalid character "+describe(text[p.pos])+" after top-level value")
		}
	}
	if !ok {
		rec = reject(fmt.Errorf("%w: %s (line %d, column %d)", ErrNotJSON, p.errMsg, line, p.errOff+1))
	}
	return rec, true
}

// array reads the elements of a JSON array as records.
func (d *decoder) array() error {
	d.consume(1) // '['
	if !d.skipSpace() {
		return d.endOfArray()
	}
	if d.buf[d.rpos] == ']' {
		d.consume(1)
		return d.afterArray()
	}
	for {
		line := d.line
		rec, ok := d.parseValue()
		switch {
		case d.ioErr != nil:
			return d.ioErr
		case d.tooLarge:
			return d.emit(tooLarge(), line)
		case !ok:
			return d.resync(false)
		}
		if err := d.emit(rec, line); err != nil {
			return err
		}
		d.consume(d.p.pos)
		if !d.skipSpace() {
			return d.endOfArray()
		}
		switch c := d.buf[d.rpos]; c {
		case ',':
			d.consume(1)
			if !d.skipSpace() {
				return d.endOfArray()
			}
		case ']':
			d.consume(1)
			return d.afterArray()
		default:
			d.p.errMsg, d.p.errOff = "invalid character "+describe(c)+" after array element", 0
			return d.resync(true)
		}
	}
}

func (d *decoder) endOfArray() error {
	if d.ioErr != nil {
		return d.ioErr
	}
	return d.stop("unexpected end of input", 0)
}

// afterArray checks that nothing but whitespace follows the array. What
// follows a multi-line array is rejected as one record, unless it starts a
// line with a whole JSON object: then it is read as NDJSON from there, so
// events appended after an array are not lost.
func (d *decoder) afterArray() error {
	if !d.skipSpace() {
		return d.ioErr
	}
	d.p.errMsg, d.p.errOff = "invalid character "+describe(d.buf[d.rpos])+" after top-level value", 0
	return d.resync(true)
}
