package demo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/httpapi"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// ingest is the real ingest path (httpapi over a pipeline and a memory
// store) behind a recorder that counts, independently, the distinct
// occurrences in what was posted.
type ingest struct {
	*httptest.Server
	mu       sync.Mutex
	distinct map[string]bool
	fail     int // answer 503 to this many requests first
}

func newIngest(t *testing.T, secret string) *ingest {
	t.Helper()
	m := telemetry.New()
	log := slog.New(slog.DiscardHandler)
	p := pipeline.New(memstore.New(store.Options{}), nil, pipeline.Config{}, m, log)
	if err := p.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	api := httpapi.New(p, m, httpapi.Options{AuthHeader: "X-Flowmetrics-Secret", Secret: secret}, log)
	in := &ingest{distinct: map[string]bool{}}
	in.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in.mu.Lock()
		if in.fail > 0 {
			in.fail--
			in.mu.Unlock()
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		in.mu.Unlock()
		body, _ := io.ReadAll(r.Body)
		rec := httptest.NewRecorder()
		r.Body = io.NopCloser(bytes.NewReader(body))
		api.ServeHTTP(rec, r)
		if rec.Code == http.StatusAccepted {
			in.mu.Lock()
			_ = genesys.Decode(bytes.NewReader(body), func(rec genesys.Record) error {
				if rec.Outcome == genesys.Accepted {
					good, _ := genesys.Extract(rec.Event)
					for _, o := range good {
						in.distinct[rec.Event.ConversationID+"/"+o.Key] = true
					}
				}
				return nil
			})
			in.mu.Unlock()
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	}))
	t.Cleanup(in.Close)
	return in
}

// clock advances one second each time it is read, up to end.
type clock struct {
	mu       sync.Mutex
	now, end time.Time
}

func (c *clock) read() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.now.Before(c.end) {
		c.now = c.now.Add(time.Second)
	}
	return c.now
}

func (c *clock) done() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.now.Before(c.end)
}

func TestRunPostsThroughTheRealIngestPath(t *testing.T) {
	const secret = "s3cret"
	in := newIngest(t, secret)
	in.fail = 3 // the target is briefly down: Run retries the same batch
	start := t0.Add(-10 * time.Minute)
	g := New(Options{Seed: 8}, start)
	c := &clock{now: t0, end: t0.Add(10 * time.Minute)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		tot Totals
		err error
	}
	done := make(chan result, 1)
	go func() {
		tot, err := Run(ctx, g, Target{URL: in.URL + "/v1/events", Header: "X-Flowmetrics-Secret", Secret: secret}, time.Millisecond, c.read, nil)
		done <- result{tot, err}
	}()
	for !c.done() && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	// Let the last batch go out: after the end the clock stands still, so
	// Next returns nothing more.
	time.Sleep(200 * time.Millisecond)
	cancel()
	r := <-done
	if r.err != nil {
		t.Fatalf("Run: %v", r.err)
	}
	in.mu.Lock()
	distinct := len(in.distinct)
	in.mu.Unlock()
	t.Logf("%d requests, %d events, %d occurrences; %d distinct in what was posted", r.tot.Requests, r.tot.Events, r.tot.Occurrences, distinct)
	if r.tot.Rejected != 0 {
		t.Errorf("got %d events rejected, want 0", r.tot.Rejected)
	}
	if r.tot.Occurrences != distinct || distinct < 1000 {
		t.Errorf("the server counted %d occurrences; the posted events hold %d distinct ones (want ≥ 1000)", r.tot.Occurrences, distinct)
	}
	if r.tot.Events <= r.tot.Occurrences/4 || r.tot.Events != g.Stats().Events {
		t.Errorf("posted %d events, the generator made %d", r.tot.Events, g.Stats().Events)
	}
}

func TestRunStopsOnAWrongSecret(t *testing.T) {
	in := newIngest(t, "right")
	g := New(Options{Seed: 8}, t0.Add(-time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Run(ctx, g, Target{URL: in.URL + "/v1/events", Header: "X-Flowmetrics-Secret", Secret: "wrong"}, time.Millisecond, func() time.Time { return t0 }, nil)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want an error wrapping ErrRefused", err)
	}
}

// feed posts what g has due at each 10 s from from to to (the first call
// delivers a backfill at once) and returns the occurrences the target
// claimed.
func feed(t *testing.T, in *ingest, g *Generator, from, to time.Time) int {
	t.Helper()
	target := Target{URL: in.URL + "/v1/events", Client: in.Client()}
	claimed := 0
	for now := from; !now.After(to); now = now.Add(10 * time.Second) {
		for events := g.Next(now); len(events) > 0; {
			n := min(len(events), BatchEvents)
			a, err := post(context.Background(), target, events[:n])
			if err != nil {
				t.Fatal(err)
			}
			claimed += a.Occurrences
			events = events[n:]
		}
	}
	return claimed
}

// TestRestartedDemoDoesNotDoubleCount: a demo stopped and started again two
// minutes later, with the same seed, backfills the last 55 minutes again
// over what it already posted. The target's exactly-once claims must count
// those conversations once: the store ends with the occurrences of one
// demo that never stopped, not more.
func TestRestartedDemoDoesNotDoubleCount(t *testing.T) {
	t.Parallel()
	o := Options{Seed: 7, Rate: 0.5}
	const backfill = 55 * time.Minute
	start := t0.Add(-backfill)
	stop := t0.Add(10 * time.Minute)
	restart := stop.Add(2 * time.Minute)
	end := restart.Add(10 * time.Minute)

	once := newIngest(t, "")
	want := feed(t, once, New(o, start), t0, end)

	twice := newIngest(t, "")
	first := feed(t, twice, New(o, start), t0, stop)
	second := feed(t, twice, New(o, restart.Add(-backfill)), restart, end)
	t.Logf("one run: %d occurrences; stopped and restarted: %d + %d, of %d distinct posted after the restart", want, first, second, len(twice.distinct))
	if first+second != want {
		t.Errorf("stopped and restarted: claimed %d + %d = %d occurrences, want %d as without the restart", first, second, first+second, want)
	}
	if len(twice.distinct) != len(once.distinct) || len(once.distinct) != want {
		t.Errorf("distinct occurrences posted: got %d restarted, %d in one run, want both %d", len(twice.distinct), len(once.distinct), want)
	}
}
