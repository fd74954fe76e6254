package genesys

import (
	"bytes"
	"io"
	"sync"
)

// DecodeParallel is Decode with the lines of NDJSON input parsed by up to
// workers goroutines at once. fn sees exactly what Decode would show it:
// every record, in input order, with the same Index and Line, each call
// from the calling goroutine once the one before returned. Input in the
// other shapes (one array, values spanning lines) is read as Decode reads
// it, in the calling goroutine.
//
// The input is cut into chunks of whole lines, about chunkSize bytes each,
// and at most 2×workers+2 chunks are held at a time (a line longer than a
// chunk makes its chunk larger, up to MaxRecordSize), so memory stays
// bounded whatever the input. With workers ≤ 1 it is Decode.
func DecodeParallel(r io.Reader, workers int, fn func(Record) error) error {
	return decodeParallel(r, workers, chunkSize, fn)
}

// decodeParallel is DecodeParallel with chunks of about size bytes (tests
// use small ones, to have many).
func decodeParallel(r io.Reader, workers, size int, fn func(Record) error) error {
	d := &decoder{r: r, fn: fn, buf: make([]byte, 64<<10), line: 1, workers: workers, chunk: size}
	return d.run()
}

// chunkSize is the size of the chunks of lines handed to the workers:
// hundreds of records, so that handing one over costs little beside
// parsing it, and few enough bytes that the chunks in flight stay small.
const chunkSize = 256 << 10

// chunk is a run of whole lines (the last one may lack its '\n' at the
// end of input), parsed by a worker into recs; or, when data is nil,
// records made by the reader (a line too large to hold) or the read error
// that ends the input.
type chunk struct {
	data  []byte
	line  int // the line of data's first byte
	lines int // how many '\n' data holds
	buf   *[]byte
	recs  []Record
	err   error
	done  chan struct{} // closed once recs is complete
}

var chunkBufs = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// ndjsonParallel is ndjson with the lines parsed by d.workers goroutines.
// The calling goroutine passes the records to fn in input order; another
// reads and cuts the input.
func (d *decoder) ndjsonParallel() error {
	inFlight := 2*d.workers + 2
	order := make(chan *chunk, inFlight) // the chunks in input order
	work := make(chan *chunk, inFlight)  // the chunks for the workers
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1 + d.workers)
	go func() {
		defer wg.Done()
		defer close(work)
		defer close(order)
		d.cut(order, work, stop)
	}()
	for range d.workers {
		go func() {
			defer wg.Done()
			var p parser
			for c := range work {
				c.recs = parseLines(&p, c.data, c.line, make([]Record, 0, c.lines+1))
				if c.buf != nil {
					chunkBufs.Put(c.buf)
				}
				c.data, c.buf = nil, nil
				close(c.done)
			}
		}()
	}
	var err error
	for c := range order {
		<-c.done
		for _, rec := range c.recs {
			if err = d.emit(rec, rec.Line); err != nil {
				break
			}
		}
		if err == nil {
			err = c.err
		}
		if err != nil {
			break
		}
	}
	close(stop)
	for range order {
		// Drain, so the reader sees stop at its next send.
	}
	wg.Wait()
	return err
}

// cut reads the input from rpos (the start of a line) and sends it, in
// order, as chunks of whole lines, until the end of input, a read error
// (sent as a chunk of its own) or stop.
func (d *decoder) cut(order, work chan<- *chunk, stop <-chan struct{}) {
	send := func(c *chunk, parse bool) bool {
		select {
		case order <- c:
		case <-stop:
			return false
		}
		if !parse {
			close(c.done)
			return true
		}
		select {
		case work <- c:
			return true
		case <-stop:
			return false
		}
	}
	var held *[]byte // the pooled buffer d.buf is, if it is one
	scanned := 0     // unread bytes known to hold no '\n'
	for {
		// Read a chunk's worth, and on until it holds a whole line.
		for d.wpos < len(d.buf) {
			if d.unread() >= d.chunk {
				if bytes.IndexByte(d.buf[d.rpos+scanned:d.wpos], '\n') >= 0 {
					break
				}
				scanned = d.unread()
			}
			if !d.fill() {
				break
			}
		}
		unread := d.buf[d.rpos:d.wpos]
		last := bytes.LastIndexByte(unread, '\n')
		if last < 0 {
			switch {
			case d.ioErr != nil:
				send(&chunk{err: d.ioErr, done: make(chan struct{})}, false)
				return
			case d.eof:
				if len(unread) > 0 {
					send(&chunk{data: unread, line: d.line, done: make(chan struct{})}, true)
				}
				return
			case len(unread) > MaxRecordSize:
				// Too large to be a record: skipped without holding it.
				rec := tooLarge()
				rec.Line = d.line
				if !send(&chunk{recs: []Record{rec}, done: make(chan struct{})}, false) {
					return
				}
				d.skipLine()
				scanned = 0
				continue
			}
			// A line longer than the buffer: read on in a larger one.
			nb := make([]byte, max(d.chunk, 2*len(unread)))
			d.wpos = copy(nb, unread)
			d.buf, d.rpos, held = nb, 0, nil
			continue
		}
		if len(unread) > d.chunk {
			// Input read in one go (the first buffer, read before the
			// input showed itself NDJSON): cut it into chunks.
			if i := bytes.LastIndexByte(unread[:d.chunk], '\n'); i >= 0 {
				last = i
			}
		}
		c := &chunk{data: unread[:last+1], line: d.line, buf: held, done: make(chan struct{})}
		scanned = 0
		c.lines = bytes.Count(c.data, newline)
		d.line += c.lines
		// The rest, from the start of a line, moves to a buffer of its
		// own: the chunk's is the worker's until it has parsed it.
		rest := unread[last+1:]
		held = nil
		if 2*len(rest) <= d.chunk && d.chunk == chunkSize {
			held = chunkBufs.Get().(*[]byte)
			d.buf = *held
		} else {
			d.buf = make([]byte, max(d.chunk, 2*len(rest)))
		}
		d.wpos = copy(d.buf, rest)
		d.rpos = 0
		if !send(c, true) {
			return
		}
	}
}

// skipLine discards the rest of the line at rpos, reading as needed,
// without holding it.
func (d *decoder) skipLine() {
	for {
		if i := bytes.IndexByte(d.buf[d.rpos:d.wpos], '\n'); i >= 0 {
			d.rpos += i + 1
			d.line++
			return
		}
		d.rpos, d.wpos = 0, 0
		if !d.fill() {
			return
		}
	}
}

// parseLines appends to recs the records of data's lines, the first of
// which is line.
func parseLines(p *parser, data []byte, line int, recs []Record) []Record {
	for len(data) > 0 {
		text := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			text, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if rec, ok := lineRecord(p, text, line); ok {
			rec.Line = line
			recs = append(recs, rec)
		}
		line++
	}
	return recs
}
