// Package datadogtest is a loopback stand-in for Datadog's metrics intake,
// for tests only: the sink's own tests and the serverless exactness test
// (integration/lambda) check what Datadog would store, not what was sent.
//
// It enforces the documented contract byte for byte and reconstructs what
// Datadog keeps: for counts (POST /api/v2/series) the last value per series
// and second; for distributions (POST /api/v1/distribution_points) every
// value. Its limits are Datadog's documented ones, written here rather than
// taken from the sink, so that a wrong limit in the sink shows.
package datadogtest

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

// Datadog's documented limits.
const (
	// MaxPayloadBytes and MaxUncompressedBytes bound one request body
	// (413 beyond).
	MaxPayloadBytes      = 512000
	MaxUncompressedBytes = 5242880
	// MaxAge and MaxAhead bound a point's timestamp: Datadog accepts the
	// request and drops a point outside [now-MaxAge, now+MaxAhead].
	MaxAge   = time.Hour
	MaxAhead = 10 * time.Minute
	// MaxTagLen is the longest tag, in characters.
	MaxTagLen = 200
)

// The endpoints.
const (
	SeriesPath       = "/api/v2/series"
	DistributionPath = "/api/v1/distribution_points"
)

var (
	metricNameRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.]{0,199}$`)
	tagRE        = regexp.MustCompile(`^\p{Ll}[\p{Ll}\p{Lo}\p{Nd}_\-:./]*$`)
)

// Point is one series and second, as Datadog stores it.
type Point struct {
	Metric string
	Tags   string // sorted, comma-joined
	TS     int64  // unix seconds
}

// PointOf is the Point of a series (its tags in any order) and second.
func PointOf(metric string, tags []string, ts int64) Point {
	return Point{Metric: metric, Tags: sortedTags(tags), TS: ts}
}

// Response is a scripted answer to a request that passed the contract
// checks.
type Response struct {
	Status int
	Header http.Header
}

// Series is a MetricSeries of POST /api/v2/series as the intake reads it.
type Series struct {
	Metric   string   `json:"metric"`
	Type     *int     `json:"type"`
	Interval *int64   `json:"interval"`
	Points   []Value  `json:"points"`
	Tags     []string `json:"tags"`
	// Fields of MetricSeries the sink does not use; declared so that
	// unknown fields only catch fields Datadog does not know.
	Resources      []json.RawMessage `json:"resources"`
	SourceTypeName *string           `json:"source_type_name"`
	Unit           *string           `json:"unit"`
	Metadata       json.RawMessage   `json:"metadata"`
}

// Value is one point of a Series.
type Value struct {
	Timestamp *int64   `json:"timestamp"`
	Value     *float64 `json:"value"`
}

// Request is one accepted request: who sent it (its API key), when, and
// the sum of the values it carried.
type Request struct {
	Key    string
	At     time.Time
	Values float64
}

// Intake is the fake. Its exported fields are read and changed under Do
// (or Lock and Unlock) while it serves.
type Intake struct {
	// URL is where it listens (http://127.0.0.1:port).
	URL string
	// Now is the clock points are judged by.
	Now func() time.Time
	t   testing.TB

	mu sync.Mutex

	// Key is the API key it accepts (403 otherwise); "" accepts any
	// non-empty key, e.g. one per Lambda incarnation.
	Key string
	// MaxCompressed and MaxUncompressed start as Datadog's limits; a test
	// may lower them.
	MaxCompressed, MaxUncompressed int
	// Script gives the responses of the next requests that pass the
	// contract checks; when it is empty, requests are accepted.
	Script []Response
	// Reject, if set, answers 400 to count payloads holding a series it
	// matches.
	Reject func(Series) bool
	// OnAccept, if set, is called (with the intake locked) after a
	// payload's points are stored and before the 202 is written, with the
	// number of payloads accepted so far.
	OnAccept func(n int)

	// Requests counts every request; Statuses holds every answer's status.
	Requests int
	Statuses []int
	// Bodies are the uncompressed bodies of accepted payloads.
	Bodies [][]byte
	// Store is what Datadog holds of counts: the last value per series
	// and second.
	Store map[Point]float64
	// Dist is what Datadog holds of distributions: every value.
	Dist map[Point][]float64
	// Writes counts accepted writes per series and second.
	Writes map[Point]int
	// Accepted lists the accepted requests in arrival order, and
	// PerEndpoint counts them by URL path.
	Accepted    []Request
	PerEndpoint map[string]int
	// Violations are contract breaches by the sender; Lowered, writes that
	// replaced a held count by a smaller one; OutOfWindow, points Datadog
	// would have dropped for their timestamp.
	Violations  []string
	Lowered     []string
	OutOfWindow int
}

// New starts an intake on 127.0.0.1 that accepts key ("" for any) and
// judges timestamps by now; it stops when the test ends.
func New(t testing.TB, key string, now func() time.Time) *Intake {
	f := &Intake{
		t: t, Now: now, Key: key,
		MaxCompressed: MaxPayloadBytes, MaxUncompressed: MaxUncompressedBytes,
		Store: map[Point]float64{}, Writes: map[Point]int{}, Dist: map[Point][]float64{},
		PerEndpoint: map[string]int{},
	}
	srv := httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

// Lock and Unlock hold the intake still while a test reads or changes it.
func (f *Intake) Lock()   { f.mu.Lock() }
func (f *Intake) Unlock() { f.mu.Unlock() }

// Do runs fn with the intake locked.
func (f *Intake) Do(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn()
}

// Total is the sum of the counts the intake holds: the count Datadog would
// show.
func (f *Intake) Total() float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n float64
	for _, v := range f.Store {
		n += v
	}
	return n
}

// DistCount is what `count:` of the distributions shows for everything the
// intake holds, and sum what `sum:` shows.
func (f *Intake) DistCount() (count int, sum float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, vs := range f.Dist {
		count += len(vs)
		for _, v := range vs {
			sum += v
		}
	}
	return count, sum
}

// DistHeld returns the number of values of one series and second.
func (f *Intake) DistHeld(metric, tags string, ts int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.Dist[Point{Metric: metric, Tags: tags, TS: ts}])
}

// PerMinute returns what Datadog would show per series ("metric|tags")
// and minute: the sum of the stored per-second counts, or of every
// distribution value.
func (f *Intake) PerMinute(dist bool) map[string]map[time.Time]float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]map[time.Time]float64{}
	add := func(p Point, v float64) {
		k := p.Metric + "|" + p.Tags
		if out[k] == nil {
			out[k] = map[time.Time]float64{}
		}
		out[k][time.Unix(p.TS, 0).UTC().Truncate(time.Minute)] += v
	}
	if dist {
		for p, vs := range f.Dist {
			for _, v := range vs {
				add(p, v)
			}
		}
		return out
	}
	for p, v := range f.Store {
		add(p, v)
	}
	return out
}

// SeriesKey is PerMinute's key of a series.
func SeriesKey(metric string, tags []string) string {
	return metric + "|" + sortedTags(tags)
}

func sortedTags(tags []string) string {
	tags = append([]string(nil), tags...)
	sort.Strings(tags)
	return strings.Join(tags, ",")
}

// CheckClean fails the test if the sender broke the contract, sent a point
// Datadog would drop, or wrote a series and second more than once.
func (f *Intake) CheckClean() {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, v := range f.Violations {
		f.t.Errorf("contract violation: %s", v)
	}
	for k, n := range f.Writes {
		if n != 1 {
			f.t.Errorf("%v written %d times, want once", k, n)
		}
	}
	if f.OutOfWindow > 0 {
		f.t.Errorf("%d points outside Datadog's window were sent", f.OutOfWindow)
	}
}

// CheckDist fails the test if the sender broke the contract or sent a
// point Datadog would drop, or if what the intake holds is not exactly want
// occurrences by Datadog's rule for distributions (every value is kept, and
// each occurrence is a value of 1): `count:` and `sum:` must both be want.
func (f *Intake) CheckDist(want int) {
	f.t.Helper()
	f.mu.Lock()
	for _, v := range f.Violations {
		f.t.Errorf("contract violation: %s", v)
	}
	if f.OutOfWindow > 0 {
		f.t.Errorf("%d points outside Datadog's window were sent", f.OutOfWindow)
	}
	f.mu.Unlock()
	count, sum := f.DistCount()
	if count != want || sum != float64(want) {
		f.t.Errorf("distribution held by Datadog: count %d, sum %v; want %d and %d", count, sum, want, want)
	}
}

func (f *Intake) respond(w http.ResponseWriter, status int, h http.Header, msg string) {
	f.Statuses = append(f.Statuses, status)
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

func (f *Intake) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Requests++
	switch {
	case r.Method == http.MethodPost && r.URL.Path == SeriesPath:
		f.serveSeries(w, r)
	case r.Method == http.MethodPost && r.URL.Path == DistributionPath:
		f.serveDist(w, r)
	default:
		f.Violations = append(f.Violations, r.Method+" "+r.URL.Path+": no such endpoint")
		f.respond(w, http.StatusNotFound, nil, "not found")
	}
}

// serveSeries is POST /api/v2/series, to the contract Datadog documents:
// the DD-API-KEY header, JSON with Content-Encoding gzip, 512000 bytes
// compressed and less than 5242880 uncompressed (413 beyond), the
// MetricPayload shape (unknown fields are a 400), points within
// [now-1h, now+10m], and 202 {"errors":[]} on success. Like Datadog, it
// keeps one value per series and second: the last written.
func (f *Intake) serveSeries(w http.ResponseWriter, r *http.Request) {
	raw, ok := f.readBody(w, r, "gzip")
	if !ok {
		return
	}
	var payload struct {
		Series []Series `json:"series"`
	}
	if !f.decode(w, raw, &payload, func() int { return len(payload.Series) }) {
		return
	}
	for _, s := range payload.Series {
		f.checkSeries(s.Metric, s.Tags, len(s.Points))
		if s.Type == nil || *s.Type != 1 {
			f.Violations = append(f.Violations, "type is not 1 (count) for "+s.Metric)
		}
		if s.Interval == nil || *s.Interval < 1 {
			f.Violations = append(f.Violations, "interval missing for "+s.Metric)
		}
		for _, p := range s.Points {
			if p.Timestamp == nil || p.Value == nil {
				f.Violations = append(f.Violations, "point without timestamp or value")
			}
		}
	}
	if f.scripted(w) {
		return
	}
	if f.Reject != nil {
		for _, s := range payload.Series {
			if f.Reject(s) {
				f.respond(w, http.StatusBadRequest, nil, "Invalid series")
				return
			}
		}
	}
	now := f.Now()
	var sum float64
	for _, s := range payload.Series {
		tags := sortedTags(s.Tags)
		for _, p := range s.Points {
			if p.Timestamp == nil || p.Value == nil {
				continue
			}
			if !inWindow(*p.Timestamp, now) {
				f.OutOfWindow++ // Datadog accepts the request and drops the point
				continue
			}
			k := Point{Metric: s.Metric, Tags: tags, TS: *p.Timestamp}
			if old, ok := f.Store[k]; ok && *p.Value < old {
				f.Lowered = append(f.Lowered, fmt.Sprintf("%v: %v replaced by %v", k, old, *p.Value))
			}
			f.Store[k] = *p.Value
			f.Writes[k]++
			sum += *p.Value
		}
	}
	f.accept(w, r, raw, sum)
}

// serveDist is POST /api/v1/distribution_points, to the contract Datadog
// documents (https://docs.datadoghq.com/api/latest/metrics/#submit-distribution-points):
// the DD-API-KEY header (403 without), a JSON body with Content-Encoding
// deflate (zlib; the only encoding documented), {"series":[{"metric",
// "points":[[<POSIX seconds>,[<values>…]],…],"tags","host","type":
// "distribution"}]} with nothing else (400), the size limits (413
// beyond), and 202 on success. Like Datadog, it keeps every value of a
// distribution (they are aggregated server-side, never replaced), and
// drops points outside [now-1h, now+10m] (historical ingestion is not
// available for distributions).
func (f *Intake) serveDist(w http.ResponseWriter, r *http.Request) {
	raw, ok := f.readBody(w, r, "deflate")
	if !ok {
		return
	}
	type distSeries struct {
		Metric string              `json:"metric"`
		Points [][]json.RawMessage `json:"points"`
		Tags   []string            `json:"tags"`
		Host   *string             `json:"host"`
		Type   *string             `json:"type"`
	}
	var payload struct {
		Series []distSeries `json:"series"`
	}
	if !f.decode(w, raw, &payload, func() int { return len(payload.Series) }) {
		return
	}
	type parsed struct {
		key    Point
		values []float64
	}
	var points []parsed
	bad := func(msg string) { f.Violations = append(f.Violations, msg) }
	for _, s := range payload.Series {
		f.checkSeries(s.Metric, s.Tags, len(s.Points))
		if s.Type != nil && *s.Type != "distribution" {
			bad("type " + *s.Type)
		}
		if s.Host != nil {
			bad("host sent: it would be a billed tag of its own")
		}
		tags := sortedTags(s.Tags)
		for _, p := range s.Points {
			if len(p) != 2 {
				bad(fmt.Sprintf("point of %d elements, want [timestamp, [values]]", len(p)))
				continue
			}
			var ts int64
			var values []float64
			if err := json.Unmarshal(p[0], &ts); err != nil {
				bad("timestamp " + string(p[0]) + ": want POSIX seconds")
				continue
			}
			if err := json.Unmarshal(p[1], &values); err != nil || len(values) == 0 {
				bad("values " + string(p[1]) + ": want a non-empty list of numbers")
				continue
			}
			points = append(points, parsed{Point{Metric: s.Metric, Tags: tags, TS: ts}, values})
		}
	}
	if f.scripted(w) {
		return
	}
	now := f.Now()
	var sum float64
	for _, p := range points {
		if !inWindow(p.key.TS, now) {
			f.OutOfWindow++
			continue
		}
		f.Dist[p.key] = append(f.Dist[p.key], p.values...)
		f.Writes[p.key]++
		for _, v := range p.values {
			sum += v
		}
	}
	f.accept(w, r, raw, sum)
}

func inWindow(ts int64, now time.Time) bool {
	t := time.Unix(ts, 0)
	return !t.Before(now.Add(-MaxAge)) && !t.After(now.Add(MaxAhead))
}

// decode reads a payload of one or more series, refusing fields Datadog
// does not know.
func (f *Intake) decode(w http.ResponseWriter, raw []byte, v any, series func() int) bool {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil || series() == 0 {
		f.Violations = append(f.Violations, fmt.Sprintf("payload: %v (%d series)", err, series()))
		f.respond(w, http.StatusBadRequest, nil, "bad payload")
		return false
	}
	return true
}

// checkSeries checks what both endpoints require of a series.
func (f *Intake) checkSeries(metric string, tags []string, points int) {
	if !metricNameRE.MatchString(metric) {
		f.Violations = append(f.Violations, "metric name "+metric)
	}
	if points == 0 {
		f.Violations = append(f.Violations, "no points for "+metric)
	}
	for _, tg := range tags {
		if !tagRE.MatchString(tg) || len([]rune(tg)) > MaxTagLen {
			f.Violations = append(f.Violations, "tag "+tg)
		}
	}
}

// scripted answers with the next scripted response, if any that is not a
// 202; it reports whether it answered.
func (f *Intake) scripted(w http.ResponseWriter) bool {
	if len(f.Script) == 0 {
		return false
	}
	sc := f.Script[0]
	f.Script = f.Script[1:]
	if sc.Status == http.StatusAccepted {
		return false
	}
	f.respond(w, sc.Status, sc.Header, http.StatusText(sc.Status))
	return true
}

// accept records an accepted payload and answers 202.
func (f *Intake) accept(w http.ResponseWriter, r *http.Request, raw []byte, sum float64) {
	f.Bodies = append(f.Bodies, raw)
	f.Accepted = append(f.Accepted, Request{Key: r.Header.Get("DD-API-KEY"), At: time.Now(), Values: sum})
	f.PerEndpoint[r.URL.Path]++
	if f.OnAccept != nil {
		f.OnAccept(len(f.Bodies))
	}
	f.respond(w, http.StatusAccepted, nil, "")
}

// readBody checks what both endpoints require of a request (the API key, a
// JSON Content-Type, the encoding, the compressed and uncompressed size
// limits) and returns the decompressed body; when it returns false it has
// answered the request, as Datadog would.
func (f *Intake) readBody(w http.ResponseWriter, r *http.Request, encoding string) ([]byte, bool) {
	if key := r.Header.Get("DD-API-KEY"); key == "" || f.Key != "" && key != f.Key {
		f.respond(w, http.StatusForbidden, nil, "Forbidden")
		return nil, false
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		f.Violations = append(f.Violations, "Content-Type "+ct)
		f.respond(w, http.StatusBadRequest, nil, "bad content type")
		return nil, false
	}
	if ce := r.Header.Get("Content-Encoding"); ce != encoding {
		f.Violations = append(f.Violations, "Content-Encoding "+ce)
		f.respond(w, http.StatusBadRequest, nil, "bad content encoding")
		return nil, false
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, int64(f.MaxCompressed)+1))
	if len(body) > f.MaxCompressed {
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
		f.Violations = append(f.Violations, name+": "+err.Error())
		f.respond(w, http.StatusBadRequest, nil, "bad "+encoding)
		return nil, false
	}
	raw, err := io.ReadAll(io.LimitReader(zr, int64(f.MaxUncompressed)))
	if err != nil {
		f.Violations = append(f.Violations, undo+": "+err.Error())
		f.respond(w, http.StatusBadRequest, nil, "bad "+encoding)
		return nil, false
	}
	if len(raw) >= f.MaxUncompressed {
		f.respond(w, http.StatusRequestEntityTooLarge, nil, "Payload too large")
		return nil, false
	}
	return raw, true
}
