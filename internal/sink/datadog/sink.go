package datadog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// Name is the sink's name in telemetry and the outbox.
const Name = "datadog"

const (
	// authLogEvery bounds the loud log line for a rejected API key.
	authLogEvery = 5 * time.Minute
	// errLogEvery bounds other error log lines, per kind.
	errLogEvery = time.Minute
	// maxServerWait caps how long a rate-limit header can make us wait.
	maxServerWait = 5 * time.Minute
	// maxErrBody is how much of an error response is logged.
	maxErrBody = 300
)

// Sink delivers points to Datadog's series intake. See the package comment
// for why it sends totals, and Send for retries.
type Sink struct {
	cfg    Config
	apiKey string
	client *http.Client
	ledger *Ledger
	m      *telemetry.Metrics
	log    *slog.Logger
	// series is the intake of counts (count mode), dists the intake of
	// distribution points (every point in distribution mode, durations
	// of paths in count mode).
	series, dists intake

	mu        sync.Mutex // held by Send, so that Close can wait for it
	pending   *Batch     // a failed Send's batch, resumed by an identical Send
	notBefore time.Time  // rate limited: no request before
	authUntil time.Time  // key rejected: no request before
	authErr   error
	lastLog   map[string]time.Time

	closeOnce sync.Once
	closeErr  error
	closing   chan struct{} // closed by Close: wakes a Send waiting to retry
}

// New returns a Sink for cfg (which should have passed Validate). It reads
// the API key with d.Secret from the environment variable cfg.APIKeyEnv and
// fails if it is empty. Nothing here touches the network.
func New(cfg Config, d sink.Deps) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("datadog: %w", err)
	}
	d = d.WithDefaults()
	cfg = cfg.withDefaults()
	endpoint, err := cfg.endpoint()
	if err != nil {
		return nil, fmt.Errorf("datadog: %w", err)
	}
	key, err := cfg.APIKey(d.Secret)
	if err != nil {
		return nil, fmt.Errorf("datadog: %w", err)
	}
	namer, m := d.Namer, d.Metrics
	log := d.Log.With("sink", Name)
	ledger := NewLedger(Name, cfg.Mode, cfg.LatePolicy, cfg.Now, sink.Deps{Namer: namer, Metrics: m, Log: log})
	distEndpoint, err := cfg.endpointOf(distributionPath)
	if err != nil {
		return nil, err
	}
	seriesEndpoint, err := cfg.endpointOf(seriesPath)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true // bodies we read are small; keep errors readable
	s := &Sink{
		cfg:     cfg,
		apiKey:  key,
		client:  &http.Client{Transport: tr},
		ledger:  ledger,
		m:       m,
		log:     log,
		series:  intake{seriesEndpoint, "gzip", packer{maxCompressed: cfg.MaxPayloadBytes, maxUncompressed: cfg.MaxUncompressedBytes, compress: gz}},
		dists:   intake{distEndpoint, "deflate", packer{maxCompressed: cfg.MaxPayloadBytes, maxUncompressed: cfg.MaxUncompressedBytes, compress: deflate}},
		lastLog: make(map[string]time.Time),
		closing: make(chan struct{}),
	}
	u, _ := url.Parse(endpoint)
	s.log.Info("datadog sink ready", "intake", u.Scheme+"://"+u.Host+u.Path, "mode", string(cfg.Mode), "late_policy", string(cfg.LatePolicy), "api_key_env", cfg.APIKeyEnv)
	return s, nil
}

// intake is one of Datadog's endpoints: where a payload goes, and how it is
// packed and encoded.
type intake struct {
	endpoint string
	encoding string // Content-Encoding of the bodies pack makes
	pack     packer
}

// Name returns "datadog".
func (s *Sink) Name() string { return Name }

// errRetry marks a failure worth retrying soon.
type errRetry struct{ err error }

func (e errRetry) Error() string { return e.err.Error() }
func (e errRetry) Unwrap() error { return e.err }

// errAuth is a rejected API key: retried slowly, not within Send.
var errAuth = errors.New("datadog: API key rejected")

// retryAfter is an error after which the sink will not try again before at:
// a caller whose deadline comes first (a Lambda invocation's flush) can give
// up at once instead of waiting for nothing. The pipeline looks for the
// RetryAfter method.
type retryAfter struct {
	err error
	at  time.Time
}

func (e retryAfter) Error() string         { return e.err.Error() }
func (e retryAfter) Unwrap() error         { return e.err }
func (e retryAfter) RetryAfter() time.Time { return e.at }

// Send delivers points, summed per series and second, as one or more
// payloads within Datadog's size limits.
//
// Retries. Within one call, payloads that fail with 408, 429, 5xx or a
// network error are retried up to MaxRetries times with jittered exponential
// backoff (honouring X-RateLimit-Reset and Retry-After), bounded by ctx. A
// 413 splits the payload in halves, which are sent at once. A 400 drops that
// payload (counted in PointsAdjusted{reason="rejected"}) and the others go
// on; Send then returns a Permanent error naming how many points were
// refused. A 401 or 403 is logged loudly (at most every five minutes) and
// fails the call; until AuthRetryInterval has passed, Send fails at once
// without a request.
//
// No duplicates. When Send returns a retryable error, the sink keeps the
// batch: which of its parts Datadog accepted and which are still due. The
// next Send with the same points (the pipeline's retry) resumes it and sends
// only what is due, so a payload accepted before the failure is not sent
// again. A Send with different points abandons the kept batch (logged when
// part of it had been delivered, since the pipeline broke the contract).
//
// Durability (count mode). The totals of what was delivered become part of
// the sink's state, which the pipeline takes (TakeState) after Send returned
// nil or a Permanent error and commits in the same write that advances the
// sink's cursor; after a retryable error nothing is taken, so a process that
// dies then resends the whole batch from the committed totals, which do not
// hold it: the same values, harmless.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	return s.deliver(ctx, len(points), func(b *Batch) bool { return b.Matches(points) }, func() *Batch { return s.ledger.NewBatch(points) })
}

// SendPaths implements flowmetrics.PathSink: exits, funnels and
// experiments as the occurrences are sent (count mode: running totals of
// conversations per series and second, kept in the sink's state; distribution
// mode: one value of 1 per conversation), and step timings and timings as
// distribution points of seconds in both modes, one value per conversation,
// so that Datadog computes their percentiles from every value
// (POST /api/v1/distribution_points). Retries, resumption and durability
// are Send's.
func (s *Sink) SendPaths(ctx context.Context, points []flowmetrics.PathPoint) error {
	return s.deliver(ctx, len(points), func(b *Batch) bool { return b.MatchesPaths(points) }, func() *Batch { return s.ledger.NewPathBatch(points) })
}

// deliver sends the Batch of n points that newBatch makes, or resumes the
// kept one when matches says it was made from the same points.
func (s *Sink) deliver(ctx context.Context, n int, matches func(*Batch) bool, newBatch func() *Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closing:
		return errors.New("datadog: send after close")
	default:
	}
	if n == 0 {
		return nil
	}
	if now := s.cfg.Now(); now.Before(s.authUntil) {
		return retryAfter{fmt.Errorf("%w earlier; next attempt after %s", s.authErr, s.authUntil.UTC().Format(time.RFC3339)), s.authUntil}
	}

	b := s.pending
	if b == nil || !matches(b) {
		if b != nil && b.Delivered() > 0 && !b.Done() {
			s.log.Warn("datadog: a partly delivered batch was replaced by a different one; its delivered points may be counted twice if resent",
				"delivered_points", b.Delivered(), "pending_units", len(b.units))
		}
		b = newBatch()
	}
	s.pending = b

	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			s.m.SinkRetries.WithLabelValues(Name).Inc()
		}
		if err := s.wait(ctx, s.notBefore); err != nil {
			return retryAfter{err, s.notBefore}
		}
		err := s.attempt(ctx, b)
		if err == nil {
			break
		}
		if errors.Is(err, errAuth) {
			return retryAfter{err, s.authUntil}
		}
		if ctx.Err() != nil || attempt >= s.cfg.MaxRetries {
			return err
		}
		next := s.cfg.Now().Add(s.backoff(attempt))
		if next.Before(s.notBefore) {
			next = s.notBefore
		}
		if werr := s.wait(ctx, next); werr != nil {
			return retryAfter{fmt.Errorf("%w (%v)", err, werr), next}
		}
	}
	// Only now, with every payload of the batch accepted or refused, may
	// the new totals be committed: the pipeline calls TakeState after a
	// nil or Permanent return, never after a retryable one. See the
	// package comment for why not after each payload.
	s.pending = nil
	if b.Rejected() > 0 {
		return flowmetrics.Permanent(fmt.Errorf("datadog: intake refused %d of %d points (counted in points_adjusted_total{reason=%q}); the rest were delivered",
			b.Rejected(), b.Len(), ReasonRejected))
	}
	return nil
}

// attempt sends what is due in b once: counts to the series intake,
// distribution points to the distribution intake. It returns nil when
// nothing is left to deliver (everything accepted, refused or dropped by
// the late policy).
func (s *Sink) attempt(ctx context.Context, b *Batch) error {
	var counts, dists []Sample
	for _, x := range s.ledger.Plan(b) {
		if x.dist {
			dists = append(dists, x)
		} else {
			counts = append(counts, x)
		}
	}
	if len(counts) > 0 {
		if err := s.attemptTo(ctx, b, &s.series, counts); err != nil {
			return err
		}
	}
	if len(dists) > 0 {
		return s.attemptTo(ctx, b, &s.dists, dists)
	}
	return nil
}

// attemptTo sends samples (all of one intake's kind) to in.
func (s *Sink) attemptTo(ctx context.Context, b *Batch, in *intake, samples []Sample) error {
	queue, tooBig := in.pack.pack(samples)
	for _, c := range tooBig {
		s.failure("too_large")
		s.ledger.Rejected(b, c.samples)
		s.logEvery("too_large", errLogEvery, slog.LevelError, "datadog: a single point does not fit in a payload; dropped", "metric", c.samples[0].Name)
	}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		status, hdr, body, err := s.post(ctx, in, p.body)
		now := s.cfg.Now()
		if hdr != nil {
			s.noteRateLimit(status, hdr, now)
		}
		switch {
		case err != nil:
			s.failure("network")
			return errRetry{fmt.Errorf("datadog: %w", err)}
		case status >= 200 && status < 300:
			s.ledger.Delivered(b, p.samples())
		case status == http.StatusRequestEntityTooLarge:
			s.failure("too_large")
			halves := split(p.chunks)
			if halves == nil {
				s.ledger.Rejected(b, p.samples())
				s.logEvery("413", errLogEvery, slog.LevelError, "datadog: intake refused a one-point payload as too large; dropped", "bytes", len(p.body))
				continue
			}
			var parts []payload
			for _, h := range halves {
				ps, tb := in.pack.fit(h)
				parts = append(parts, ps...)
				for _, c := range tb {
					s.ledger.Rejected(b, c.samples)
				}
			}
			queue = append(parts, queue...)
		case status == http.StatusBadRequest:
			s.failure("bad_request")
			n := s.ledger.Rejected(b, p.samples())
			s.logEvery("400", errLogEvery, slog.LevelError, "datadog: intake refused a payload (400); its points are dropped, the others go on",
				"points", n, "response", excerpt(body))
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			reason := "unauthorized"
			if status == http.StatusForbidden {
				reason = "forbidden"
			}
			s.failure(reason)
			s.authUntil = now.Add(s.cfg.AuthRetryInterval)
			s.authErr = fmt.Errorf("%w (HTTP %d)", errAuth, status)
			s.logEvery("auth", authLogEvery, slog.LevelError,
				"DATADOG REJECTED THE API KEY: no metrics are being delivered. Check the key in the environment variable and that the site matches the key's organisation",
				"status", status, "api_key_env", s.cfg.APIKeyEnv, "intake", in.endpoint, "retry_every", s.cfg.AuthRetryInterval.String(), "response", excerpt(body))
			return s.authErr
		case status == http.StatusTooManyRequests:
			s.failure("rate_limited")
			return errRetry{fmt.Errorf("datadog: HTTP %d, rate limited until %s", status, s.notBefore.UTC().Format(time.RFC3339))}
		case status == http.StatusRequestTimeout || status >= 500:
			reason := "server_error"
			if status == http.StatusRequestTimeout {
				reason = "timeout"
			}
			s.failure(reason)
			return errRetry{fmt.Errorf("datadog: HTTP %d", status)}
		default:
			s.failure("unexpected_status")
			return errRetry{fmt.Errorf("datadog: unexpected HTTP %d: %s", status, excerpt(body))}
		}
	}
	return nil
}

// post sends one compressed body to in and returns the status, headers and
// up to 64 KiB of the response.
func (s *Sink) post(ctx context.Context, in *intake, body []byte) (int, http.Header, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.endpoint, bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Encoding", in.encoding)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "flowmetrics")
	req.Header.Set("DD-API-KEY", s.apiKey)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // let the connection be reused
	return resp.StatusCode, resp.Header, rb, nil
}

// noteRateLimit sets notBefore from X-RateLimit-Reset (seconds until the
// period resets) when the response is a 429 or says no requests remain, and
// from Retry-After on 429 and 5xx.
func (s *Sink) noteRateLimit(status int, h http.Header, now time.Time) {
	var wait time.Duration
	exhausted := h.Get("X-RateLimit-Remaining") == "0"
	if status == http.StatusTooManyRequests || exhausted {
		if v, err := strconv.ParseFloat(strings.TrimSpace(h.Get("X-RateLimit-Reset")), 64); err == nil && v > 0 {
			wait = time.Duration(v * float64(time.Second))
		} else if status == http.StatusTooManyRequests {
			if v, err := strconv.Atoi(strings.TrimSpace(h.Get("X-RateLimit-Period"))); err == nil && v > 0 {
				wait = time.Duration(v) * time.Second
			}
		}
	}
	if ra := strings.TrimSpace(h.Get("Retry-After")); ra != "" && (status == http.StatusTooManyRequests || status >= 500) {
		if v, err := strconv.Atoi(ra); err == nil && v > 0 {
			wait = max(wait, time.Duration(v)*time.Second)
		} else if t, err := http.ParseTime(ra); err == nil {
			wait = max(wait, t.Sub(now))
		}
	}
	if wait <= 0 {
		return
	}
	wait = min(wait, maxServerWait)
	if t := now.Add(wait); t.After(s.notBefore) {
		s.notBefore = t
	}
}

// backoff returns the jittered wait before retry attempt+1: between half and
// all of RetryInitial·2^attempt, capped at RetryMax.
func (s *Sink) backoff(attempt int) time.Duration {
	d := s.cfg.RetryInitial << min(attempt, 30)
	if d <= 0 || d > s.cfg.RetryMax {
		d = s.cfg.RetryMax
	}
	return d/2 + rand.N(d/2+1)
}

// wait sleeps until t on the sink's clock, or fails at once if ctx would
// expire first.
func (s *Sink) wait(ctx context.Context, t time.Time) error {
	d := t.Sub(s.cfg.Now())
	if d <= 0 {
		return ctx.Err()
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return fmt.Errorf("datadog: not retrying before %s: beyond the send deadline", t.UTC().Format(time.RFC3339))
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closing:
		return errors.New("datadog: sink closed while waiting to retry")
	case <-timer.C:
		return nil
	}
}

func (s *Sink) failure(reason string) {
	s.m.SinkFailures.WithLabelValues(Name, reason).Inc()
}

// logEvery logs msg at most once per period for kind.
func (s *Sink) logEvery(kind string, period time.Duration, level slog.Level, msg string, args ...any) {
	now := s.cfg.Now()
	if last, ok := s.lastLog[kind]; ok && now.Sub(last) < period {
		return
	}
	s.lastLog[kind] = now
	s.log.Log(context.Background(), level, msg, args...)
}

func excerpt(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > maxErrBody {
		s = s[:maxErrBody] + "…"
	}
	return s
}

// Close stops a Send that is waiting to retry (it returns an error, so its
// points stay in the pipeline's outbox), releases idle connections and waits
// for a Send in progress to return (within ctx's deadline). Nothing is
// buffered, so there is nothing to flush. It is safe to call twice.
func (s *Sink) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.client.CloseIdleConnections()
		done := make(chan struct{})
		go func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			s.closeErr = fmt.Errorf("datadog: close: a send still in progress: %w", ctx.Err())
		}
	})
	return s.closeErr
}

// Restore implements flowmetrics.StatefulSink: the count-mode totals as last
// committed with the sink's cursor (see Ledger.Restore). A failed Send's
// kept batch is forgotten: what of it was delivered is no longer in the
// totals, so it is sent again in full, from them, if its points come back.
func (s *Sink) Restore(ctx context.Context, state map[string][]byte) error {
	s.mu.Lock()
	s.pending = nil
	s.mu.Unlock()
	return s.ledger.Restore(state)
}

// TakeState implements flowmetrics.StatefulSink: the totals that changed
// since the last call, for the pipeline to commit with this batch's cursor.
func (s *Sink) TakeState() flowmetrics.StateUpdate { return s.ledger.TakeState() }

var (
	_ flowmetrics.StatefulSink = (*Sink)(nil)
	_ flowmetrics.PathSink     = (*Sink)(nil)
)
