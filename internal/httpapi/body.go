package httpapi

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// Media types POST /v1/events accepts (with any parameters, such as
// charset). EventBridge API destinations send application/json unless the
// connection sets another type. A type outside this list gets 415: a web
// page can only post text/plain, form types or no type at all without a
// CORS preflight, which this server never grants, so a browser cannot be
// made to post events cross-site.
var bodyTypes = map[string]bool{
	"application/json":        true,
	"application/x-ndjson":    true,
	"application/ndjson":      true,
	"application/jsonl":       true,
	"application/x-jsonlines": true,
	"application/jsonlines":   true,
}

// acceptedTypes lists bodyTypes for messages, in a fixed order.
const acceptedTypes = "application/json (or any +json type), application/x-ndjson, application/ndjson, application/jsonl, application/x-jsonlines, application/jsonlines"

// checkType reports why a Content-Type is refused, or "" when accepted.
func checkType(ct string) string {
	if ct == "" {
		return "Content-Type missing: want " + acceptedTypes
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return fmt.Sprintf("Content-Type %q: %v", ct, err)
	}
	// RFC 6839: a +json type (application/cloudevents+json) is JSON.
	if bodyTypes[mt] || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json") {
		return ""
	}
	return fmt.Sprintf("Content-Type %q: want %s", mt, acceptedTypes)
}

// bodyError is a request body refused with an HTTP status.
type bodyError struct {
	status int
	reason string // input_limits_total reason, if a bound was hit
	msg    string
}

func (e *bodyError) Error() string { return e.msg }

// readBody reads the request body, decompressing gzip, and bounds both the
// bytes on the wire and the bytes once decompressed by limit.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	tooLarge := func(what, reason string) error {
		return &bodyError{http.StatusRequestEntityTooLarge, reason, fmt.Sprintf("%s larger than %d bytes", what, limit)}
	}
	enc := r.Header.Get("Content-Encoding")
	gzipped := isGzipEncoding(enc)
	switch strings.ToLower(strings.TrimSpace(enc)) {
	case "", "identity", "gzip", "x-gzip":
	default:
		return nil, &bodyError{http.StatusUnsupportedMediaType, "", fmt.Sprintf("Content-Encoding %q: want gzip or none", enc)}
	}
	if r.ContentLength > limit {
		return nil, tooLarge("body", "body_too_large")
	}
	var body io.Reader = http.MaxBytesReader(w, r.Body, limit)
	readErr := func(err error) error {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return tooLarge("body", "body_too_large")
		}
		return &bodyError{http.StatusBadRequest, "", "reading body: " + err.Error()}
	}
	if gzipped {
		zr, err := gzip.NewReader(body)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, &bodyError{http.StatusBadRequest, "", "reading body: empty gzip stream"}
			}
			var mb *http.MaxBytesError
			if errors.As(err, &mb) {
				return nil, readErr(err)
			}
			return nil, &bodyError{http.StatusBadRequest, "", "reading body: gzip: " + err.Error()}
		}
		defer zr.Close()
		// Read one byte past the limit to tell "exactly the limit" from
		// more, without ever holding more than that: a zip bomb of a few
		// KiB that inflates to gigabytes costs limit+1 bytes.
		b, err := io.ReadAll(io.LimitReader(zr, limit+1))
		switch {
		case err != nil:
			var mb *http.MaxBytesError
			if errors.As(err, &mb) {
				return nil, readErr(err)
			}
			return nil, &bodyError{http.StatusBadRequest, "", "reading body: gzip: " + err.Error()}
		case int64(len(b)) > limit:
			return nil, tooLarge("decompressed body", "decompressed_too_large")
		}
		return b, nil
	}
	if r.ContentLength > 0 {
		// The declared length, read into a buffer of that size: no
		// growing and copying, so the body costs what its reservation
		// says (inflight). A body shorter than declared fails the read.
		b := bodyBuffer(r.ContentLength)
		if _, err := io.ReadFull(body, b); err != nil {
			releaseBody(b)
			return nil, readErr(err)
		}
		return b, nil
	}
	b, err := io.ReadAll(body)
	if err != nil {
		return nil, readErr(err)
	}
	return b, nil
}

// maxPooledBody is the largest body buffer kept for reuse: EventBridge
// posts bodies of up to a few hundred KiB, and a buffer kept is memory held
// between requests.
const maxPooledBody = 1 << 20

// bodies are body buffers of up to maxPooledBody bytes, for reuse: a
// request at a time a fresh buffer of the body's size was a fifth of the
// bytes serve allocated, each one zeroed before being read into. The pool
// holds no more buffers than requests were served at once (their bytes
// bounded by MaxBytesInFlight), and the garbage collector empties it when
// they are not used.
var bodies sync.Pool

// bodyBuffer returns a buffer of n bytes, whatever they hold.
func bodyBuffer(n int64) []byte {
	if n <= maxPooledBody {
		if p, ok := bodies.Get().(*[]byte); ok && int64(cap(*p)) >= n {
			return (*p)[:n]
		}
		// A pooled buffer too small is dropped: the pool's buffers grow
		// to the size of the bodies posted.
		return make([]byte, n, max(n, 64<<10))
	}
	return make([]byte, n)
}

// releaseBody hands a body's buffer back for reuse once nothing refers to
// it any more (the records decoded from it are copies).
func releaseBody(b []byte) {
	if c := cap(b); c > 0 && c <= maxPooledBody {
		b = b[:0]
		bodies.Put(&b)
	}
}

// isGzipEncoding reports whether a Content-Encoding names gzip.
func isGzipEncoding(enc string) bool {
	switch strings.ToLower(strings.TrimSpace(enc)) {
	case "gzip", "x-gzip":
		return true
	}
	return false
}

// isGzip reports whether b starts like a gzip stream, to explain a 400 for
// a compressed body sent without Content-Encoding.
func isGzip(b []byte) bool { return bytes.HasPrefix(b, []byte{0x1f, 0x8b}) }

// records are the buffers of decoded records handed to the pipeline, a
// chunk (ingestChunk) at a time, for reuse instead of a fresh one grown by
// doubling for each request. One is held by each request being decoded
// (at most maxDecoding), and the garbage collector empties the pool when
// they are not used.
var records = sync.Pool{New: func() any {
	b := make([]genesys.Record, 0, ingestChunk)
	return &b
}}

func recordsBuffer() []genesys.Record { return (*records.Get().(*[]genesys.Record))[:0] }

// releaseRecords hands a buffer back once the pipeline is done with its
// records, cleared so that it keeps no decoded event alive.
func releaseRecords(b []genesys.Record) {
	b = b[:cap(b)]
	clear(b)
	b = b[:0]
	records.Put(&b)
}
