package lambdafn_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/lambdafn"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
)

const examples = "../../examples/"

// recordingSink keeps what it was sent; while failing is set it refuses.
type recordingSink struct {
	mu      sync.Mutex
	points  []flowmetrics.Point
	failing bool
}

func (s *recordingSink) Name() string { return "recording" }
func (s *recordingSink) Send(ctx context.Context, ps []flowmetrics.Point) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing {
		return errors.New("backend down")
	}
	s.points = append(s.points, ps...)
	return nil
}
func (s *recordingSink) Close(ctx context.Context) error { return nil }
func (s *recordingSink) setFailing(f bool)               { s.mu.Lock(); s.failing = f; s.mu.Unlock() }

// total returns the count delivered per "flow/metric".
func (s *recordingSink) total() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int64{}
	for _, p := range s.points {
		out[p.Flow+"/"+p.Metric] += p.Count
	}
	return out
}

// failingStore refuses every claim.
type failingStore struct{ flowmetrics.Store }

func (failingStore) Claim(context.Context, []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	return nil, errors.New("throttled")
}

var testCfg = lambdafn.Config{
	Pipeline: pipeline.Config{RetryMin: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond, CacheTTL: lambdafn.DefaultCacheTTL},
}

func newHandler(t *testing.T, st flowmetrics.Store, sinks ...flowmetrics.Sink) *lambdafn.Handler {
	t.Helper()
	h, err := lambdafn.NewHandler(context.Background(), st, sinks, testCfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		h.Close(ctx)
	})
	return h
}

func dynamo(t *testing.T, owner string) *dynamostore.Store {
	t.Helper()
	srv := dynalitetest.Start(t)
	st, err := dynamostore.Open(dynamostore.Config{Table: srv.CreateTable(t), Owner: owner, ReadFirst: true}, srv.Client, store.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// invocation gives a handler call the deadline Lambda would.
func invocation(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func envelope(conv string, attrs map[string]string) string {
	return string(genesys.Envelope{
		Conversation: conv, Participant: "p1", Time: time.UnixMilli(1795167108900), Attributes: attrs,
		ID: "e-" + conv, Source: "aws.partner/genesys.com/cloud/org/flow-metrics", Region: "eu-west-2",
	}.JSON())
}

func sqsEvent(bodies ...string) events.SQSEvent {
	var ev events.SQSEvent
	for i, b := range bodies {
		ev.Records = append(ev.Records, events.SQSMessage{MessageId: fmt.Sprintf("m%d", i), Body: b, EventSource: "aws:sqs"})
	}
	return ev
}

func failures(r events.SQSEventResponse) []string {
	var out []string
	for _, f := range r.BatchItemFailures {
		out = append(out, f.ItemIdentifier)
	}
	return out
}

func TestSQSSampleBatch(t *testing.T) {
	payload, err := os.ReadFile(examples + "sqs-batch.json")
	if err != nil {
		t.Fatal(err)
	}
	sink := &recordingSink{}
	h := newHandler(t, dynamo(t, "a"), sink)
	out, err := h.Invoke(invocation(t), payload)
	if err != nil {
		t.Fatal(err)
	}
	var resp events.SQSEventResponse
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatalf("response %s: %v", out, err)
	}
	if len(resp.BatchItemFailures) != 0 {
		t.Errorf("failures: got %v, want none", failures(resp))
	}
	want := map[string]int64{"CustomerRouting/Unknown": 1, "CustomerRouting/Transferred": 1, "Billing Main/PaymentTaken": 1}
	if got := sink.total(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delivered: got %v, want %v", got, want)
	}
	// The same batch again (SQS redelivery) counts nothing more.
	if _, err := h.Invoke(invocation(t), payload); err != nil {
		t.Fatal(err)
	}
	if got := sink.total(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after redelivery: got %v, want %v", got, want)
	}
}

func TestSQSBadRecordsAreNotRetried(t *testing.T) {
	sink := &recordingSink{}
	h := newHandler(t, dynamo(t, "a"), sink)
	ev := sqsEvent(
		`{not json`,
		envelope("c1", map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1"}),
		`{"detail-type":"v2.detail.events.conversation.{id}.attributes","detail":{"topicName":"v2.detail.events.conversation.c2.attributes","eventBody":{"attributes":{}}}}`,
		`{"detail-type":"v2.detail.events.conversation.{id}.customer.end","detail":{"topicName":"v2.detail.events.conversation.c3.customer.end","eventBody":{}}}`,
	)
	resp := h.HandleSQS(invocation(t), ev)
	if len(resp.BatchItemFailures) != 0 {
		t.Errorf("failures: got %v, want none (bad JSON and an event without id can never succeed; other topics are skipped)", failures(resp))
	}
	if got := sink.total()["F/A"]; got != 1 {
		t.Errorf("the good record: got %d, want 1", got)
	}
}

// A sink failure lists the batch's accepted records; when they come back
// and the sink is up, every occurrence is delivered exactly once.
func TestSQSSinkFailureRetriedExactlyOnce(t *testing.T) {
	sink := &recordingSink{failing: true}
	h := newHandler(t, dynamo(t, "a"), sink)
	ev := sqsEvent(
		envelope("c1", map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1", "Other": "x"}),
		envelope("c2", map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1", "FMetric_B(2026-11-20T09:31:05Z)": "1"}),
		`[]`,
	)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	resp := h.HandleSQS(ctx, ev)
	if got := strings.Join(failures(resp), ","); got != "m0,m1" {
		t.Errorf("failures while the sink is down: got %q, want m0,m1", got)
	}
	sink.setFailing(false)
	resp = h.HandleSQS(invocation(t), sqsEvent(ev.Records[0].Body, ev.Records[1].Body))
	if len(resp.BatchItemFailures) != 0 {
		t.Errorf("failures after recovery: got %v, want none", failures(resp))
	}
	want := map[string]int64{"F/A": 2, "F/B": 1}
	if got := sink.total(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delivered: got %v, want %v", got, want)
	}
}

func TestSQSStoreFailureListsAccepted(t *testing.T) {
	sink := &recordingSink{}
	h := newHandler(t, failingStore{memstore.New(store.Options{})}, sink)
	resp := h.HandleSQS(invocation(t), sqsEvent(`nope`, envelope("c1", map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1"})))
	if got := strings.Join(failures(resp), ","); got != "m1" {
		t.Errorf("failures: got %q, want m1 only", got)
	}
}

func TestEventBridge(t *testing.T) {
	sink := &recordingSink{}
	h := newHandler(t, dynamo(t, "a"), sink)
	sample, err := os.ReadFile(examples + "attributes-eventbridge.json")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		payload string
		wantErr bool
	}{
		{"sample envelope", string(sample), false},
		{"its repeat", string(sample), false},
		{"bare detail", `{"topicName":"v2.detail.events.conversation.c9.attributes","eventBody":{"conversationId":"c9","attributes":{"GMetric_X(2026-11-20T09:31:00Z)":"1"}}}`, false},
		{"not JSON: reported, not retried", `{"detail":`, false},
		{"other topic", `{"detail-type":"x","detail":{"topicName":"v2.detail.events.conversation.c1.customer.start","eventBody":{}}}`, false},
	}
	for _, c := range cases {
		out, err := h.Invoke(invocation(t), []byte(c.payload))
		if (err != nil) != c.wantErr {
			t.Errorf("%s: got error %v, want error %v", c.name, err, c.wantErr)
		}
		if err == nil && string(out) != "null" {
			t.Errorf("%s: got response %s, want null", c.name, out)
		}
	}
	want := map[string]int64{"CustomerRouting/Unknown": 1, "G/X": 1}
	if got := sink.total(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("delivered: got %v, want %v", got, want)
	}
}

func TestEventBridgeFailuresAreRetried(t *testing.T) {
	ev := []byte(envelope("c1", map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1"}))
	h := newHandler(t, failingStore{memstore.New(store.Options{})}, &recordingSink{})
	if err := h.HandleEventBridge(invocation(t), ev); err == nil {
		t.Error("store failure: got nil, want an error so Lambda retries")
	}
	sink := &recordingSink{failing: true}
	h = newHandler(t, dynamo(t, "a"), sink)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := h.HandleEventBridge(ctx, ev); err == nil {
		t.Error("sink failure: got nil, want an error so Lambda retries")
	}
}

func TestConfigFromEnv(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	cases := []struct {
		name    string
		getenv  func(string) string
		wantErr string
		check   func(lambdafn.Config) string
	}{
		{"defaults", env("FLOWMETRICS_TABLE", "t"), "", func(c lambdafn.Config) string {
			if c.Table != "t" || fmt.Sprint(c.Sinks) != "[dogstatsd]" || !c.Store.ReadFirst || c.Pipeline.CacheTTL != lambdafn.DefaultCacheTTL {
				return fmt.Sprintf("got %+v", c)
			}
			return ""
		}},
		{"everything", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_SINK", "emf, datadog", "FLOWMETRICS_LEASE", "30s",
			"FLOWMETRICS_READ_FIRST", "false", "FLOWMETRICS_TAGS", "env:prod,team:cx", "FLOWMETRICS_BUCKET", "60s"), "", func(c lambdafn.Config) string {
			if fmt.Sprint(c.Sinks) != "[emf datadog]" || c.Store.Lease != 30*time.Second || c.Store.ReadFirst ||
				c.Naming.Tags["team"] != "cx" || c.Pipeline.Bucket != time.Minute {
				return fmt.Sprintf("got %+v", c)
			}
			return ""
		}},
		{"cardinality limit", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_CARDINALITY_LIMIT", "50"), "", func(c lambdafn.Config) string {
			if c.CardinalityLimit != 50 {
				return fmt.Sprintf("cardinality limit %d, want 50", c.CardinalityLimit)
			}
			return ""
		}},
		{"bad cardinality limit", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_CARDINALITY_LIMIT", "lots"), "FLOWMETRICS_CARDINALITY_LIMIT", nil},
		{"no table", env(), "FLOWMETRICS_TABLE", nil},
		{"unknown sink", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_SINK", "prometheus"), "unknown sink", nil},
		{"bad duration", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_LEASE", "soon"), "FLOWMETRICS_LEASE", nil},
		{"margin beyond lease", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_LEASE", "5s", "FLOWMETRICS_LEASE_MARGIN", "10s"), "margin", nil},
		{"bad tag", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_TAGS", "prod"), "key:value", nil},
		{"cache outlives retention", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_CACHE_TTL", "200h", "FLOWMETRICS_RETENTION", "1h"),
			"FLOWMETRICS_CACHE_TTL (200h0m0s) must be shorter than FLOWMETRICS_RETENTION (1h0m0s)", nil},
		{"cache outlives default retention", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_CACHE_TTL", "200h"), "FLOWMETRICS_RETENTION (168h0m0s)", nil},
		{"send could outlast the lease", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_FUNCTION_TIMEOUT", "60s"),
			"FLOWMETRICS_FUNCTION_TIMEOUT − FLOWMETRICS_FLUSH_RESERVE (58s) must not be longer than FLOWMETRICS_LEASE − FLOWMETRICS_LEASE_MARGIN (30s)", nil},
		{"timeout within the lease", env("FLOWMETRICS_TABLE", "t", "FLOWMETRICS_FUNCTION_TIMEOUT", "20s"), "", func(c lambdafn.Config) string {
			if c.FunctionTimeout != 20*time.Second {
				return fmt.Sprintf("function timeout %v, want 20s", c.FunctionTimeout)
			}
			return ""
		}},
	}
	for _, c := range cases {
		cfg, err := lambdafn.ConfigFromEnv(c.getenv)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: got error %v, want one mentioning %q", c.name, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if msg := c.check(cfg); msg != "" {
			t.Errorf("%s: %s", c.name, msg)
		}
	}
}

// A bad combination is refused at cold start, before anything is built.
func TestColdStartRefusesBadCombination(t *testing.T) {
	env := map[string]string{"FLOWMETRICS_TABLE": "t", "FLOWMETRICS_CACHE_TTL": "200h", "FLOWMETRICS_RETENTION": "1h"}
	err := lambdafn.Run(context.Background(), func(k string) string { return env[k] }, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "must be shorter than FLOWMETRICS_RETENTION") {
		t.Errorf("cold start with FLOWMETRICS_CACHE_TTL=200h, FLOWMETRICS_RETENTION=1h: got %v, want the refusal", err)
	}
}

// TestCardinalityLimitSharedByInstances runs two function instances on one
// table with a limit of 2, then a cold start: the pairs admitted by one
// instance count against the other's limit, and a new instance starts with
// them, so the deployment never sends more than 2 pairs besides the
// overflow series.
func TestCardinalityLimitSharedByInstances(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	cfg := testCfg
	cfg.CardinalityLimit = 2
	instance := func(owner string) (*lambdafn.Handler, *recordingSink) {
		st, err := dynamostore.Open(dynamostore.Config{Table: table, Owner: owner, ReadFirst: true}, srv.Client, store.Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		sink := &recordingSink{}
		h, err := lambdafn.NewHandler(context.Background(), st, []flowmetrics.Sink{sink}, cfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close(context.Background()) })
		return h, sink
	}
	send := func(h *lambdafn.Handler, conv, flow string) {
		t.Helper()
		payload, _ := json.Marshal(sqsEvent(envelope(conv, map[string]string{flow + "Metric_M(2026-11-20T09:31:00Z)": "1"})))
		out, err := h.Invoke(invocation(t), payload)
		if err != nil {
			t.Fatal(err)
		}
		var resp events.SQSEventResponse
		json.Unmarshal(out, &resp)
		if len(resp.BatchItemFailures) != 0 {
			t.Fatalf("failures: %v", failures(resp))
		}
	}
	a, sinkA := instance("a")
	b, sinkB := instance("b")
	send(a, "c1", "A")
	send(b, "c2", "B")
	send(a, "c3", "C") // the limit is reached by b's pair, which a never saw
	send(b, "c4", "A")
	if got, want := fmt.Sprint(sinkA.total()), fmt.Sprint(map[string]int64{"A/M": 1, "overflow/overflow": 1}); got != want {
		t.Errorf("instance a delivered %v, want %v", got, want)
	}
	if got, want := fmt.Sprint(sinkB.total()), fmt.Sprint(map[string]int64{"A/M": 1, "B/M": 1}); got != want {
		t.Errorf("instance b delivered %v, want %v", got, want)
	}
	c, sinkC := instance("c") // a cold start
	send(c, "c5", "B")
	send(c, "c6", "D")
	if got, want := fmt.Sprint(sinkC.total()), fmt.Sprint(map[string]int64{"B/M": 1, "overflow/overflow": 1}); got != want {
		t.Errorf("a cold start delivered %v, want %v", got, want)
	}
}
