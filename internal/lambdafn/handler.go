package lambdafn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-lambda-go/lambda"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/cardinality"
	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/prometheus"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
	"github.com/flowmetrics/flowmetrics/internal/wire"
)

// Handler answers Lambda invocations from an EventBridge rule (one event)
// or an SQS event source (a batch). It implements lambda.Handler, telling
// the two apart by the payload, so one function serves either trigger.
type Handler struct {
	p       *pipeline.Pipeline
	store   flowmetrics.Store
	settle  func(context.Context) error
	log     *slog.Logger
	reserve time.Duration
	report  *reporter
	// paths: conversation paths are on (the store was opened with them).
	paths bool
	// closeQ sends the delayed close message of each customer.end; nil
	// when there is no close queue (the sweep closes ended paths then).
	closeQ *closeQueue
}

// NewHandler wires a handler on a store and sinks and registers the sinks
// with the store. The handler owns both from then on (Close closes them).
func NewHandler(ctx context.Context, st flowmetrics.Store, sinks []flowmetrics.Sink, cfg Config, m *telemetry.Metrics, log *slog.Logger) (*Handler, error) {
	if log == nil {
		log = slog.Default()
	}
	if m == nil {
		m = telemetry.New()
	}
	pc := cfg.Pipeline
	if pc.FlushAttempts == 0 {
		pc.FlushAttempts = DefaultFlushAttempts
	}
	g, err := cardinality.Open(ctx, cfg.CardinalityLimit, st, log)
	if err != nil {
		return nil, err
	}
	pc.Guard = g
	on := cfg.Paths.IsEnabled()
	if on {
		pc.Derive = paths.New(cfg.Paths, pc.Guard).Derive
		// Events that bring only known keys still keep their path open:
		// the known-key cache lets one through per step of the store's
		// idle deadlines.
		pc.PathTouch = cfg.Paths.Options().Step()
		if t, ok := st.(interface{ PathTouch() time.Duration }); ok {
			pc.PathTouch = t.PathTouch()
		}
	}
	h := &Handler{
		paths: on,
		p:     pipeline.New(st, sinks, pc, m, log),
		store: st, log: log, reserve: cfg.FlushReserve,
		report: &reporter{w: cfg.MetricsOut, function: cfg.FunctionName, now: time.Now},
	}
	if s, ok := st.(flowmetrics.Settler); ok {
		h.settle = s.Settle
	}
	if on && cfg.CloseQueueURL != "" {
		if cfg.SQS == nil {
			return nil, errors.New("FLOWMETRICS_CLOSE_QUEUE_URL is set but there is no SQS client")
		}
		h.closeQ = &closeQueue{api: cfg.SQS, url: cfg.CloseQueueURL, delay: closeDelay(cfg.Paths.WithDefaults().Grace)}
	}
	if err := h.p.Register(ctx); err != nil {
		return nil, err
	}
	return h, nil
}

// New builds the handler of the deployed function: the DynamoDB store on
// the configured table, and the configured sinks. It reads the Datadog API
// key from Secrets Manager when asked to.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Handler, error) {
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("aws config: %w", err)
	}
	client := dynamodb.NewFromConfig(awsCfg, func(o *dynamodb.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = &cfg.Endpoint
		}
	})
	secret, err := apiKeySecret(ctx, cfg, secretsmanager.NewFromConfig(awsCfg))
	if err != nil {
		return nil, err
	}
	m := telemetry.New()
	sc, err := cfg.sinks()
	if err != nil {
		return nil, err
	}
	sinks, err := wire.Sinks(sc, sink.Deps{Namer: naming.New(cfg.Naming), Metrics: m, Log: log, Secret: secret})
	if err != nil {
		return nil, err
	}
	dc := cfg.Store
	dc.Table = cfg.Table
	opts := store.Options{Retention: cfg.Retention}
	if cfg.Paths.IsEnabled() {
		opts.Paths = cfg.Paths.WithDefaults().Options()
	}
	if cfg.CloseQueueURL != "" && cfg.SQS == nil {
		cfg.SQS = sqs.NewFromConfig(awsCfg, func(o *sqs.Options) {
			if cfg.SQSEndpoint != "" {
				o.BaseEndpoint = &cfg.SQSEndpoint
			}
		})
	}
	st, err := dynamostore.Open(dc, client, opts, log)
	if err != nil {
		closeAll(sinks)
		return nil, err
	}
	h, err := NewHandler(ctx, st, sinks, cfg, m, log)
	if err != nil {
		closeAll(sinks)
		st.Close()
		return nil, err
	}
	return h, nil
}

// apiKeySecret returns how the sinks read their secrets: from the
// environment, except that the Datadog API key comes from Secrets Manager
// (DD_API_KEY_SECRET_ARN) when the datadog sink is on and DD_API_KEY is
// empty.
func apiKeySecret(ctx context.Context, cfg Config, sm *secretsmanager.Client) (func(string) string, error) {
	if !slices.Contains(cfg.Sinks, "datadog") || os.Getenv(datadog.DefaultAPIKeyEnv) != "" || cfg.APIKeySecretARN == "" {
		return os.Getenv, nil
	}
	out, err := sm.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: &cfg.APIKeySecretARN})
	if err != nil {
		return nil, fmt.Errorf("read the Datadog API key from %s: %w", cfg.APIKeySecretARN, err)
	}
	if out.SecretString == nil {
		return nil, fmt.Errorf("secret %s has no string value", cfg.APIKeySecretARN)
	}
	key := strings.TrimSpace(*out.SecretString)
	return func(env string) string {
		if env == datadog.DefaultAPIKeyEnv {
			return key
		}
		return os.Getenv(env)
	}, nil
}

func closeAll(sinks []flowmetrics.Sink) {
	for _, s := range sinks {
		s.Close(context.Background())
	}
}

// sinks turns FLOWMETRICS_SINK's list into the sinks section wire.Sinks
// builds: the named sinks, and no Prometheus (nothing scrapes a Lambda).
func (c Config) sinks() (config.Sinks, error) {
	off := false
	s := config.Sinks{Prometheus: prometheus.Config{Enabled: &off}}
	for _, name := range c.Sinks {
		switch name {
		case "dogstatsd":
			s.DogStatsD = &c.DogStatsD
		case "datadog":
			s.Datadog = &c.Datadog
		case "emf":
			s.EMF = &c.EMF
		default:
			return s, fmt.Errorf("unknown sink %q", name)
		}
	}
	return s, nil
}

// Invoke implements lambda.Handler: an SQS event (a "Records" array from
// aws:sqs) gets an SQSEventResponse; anything else is one EventBridge event.
func (h *Handler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	if c, ok := parseControl(payload); ok && c.Flowmetrics == controlSweep {
		// A scheduled sweep invoking the function directly.
		if err := h.HandleSweep(ctx); err != nil {
			h.log.Error("sweep failed", "err", err)
			return nil, err
		}
		return []byte("null"), nil
	}
	if isSQS(payload) {
		var ev events.SQSEvent
		if err := json.Unmarshal(payload, &ev); err != nil {
			// An SQS event is built by Lambda; if it does not parse,
			// failing the invocation retries the whole batch.
			return nil, fmt.Errorf("sqs event: %w", err)
		}
		return json.Marshal(h.HandleSQS(ctx, ev))
	}
	if err := h.HandleEventBridge(ctx, payload); err != nil {
		return nil, err
	}
	return []byte("null"), nil
}

func isSQS(payload []byte) bool {
	if !bytes.Contains(payload, []byte(`"aws:sqs"`)) {
		return false
	}
	var probe struct {
		Records []struct {
			EventSource string `json:"eventSource"`
		} `json:"Records"`
	}
	return json.Unmarshal(payload, &probe) == nil && len(probe.Records) > 0 && probe.Records[0].EventSource == "aws:sqs"
}

// HandleEventBridge processes one event delivered by an EventBridge rule
// (an envelope, or a bare detail). It returns nil once the event's new
// occurrences are delivered to every sink, and for an event that can never
// succeed (not JSON, not an event), which is logged and counted: retrying
// it would fail the same way. An error (store or sink failure, or a key
// pending under another instance's live lease) makes Lambda retry the
// event.
func (h *Handler) HandleEventBridge(ctx context.Context, payload []byte) error {
	rec := genesys.DecodeValue(payload)
	res, err := h.ingest(ctx, []genesys.Record{rec})
	var pe *pipeline.PendingError
	if err != nil && !errors.As(err, &pe) {
		h.log.Error("claim failed; the event will be retried", "err", err)
		h.report.write(1, 0, "claim")
		return err
	}
	if res.Rejected > 0 {
		h.log.Warn("event rejected; it is not retried", "error", res.Errors[0].Error)
		return nil
	}
	if res.Accepted == 0 {
		return nil
	}
	if _, err := h.scheduleCloses(ctx, []genesys.Record{rec}); err != nil {
		h.log.Error("the event will be retried", "err", err)
		h.report.write(1, 0, "close_queue")
		return err
	}
	if err := h.deliver(ctx); err != nil {
		h.log.Error("delivery failed; the event will be retried", "err", err)
		h.report.write(1, 0, "delivery")
		return err
	}
	if pe != nil {
		// Another instance holds some of the event's keys and may still
		// die before delivering them: only a retry after its lease can
		// tell.
		h.report.write(0, 1, "pending_elsewhere")
		return fmt.Errorf("event deferred: %w", pe)
	}
	return nil
}

// HandleSQS processes a batch from an SQS event source configured with
// ReportBatchItemFailures. A record that can never succeed (not JSON, not an
// event) is logged, counted and not listed, so SQS deletes it. A record
// holding a key that another instance claimed under a live lease is listed,
// so it comes back after that instance delivered or its lease ended. When
// claiming or delivery fails, every accepted record is listed, because the
// occurrences of one record may be delivered in the same send as another's;
// a listed record whose occurrences were in fact delivered is simply known
// when it comes back.
func (h *Handler) HandleSQS(ctx context.Context, ev events.SQSEvent) events.SQSEventResponse {
	// Close and sweep messages (see paths.go) go their own way.
	var msgs []events.SQSMessage
	var ctl []control
	rest := ev.Records[:0:0]
	for _, r := range ev.Records {
		if c, ok := parseControl([]byte(r.Body)); ok {
			msgs, ctl = append(msgs, r), append(ctl, c)
			continue
		}
		rest = append(rest, r)
	}
	var resp events.SQSEventResponse
	if len(rest) > 0 {
		resp = h.handleEvents(ctx, events.SQSEvent{Records: rest})
	}
	if len(msgs) > 0 {
		resp.BatchItemFailures = append(resp.BatchItemFailures, h.handleControl(ctx, msgs, ctl)...)
	}
	return resp
}

func (h *Handler) handleEvents(ctx context.Context, ev events.SQSEvent) events.SQSEventResponse {
	recs := make([]genesys.Record, len(ev.Records))
	for i, r := range ev.Records {
		recs[i] = genesys.DecodeValue([]byte(r.Body))
		recs[i].Index = i
	}
	var resp events.SQSEventResponse
	// rejected are the records that can never succeed: bad input, and
	// claims the store refused for good (a conversation past its bounds,
	// a DynamoDB validation error). They are never listed, so SQS deletes
	// them and they cannot hold up the rest of the batch.
	rejected := map[int]bool{}
	fail := func(only map[int]bool) int {
		n := 0
		for i, r := range recs {
			if r.Outcome == genesys.Accepted && !rejected[i] && (only == nil || only[i]) {
				resp.BatchItemFailures = append(resp.BatchItemFailures, events.SQSBatchItemFailure{ItemIdentifier: ev.Records[i].MessageId})
				n++
			}
		}
		return n
	}
	res, err := h.ingest(ctx, recs)
	for _, e := range res.Errors {
		rejected[e.Index] = true
	}
	if len(res.Errors) > 0 {
		first := res.Errors[0]
		h.log.Warn("records rejected; they are not retried", "rejected", len(res.Errors),
			"first_message_id", ev.Records[first.Index].MessageId, "first_error", first.Error)
	}
	var pe *pipeline.PendingError
	if err != nil && !errors.As(err, &pe) {
		h.log.Error("claim failed; the batch's events will be retried", "records", len(recs), "err", err)
		h.report.write(fail(nil), 0, "claim")
		return resp
	}
	if res.Accepted == 0 {
		return resp
	}
	if unsent, err := h.scheduleCloses(ctx, recs); err != nil {
		h.log.Error("customer.end records will be retried", "records", len(unsent), "err", err)
		h.report.write(fail(unsent), 0, "close_queue")
		for i := range unsent {
			rejected[i] = true // listed once
		}
	}
	if err := h.deliver(ctx); err != nil {
		h.log.Error("delivery failed; the batch's events will be retried", "records", len(recs), "err", err)
		h.report.write(fail(nil), 0, "delivery")
		return resp
	}
	if pe != nil {
		only := map[int]bool{}
		for _, i := range pe.Records {
			only[i] = true
		}
		h.report.write(0, fail(only), "pending_elsewhere")
	}
	return resp
}

// ingest claims the records within the invocation's deadline less the
// reserve: a store that answers slowly fails the claim, and the records
// are retried, instead of running the invocation into its timeout, after
// which Lambda discards the execution environment and the next invocation
// pays a cold start (on a starved machine, every invocation then timed out
// during its own cold start and nothing was ever acknowledged).
func (h *Handler) ingest(ctx context.Context, recs []genesys.Record) (pipeline.Result, error) {
	ctx, cancel := h.bounded(ctx)
	defer cancel()
	return h.p.Ingest(ctx, recs)
}

// deliver flushes the outbox to every sink and settles the store's marks,
// within the invocation's deadline less the reserve.
func (h *Handler) deliver(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-h.reserve))
		defer cancel()
	}
	if err := h.p.Flush(ctx); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	if h.settle != nil {
		if err := h.settle(ctx); err != nil {
			return fmt.Errorf("settle: %w", err)
		}
	}
	return nil
}

// Close flushes what is pending, closes the sinks and the store; it is safe
// to call twice.
func (h *Handler) Close(ctx context.Context) error {
	err := h.p.Close(ctx)
	if h.settle != nil {
		err = errors.Join(err, h.settle(ctx))
	}
	return errors.Join(err, h.store.Close())
}

// Run reads the configuration from getenv, builds the handler and serves
// Lambda invocations until the runtime stops the process. On SIGTERM (sent
// when Lambda shuts an environment down, if an extension is registered) it
// flushes and closes within half a second. logOut receives the logs (stderr
// in Lambda, which goes to CloudWatch Logs).
func Run(ctx context.Context, getenv func(string) string, logOut io.Writer) error {
	cfg, err := ConfigFromEnv(getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("FLOWMETRICS_LOG_LEVEL %q: %w", cfg.LogLevel, err)
	}
	log := slog.New(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: level}))
	cfg.MetricsOut = os.Stdout
	h, err := New(ctx, cfg, log)
	if err != nil {
		return err
	}
	lambda.StartWithOptions(h, lambda.WithContext(ctx), lambda.WithEnableSIGTERM(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 450*time.Millisecond)
		defer cancel()
		if err := h.Close(cctx); err != nil {
			log.Error("shutdown", "err", err)
		}
	}))
	return nil
}
