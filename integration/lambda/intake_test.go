package lambda_test

import (
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// intake is a loopback Datadog metrics intake that stores what Datadog
// would: for counts (POST /api/v2/series) the last value per series and
// second; for distributions (POST /api/v1/distribution_points) every value.
type intake struct {
	mu sync.Mutex
	// counts: series → unix second → last value received.
	counts map[string]map[int64]int64
	// dist: series → unix second → sum of every value received.
	dist map[string]map[int64]int64
	// requests, in arrival order, for the duplicate window.
	requests []intakeRequest
	paths    map[string]int
	bad      []string
}

type intakeRequest struct {
	key    string // DD-API-KEY: which incarnation sent it
	at     time.Time
	values int64 // distribution values, or count values, it carried
}

func startIntake(t *testing.T) (*intake, string) {
	in := &intake{counts: map[string]map[int64]int64{}, dist: map[string]map[int64]int64{}, paths: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(in.serve))
	t.Cleanup(srv.Close)
	return in, srv.URL
}

func seriesKey(metric string, tags []string) string {
	tags = append([]string(nil), tags...)
	sort.Strings(tags)
	return metric + "|" + strings.Join(tags, ",")
}

func (in *intake) fail(w http.ResponseWriter, msg string) {
	in.mu.Lock()
	if len(in.bad) < 10 {
		in.bad = append(in.bad, msg)
	}
	in.mu.Unlock()
	http.Error(w, msg, http.StatusBadRequest)
}

func (in *intake) serve(w http.ResponseWriter, r *http.Request) {
	var body io.Reader = r.Body
	switch r.Header.Get("Content-Encoding") {
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			in.fail(w, "gzip: "+err.Error())
			return
		}
		body = zr
	case "deflate":
		zr, err := zlib.NewReader(r.Body)
		if err != nil {
			in.fail(w, "deflate: "+err.Error())
			return
		}
		body = zr
	case "", "identity":
	default:
		in.fail(w, "unknown Content-Encoding "+r.Header.Get("Content-Encoding"))
		return
	}
	raw, err := io.ReadAll(io.LimitReader(body, 64<<20))
	if err != nil {
		in.fail(w, err.Error())
		return
	}
	key := r.Header.Get("DD-API-KEY")
	now := time.Now()
	switch r.URL.Path {
	case "/api/v2/series":
		var p struct {
			Series []struct {
				Metric string
				Type   int
				Points []struct{ Timestamp, Value int64 }
				Tags   []string
			}
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			in.fail(w, "series: "+err.Error())
			return
		}
		in.mu.Lock()
		var n int64
		for _, s := range p.Series {
			k := seriesKey(s.Metric, s.Tags)
			m := in.counts[k]
			if m == nil {
				m = map[int64]int64{}
				in.counts[k] = m
			}
			for _, pt := range s.Points {
				m[pt.Timestamp] = pt.Value // the last value per series and second wins
				n += pt.Value
			}
		}
		in.requests = append(in.requests, intakeRequest{key, now, n})
		in.paths[r.URL.Path]++
		in.mu.Unlock()
	case "/api/v1/distribution_points":
		var p struct {
			Series []struct {
				Metric string
				Points [][2]json.RawMessage
				Tags   []string
			}
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			in.fail(w, "distribution_points: "+err.Error())
			return
		}
		in.mu.Lock()
		var n int64
		for _, s := range p.Series {
			k := seriesKey(s.Metric, s.Tags)
			m := in.dist[k]
			if m == nil {
				m = map[int64]int64{}
				in.dist[k] = m
			}
			for _, pt := range s.Points {
				var ts int64
				var vs []float64
				if json.Unmarshal(pt[0], &ts) != nil || json.Unmarshal(pt[1], &vs) != nil {
					in.mu.Unlock()
					in.fail(w, "distribution point: want [timestamp, [values…]]")
					return
				}
				for _, v := range vs {
					m[ts] += int64(v) // every value is kept
					n += int64(v)
				}
			}
		}
		in.requests = append(in.requests, intakeRequest{key, now, n})
		in.paths[r.URL.Path]++
		in.mu.Unlock()
	default:
		in.fail(w, "unknown path "+r.URL.Path)
		return
	}
	w.WriteHeader(http.StatusAccepted)
	w.Write([]byte(`{"errors":[]}`))
}

// perMinute returns what Datadog would show per series and minute: the sum
// of the stored per-second values.
func (in *intake) perMinute(dist bool) map[string]map[time.Time]int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	src := in.counts
	if dist {
		src = in.dist
	}
	out := map[string]map[time.Time]int64{}
	for k, secs := range src {
		m := map[time.Time]int64{}
		for ts, v := range secs {
			m[time.Unix(ts, 0).UTC().Truncate(time.Minute)] += v
		}
		out[k] = m
	}
	return out
}

// atRisk sums the values that incarnations sent after their last completed
// invocation: what an invocation killed before completing had sent.
func (in *intake) atRisk(lastDone map[string]time.Time) int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	var n int64
	for _, r := range in.requests {
		if done, killed := lastDone[r.key]; killed && r.at.After(done) {
			n += r.values
		}
	}
	return n
}
