package datadog

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeIntake is a stand-in for Datadog's POST /api/v2/series on 127.0.0.1
// that enforces the documented contract: the DD-API-KEY header, JSON with
// Content-Encoding gzip, 512000 bytes compressed and less than 5242880
// uncompressed (413 beyond), the MetricPayload shape (unknown fields are a
// 400), points within [now-1h, now+10m], and 202 {"errors":[]} on success.
// Like Datadog, it keeps one value per series and second: the last written.
type fakeIntake struct {
	t               *testing.T
	srv             *httptest.Server
	key             string
	now             func() time.Time
	maxCompressed   int
	maxUncompressed int

	mu sync.Mutex
	// script gives the responses of the next requests that pass the
	// contract checks; when it is empty, requests are accepted.
	script []scripted
	// reject, if set, answers 400 to payloads holding a series it matches.
	reject func(in seriesIn) bool
	// accepted, if set, is called (with the fake locked) after a payload's
	// points are stored and before the 202 is written.
	accepted func(n int)

	requests    int
	statuses    []int
	bodies      [][]byte               // uncompressed bodies of accepted payloads
	store       map[pointKey]float64   // what Datadog would hold
	dist        map[pointKey][]float64 // distribution values Datadog would hold, every one
	writes      map[pointKey]int       // accepted writes per series and second
	violations  []string               // contract breaches by the sink
	lowered     []string               // writes that replaced a held count by a smaller one
	outOfWindow int
}

type scripted struct {
	status int
	header http.Header
}

type pointKey struct {
	metric string
	tags   string // sorted, comma-joined
	ts     int64
}

type seriesIn struct {
	Metric   string    `json:"metric"`
	Type     *int      `json:"type"`
	Interval *int64    `json:"interval"`
	Points   []pointIn `json:"points"`
	Tags     []string  `json:"tags"`
	// Fields of MetricSeries the sink does not use; declared so that
	// DisallowUnknownFields only catches fields Datadog does not know.
	Resources      []json.RawMessage `json:"resources"`
	SourceTypeName *string           `json:"source_type_name"`
	Unit           *string           `json:"unit"`
	Metadata       json.RawMessage   `json:"metadata"`
}

type pointIn struct {
	Timestamp *int64   `json:"timestamp"`
	Value     *float64 `json:"value"`
}

var (
	metricNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.]{0,199}$`)
	tagRE        = regexp.MustCompile(`^\p{Ll}[\p{Ll}\p{Lo}\p{Nd}_\-:./]*$`)
)

func newFakeIntake(t *testing.T, key string, now func() time.Time) *fakeIntake {
	f := &fakeIntake{
		t: t, key: key, now: now,
		maxCompressed: MaxPayloadBytes, maxUncompressed: MaxUncompressedBytes,
		store: map[pointKey]float64{}, writes: map[pointKey]int{}, dist: map[pointKey][]float64{},
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeIntake) respond(w http.ResponseWriter, status int, h http.Header, msg string) {
	f.statuses = append(f.statuses, status)
	for k, v := range h {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if msg == "" {
		fmt.Fprint(w, `{"errors":[]}`)
		return
	}
	json.NewEncoder(w).Encode(map[string][]string{"errors": {msg}})
}

func (f *fakeIntake) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	if r.Method == http.MethodPost && r.URL.Path == distributionPath {
		f.serveDist(w, r)
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/api/v2/series" {
		f.respond(w, http.StatusNotFound, nil, "not found")
		return
	}
	raw, ok := f.readBody(w, r, "gzip")
	if !ok {
		return
	}
	var payload struct {
		Series []seriesIn `json:"series"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&payload); err != nil || len(payload.Series) == 0 {
		f.violations = append(f.violations, fmt.Sprintf("payload: %v (%d series)", err, len(payload.Series)))
		f.respond(w, http.StatusBadRequest, nil, "bad payload")
		return
	}
	for _, s := range payload.Series {
		if !metricNameRE.MatchString(s.Metric) {
			f.violations = append(f.violations, "metric name "+s.Metric)
		}
		if s.Type == nil || *s.Type != 1 {
			f.violations = append(f.violations, "type is not 1 (count) for "+s.Metric)
		}
		if s.Interval == nil || *s.Interval < 1 {
			f.violations = append(f.violations, "interval missing for "+s.Metric)
		}
		if len(s.Points) == 0 {
			f.violations = append(f.violations, "no points for "+s.Metric)
		}
		for _, tg := range s.Tags {
			if !tagRE.MatchString(tg) || len([]rune(tg)) > MaxTagLen {
				f.violations = append(f.violations, "tag "+tg)
			}
		}
		for _, p := range s.Points {
			if p.Timestamp == nil || p.Value == nil {
				f.violations = append(f.violations, "point without timestamp or value")
			}
		}
	}
	if len(f.script) > 0 {
		sc := f.script[0]
		f.script = f.script[1:]
		if sc.status != http.StatusAccepted {
			f.respond(w, sc.status, sc.header, http.StatusText(sc.status))
			return
		}
	}
	if f.reject != nil {
		for _, s := range payload.Series {
			if f.reject(s) {
				f.respond(w, http.StatusBadRequest, nil, "Invalid series")
				return
			}
		}
	}
	now := f.now()
	for _, s := range payload.Series {
		tags := append([]string(nil), s.Tags...)
		sort.Strings(tags)
		for _, p := range s.Points {
			ts := time.Unix(*p.Timestamp, 0)
			if ts.Before(now.Add(-MaxAge)) || ts.After(now.Add(MaxAhead)) {
				f.outOfWindow++ // Datadog accepts the request and drops the point
				continue
			}
			k := pointKey{s.Metric, strings.Join(tags, ","), *p.Timestamp}
			if old, ok := f.store[k]; ok && *p.Value < old {
				f.lowered = append(f.lowered, fmt.Sprintf("%v: %v replaced by %v", k, old, *p.Value))
			}
			f.store[k] = *p.Value
			f.writes[k]++
		}
	}
	f.bodies = append(f.bodies, raw)
	if f.accepted != nil {
		f.accepted(len(f.bodies))
	}
	f.respond(w, http.StatusAccepted, nil, "")
}

func (f *fakeIntake) do(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

// total is the sum of what the fake holds: the count Datadog would show.
func (f *fakeIntake) total() float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n float64
	for _, v := range f.store {
		n += v
	}
	return n
}

// checkClean fails the test if the sink broke the contract or wrote a
// series and second more than once.
func (f *fakeIntake) checkClean() {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, v := range f.violations {
		f.t.Errorf("contract violation: %s", v)
	}
	for k, n := range f.writes {
		if n != 1 {
			f.t.Errorf("%v written %d times, want once", k, n)
		}
	}
	if f.outOfWindow > 0 {
		f.t.Errorf("%d points outside Datadog's window were sent", f.outOfWindow)
	}
}

// readBody checks what both intakes require of a request (the API key, a
// JSON Content-Type, the encoding, the compressed and uncompressed size
// limits) and returns the decompressed body; when it returns false it has
// answered the request, as Datadog would.
func (f *fakeIntake) readBody(w http.ResponseWriter, r *http.Request, encoding string) ([]byte, bool) {
	if r.Header.Get("DD-API-KEY") != f.key {
		f.respond(w, http.StatusForbidden, nil, "Forbidden")
		return nil, false
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		f.violations = append(f.violations, "Content-Type "+ct)
		f.respond(w, http.StatusBadRequest, nil, "bad content type")
		return nil, false
	}
	if ce := r.Header.Get("Content-Encoding"); ce != encoding {
		f.violations = append(f.violations, "Content-Encoding "+ce)
		f.respond(w, http.StatusBadRequest, nil, "bad content encoding")
		return nil, false
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, int64(f.maxCompressed)+1))
	if len(body) > f.maxCompressed {
		f.respond(w, http.StatusRequestEntityTooLarge, nil, "Payload too large")
		return nil, false
	}
	var zr io.Reader
	var err error
	var name, undo string
	switch encoding {
	case "gzip":
		name, undo = "gzip", "gunzip"
		zr, err = gzip.NewReader(bytes.NewReader(body))
	default: // deflate: a zlib stream, as Datadog documents it
		name, undo = "zlib", "inflate"
		zr, err = zlib.NewReader(bytes.NewReader(body))
	}
	if err != nil {
		f.violations = append(f.violations, name+": "+err.Error())
		f.respond(w, http.StatusBadRequest, nil, "bad "+encoding)
		return nil, false
	}
	raw, err := io.ReadAll(io.LimitReader(zr, int64(f.maxUncompressed)))
	if err != nil {
		f.violations = append(f.violations, undo+": "+err.Error())
		f.respond(w, http.StatusBadRequest, nil, "bad "+encoding)
		return nil, false
	}
	if len(raw) >= f.maxUncompressed {
		f.respond(w, http.StatusRequestEntityTooLarge, nil, "Payload too large")
		return nil, false
	}
	return raw, true
}
