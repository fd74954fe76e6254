package datadog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"
)

// serveDist is the fake's POST /api/v1/distribution_points, to the contract
// Datadog documents (https://docs.datadoghq.com/api/latest/metrics/#submit-distribution-points):
// the DD-API-KEY header (403 without), a JSON body with Content-Encoding
// deflate (zlib; the only encoding documented), {"series":[{"metric",
// "points":[[<POSIX seconds>,[<values>…]],…],"tags","host","type":
// "distribution"}]} with nothing else (400), the size limits the sink
// applies (413 beyond), and 202 on success. Like Datadog, it keeps every
// value of a distribution (they are aggregated server-side, never
// replaced), and drops points outside [now-1h, now+10m] (historical
// ingestion is not available for distributions).
func (f *fakeIntake) serveDist(w http.ResponseWriter, r *http.Request) {
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
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&payload); err != nil || len(payload.Series) == 0 {
		f.violations = append(f.violations, fmt.Sprintf("payload: %v (%d series)", err, len(payload.Series)))
		f.respond(w, http.StatusBadRequest, nil, "bad payload")
		return
	}
	type parsed struct {
		key    pointKey
		values []float64
	}
	var points []parsed
	bad := func(msg string) {
		f.violations = append(f.violations, msg)
	}
	for _, s := range payload.Series {
		if !metricNameRE.MatchString(s.Metric) {
			bad("metric name " + s.Metric)
		}
		if s.Type != nil && *s.Type != "distribution" {
			bad("type " + *s.Type)
		}
		if s.Host != nil {
			bad("host sent: it would be a billed tag of its own")
		}
		if len(s.Points) == 0 {
			bad("no points for " + s.Metric)
		}
		for _, tg := range s.Tags {
			if !tagRE.MatchString(tg) || len([]rune(tg)) > MaxTagLen {
				bad("tag " + tg)
			}
		}
		tags := append([]string(nil), s.Tags...)
		sort.Strings(tags)
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
			points = append(points, parsed{pointKey{s.Metric, strings.Join(tags, ","), ts}, values})
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
	now := f.now()
	for _, p := range points {
		ts := time.Unix(p.key.ts, 0)
		if ts.Before(now.Add(-MaxAge)) || ts.After(now.Add(MaxAhead)) {
			f.outOfWindow++
			continue
		}
		f.dist[p.key] = append(f.dist[p.key], p.values...)
		f.writes[p.key]++
	}
	f.bodies = append(f.bodies, raw)
	f.respond(w, http.StatusAccepted, nil, "")
}

// distCount is what `count:` of the distribution shows for everything the
// fake holds, and distSum what `sum:` shows.
func (f *fakeIntake) distCount() (count int, sum float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, vs := range f.dist {
		count += len(vs)
		for _, v := range vs {
			sum += v
		}
	}
	return count, sum
}

// distHeld returns the count of values of one series and second.
func (f *fakeIntake) distHeld(metric, tags string, ts int64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.dist[pointKey{metric, tags, ts}])
}
