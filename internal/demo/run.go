package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"
)

// Target is the ingest endpoint Run posts to.
type Target struct {
	// URL of POST /v1/events, e.g. http://127.0.0.1:8080/v1/events.
	URL string
	// Header carries Secret; no header is sent when Secret is empty.
	Header, Secret string
	// Client defaults to one with a 30 s timeout.
	Client *http.Client
}

// Limits of Run.
const (
	// BatchEvents is the most events one request carries (about 2 MB,
	// within serve's default 10 MiB body limit).
	BatchEvents = 1000
	// MaxQueued bounds the events waiting while the target is down; beyond
	// it the oldest are dropped (and logged), so memory stays bounded.
	MaxQueued = 200_000
)

// Totals sums the answers of the target.
type Totals struct {
	Requests, Events, Accepted, Rejected, Occurrences int
	// Dropped counts events given up while the target was down.
	Dropped int
}

// ErrRefused is wrapped by Run's error when the target refuses the demo for
// good (wrong secret, a body it cannot read).
var ErrRefused = errors.New("target refused the demo traffic")

// Run advances g to now() every tick and posts the due events to t, until
// ctx is done; it then returns the totals and nil. It logs "demo: backfill
// posted" once, when it has first posted everything due (the backfill, when
// g starts in the past). A target that is down or
// answers 5xx or 429 is retried with the same batch (a repeat is harmless:
// the target counts exactly once); one that answers 401, 403, 400 or 413 ends
// Run with an error wrapping ErrRefused.
func Run(ctx context.Context, g *Generator, t Target, tick time.Duration, now func() time.Time, log *slog.Logger) (Totals, error) {
	if t.Client == nil {
		t.Client = &http.Client{Timeout: 30 * time.Second}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var tot Totals
	var queue [][]byte
	failing, caughtUp := false, false
	lastReport := now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return tot, nil
		case <-timer.C:
		}
		queue = append(queue, g.Next(now())...)
		if over := len(queue) - MaxQueued; over > 0 {
			queue = queue[over:]
			tot.Dropped += over
			log.Warn("demo: target down too long, dropping the oldest events", "dropped", over)
		}
		wait := tick
		for len(queue) > 0 && ctx.Err() == nil {
			n := min(len(queue), BatchEvents)
			resp, err := post(ctx, t, queue[:n])
			if err != nil {
				if errors.Is(err, ErrRefused) {
					return tot, err
				}
				if ctx.Err() != nil {
					return tot, nil
				}
				if !failing {
					log.Warn("demo: cannot post events, retrying", "url", t.URL, "err", err)
				}
				failing = true
				wait = min(10*time.Second, 4*tick)
				break
			}
			if failing {
				log.Info("demo: posting events again", "url", t.URL)
				failing = false
			}
			tot.Requests++
			tot.Events += n
			tot.Accepted += resp.Accepted
			tot.Rejected += resp.Rejected
			tot.Occurrences += resp.Occurrences
			queue = queue[n:]
		}
		if !caughtUp && len(queue) == 0 && ctx.Err() == nil {
			caughtUp = true
			log.Info("demo: backfill posted", "events", tot.Events, "occurrences", tot.Occurrences)
		}
		if now().Sub(lastReport) >= time.Minute {
			lastReport = now()
			log.Info("demo traffic", "events", tot.Events, "occurrences", tot.Occurrences, "rejected", tot.Rejected)
		}
		timer.Reset(wait)
	}
}

type answer struct {
	Accepted    int `json:"accepted"`
	Rejected    int `json:"rejected"`
	Occurrences int `json:"occurrences"`
}

func post(ctx context.Context, t Target, events [][]byte) (answer, error) {
	var body bytes.Buffer
	for _, e := range events {
		body.Write(e)
		body.WriteByte('\n')
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.URL, &body)
	if err != nil {
		return answer{}, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	if t.Secret != "" {
		req.Header.Set(t.Header, t.Secret)
	}
	resp, err := t.Client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusOK:
		var a answer
		if err := json.Unmarshal(b, &a); err != nil {
			return answer{}, fmt.Errorf("%w: answer is not JSON: %v", ErrRefused, err)
		}
		return a, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return answer{}, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	default:
		return answer{}, fmt.Errorf("%w: %s: %s", ErrRefused, resp.Status, bytes.TrimSpace(b))
	}
}

// RunFrom runs a new Generator for o whose first conversation starts at
// start (in the past, it backfills).
func RunFrom(ctx context.Context, o Options, start time.Time, t Target, tick time.Duration, now func() time.Time, log *slog.Logger) (Totals, error) {
	return Run(ctx, New(o, start), t, tick, now, log)
}
