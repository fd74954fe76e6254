package dogstatsd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/DataDog/datadog-go/v5/statsd"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// Name is the sink's name in telemetry and the outbox.
const Name = "dogstatsd"

const (
	// flushEvery bounds what is queued in the client between flushes, so
	// a large batch cannot overflow its sender queue (which would drop).
	flushEvery  = 256
	errLogEvery = time.Minute
)

// Sink sends points as DogStatsD timestamped counts.
type Sink struct {
	cfg    Config
	client *statsd.Client
	udp    *udpConn // the client's socket when it is UDP (see udp.go)
	ledger *datadog.Ledger
	m      *telemetry.Metrics
	log    *slog.Logger

	mu      sync.Mutex // held by Send, so that Close can wait for it
	pending *datadog.Batch
	lastLog time.Time

	errMu    sync.Mutex // written by the client's sender goroutine
	errCount int
	firstErr error

	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}
}

// New returns a Sink for cfg (which should have passed Validate). For UDP it
// resolves the address;
// for a Unix socket it connects on the first write, so an Agent that is not
// up yet is not an error here. m and log may be nil.
func New(cfg Config, d sink.Deps) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("dogstatsd: %w", err)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d = d.WithDefaults()
	m, log := d.Metrics, d.Log.With("sink", Name)
	if cfg.Mode == "" {
		cfg.Mode = datadog.Count
	}
	ledger := datadog.NewLedger(Name, cfg.Mode, cfg.LatePolicy, cfg.Now, sink.Deps{Namer: d.Namer, Metrics: m, Log: log})
	// DogStatsD distributions carry no timestamp (the receiver stamps
	// them on arrival): no late policy for them, in either mode.
	ledger.SetUntimed()
	s := &Sink{
		cfg:    cfg,
		ledger: ledger,
		m:      m,
		log:    log,
		closed: make(chan struct{}),
	}
	opts := []statsd.Option{statsd.WithErrorHandler(s.clientError)}
	if !cfg.ClientTelemetry {
		opts = append(opts, statsd.WithoutTelemetry())
	}
	if !cfg.OriginDetection {
		opts = append(opts, statsd.WithoutOriginDetection())
	}
	if cfg.WriteTimeout > 0 {
		opts = append(opts, statsd.WithWriteTimeout(cfg.WriteTimeout))
	}
	if cfg.MaxDatagramBytes > 0 {
		opts = append(opts, statsd.WithMaxBytesPerPayload(cfg.MaxDatagramBytes))
	}
	addr := cfg.addr()
	c, udp, err := newClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("dogstatsd: %w", err)
	}
	s.udp = udp
	s.client = c
	s.log.Info("dogstatsd sink ready", "addr", addr, "transport", c.GetTransport(), "mode", string(cfg.Mode), "late_policy", string(cfg.LatePolicy))
	return s, nil
}

// Name returns "dogstatsd".
func (s *Sink) Name() string { return Name }

// clientError is the client's error handler: it is called from the client's
// goroutines for every datagram that could not be queued or written.
func (s *Sink) clientError(err error) {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if s.errCount == 0 {
		s.firstErr = err
	}
	s.errCount++
}

func (s *Sink) takeErrors() (int, error) {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	n, err := s.errCount, s.firstErr
	s.errCount, s.firstErr = 0, nil
	return n, err
}

// Send writes, in count mode, one timestamped count per series and second
// (the running total: see the package comment), in distribution mode one
// distribution value of 1 per occurrence, and flushes the client, so a nil
// return means every datagram was handed to the socket. Over UDP that is all
// a sender can know: a datagram to an Agent that is down may vanish without
// an error.
//
// If any datagram could not be written, Send returns a retryable error and
// nothing counts as delivered; the pipeline's retry sends the batch again.
// In count mode that is harmless for datagrams that did arrive (Datadog
// keeps the last value of a series and second), unless the retry comes so
// late that a point must be clamped to a different second. In distribution
// mode the values that did arrive the first time count twice: the client
// reports write errors asynchronously, so which datagrams failed is not
// known.
//
// The count-mode totals become durable when the pipeline commits TakeState
// with the batch's cursor (after a nil return only), so a restarted process
// goes on from them.
func (s *Sink) Send(ctx context.Context, points []flowmetrics.Point) error {
	return s.deliver(ctx, len(points), func(b *datadog.Batch) bool { return b.Matches(points) }, func() *datadog.Batch { return s.ledger.NewBatch(points) })
}

// SendPaths implements flowmetrics.PathSink: exits, funnels and
// experiments as the occurrences are sent (count mode: a timestamped
// running total of conversations per series and second; distribution
// mode: a value of 1 per conversation), step timings and timings as one
// distribution value (|d, seconds) per conversation in both modes, so that
// Datadog computes their percentiles from every value. Through the Lambda
// Extension (distribution mode only) every path point is a distribution,
// which it merges and Datadog adds up. Errors and retries are Send's.
func (s *Sink) SendPaths(ctx context.Context, points []flowmetrics.PathPoint) error {
	return s.deliver(ctx, len(points), func(b *datadog.Batch) bool { return b.MatchesPaths(points) }, func() *datadog.Batch { return s.ledger.NewPathBatch(points) })
}

// deliver writes the Batch of n points that newBatch makes, or the kept one
// when matches says it was made from the same points.
func (s *Sink) deliver(ctx context.Context, n int, matches func(*datadog.Batch) bool, newBatch func() *datadog.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closed:
		return errors.New("dogstatsd: send after close")
	default:
	}
	if n == 0 {
		return nil
	}
	b := s.pending
	if b == nil || !matches(b) {
		b = newBatch()
	}
	s.pending = b
	samples := s.ledger.Plan(b)

	s.takeErrors() // errors of earlier, unrelated flushes are not this batch's
	s.udp.pendingError()
	var firstErr error
	failed, queued := 0, 0
	for _, x := range samples {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("dogstatsd: %w", err)
		}
		if x.Dist() {
			// One value of 1 per occurrence or conversation, or a
			// duration's own value: the Agent adds every value of a
			// distribution up, whoever sent it.
			for i := int64(0); i < x.Value; i++ {
				v := 1.0
				if x.Values != nil {
					v = x.Values[i]
				}
				if err := s.client.Distribution(x.Name, v, x.Tags, 1); err != nil {
					failed++
					firstErr = cmp(firstErr, err)
				}
				if queued++; queued%flushEvery == 0 {
					s.client.Flush()
				}
			}
			continue
		}
		if err := s.client.CountWithTimestamp(x.Name, x.Value, x.Tags, 1, time.Unix(x.Timestamp, 0)); err != nil {
			failed++
			firstErr = cmp(firstErr, err)
		}
		if queued++; queued%flushEvery == 0 {
			s.client.Flush()
		}
	}
	s.client.Flush()
	if err := s.udp.pendingError(); err != nil {
		failed++
		firstErr = cmp(firstErr, err)
	}
	if n, err := s.takeErrors(); n > 0 {
		failed += n
		firstErr = cmp(firstErr, err)
	}
	if failed > 0 {
		s.m.SinkFailures.WithLabelValues(Name, "write").Inc()
		if now := s.cfg.Now(); now.Sub(s.lastLog) >= errLogEvery {
			s.lastLog = now
			s.log.Warn("dogstatsd: datagrams not written; will retry", "failed", failed, "samples", len(samples), "err", firstErr)
		}
		return fmt.Errorf("dogstatsd: %d of %d writes failed: %w", failed, len(samples), firstErr)
	}
	s.ledger.Delivered(b, samples)
	s.pending = nil
	return nil
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// Close flushes the client and closes its socket, within ctx's deadline. It
// is safe to call twice.
func (s *Sink) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		close(s.closed)
		done := make(chan error, 1)
		go func() {
			s.mu.Lock() // let a Send in progress finish first
			defer s.mu.Unlock()
			s.client.Flush()
			done <- s.client.Close()
		}()
		select {
		case err := <-done:
			s.closeErr = err
		case <-ctx.Done():
			s.closeErr = fmt.Errorf("dogstatsd: close: %w", ctx.Err())
		}
	})
	return s.closeErr
}

// Restore implements flowmetrics.StatefulSink: the count-mode totals as last
// committed with the sink's cursor (see datadog.Ledger.Restore). A failed
// Send's kept batch is forgotten, as in the datadog sink.
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
