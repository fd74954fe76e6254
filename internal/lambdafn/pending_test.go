package lambdafn_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/lambdafn"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/dogstatsd"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// syncBuffer is the function's stdout.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// reports returns the function's own EMF lines: reason → [failed, deferred].
func (s *syncBuffer) reports(t *testing.T) map[string][2]int {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][2]int{}
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	for sc.Scan() {
		var l struct {
			AWS struct {
				CloudWatchMetrics []struct{ Namespace string }
			} `json:"_aws"`
			RecordsFailed, RecordsDeferred int
			Reason                         string
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("stdout line %q: %v", sc.Text(), err)
		}
		if len(l.AWS.CloudWatchMetrics) != 1 || l.AWS.CloudWatchMetrics[0].Namespace != lambdafn.ReportNamespace {
			t.Fatalf("stdout line %q: not an EMF line of namespace %s", sc.Text(), lambdafn.ReportNamespace)
		}
		r := out[l.Reason]
		out[l.Reason] = [2]int{r[0] + l.RecordsFailed, r[1] + l.RecordsDeferred}
	}
	return out
}

// twoInstances returns two handlers on one table with a shared clock, and
// a third store ("dead") on the same table that claims without delivering.
func twoInstances(t *testing.T, sink flowmetrics.Sink) (b *lambdafn.Handler, dead *dynamostore.Store, clk *storetest.Clock, out *syncBuffer) {
	t.Helper()
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	clk = storetest.NewClock(time.Now())
	open := func(owner string) *dynamostore.Store {
		st, err := dynamostore.Open(dynamostore.Config{Table: table, Owner: owner, ReadFirst: true}, srv.Client, store.Options{Now: clk.Now}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	dead = open("dead")
	if err := dead.Register(context.Background(), []string{sink.Name()}); err != nil {
		t.Fatal(err)
	}
	out = &syncBuffer{}
	cfg := testCfg
	cfg.Pipeline.Now = clk.Now
	cfg.MetricsOut = out
	b, err := lambdafn.NewHandler(context.Background(), open("b"), []flowmetrics.Sink{sink}, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(context.Background()) })
	return b, dead, clk, out
}

// A record holding a key another instance claimed under a live lease is a
// batch item failure; the rest of the batch is delivered. After the lease
// (the claimer died) the resent record is counted, exactly once.
func TestSQSPendingElsewhereIsRetried(t *testing.T) {
	sink := &recordingSink{}
	h, dead, clk, out := twoInstances(t, sink)
	held := map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1"}
	if _, err := dead.Claim(context.Background(), []flowmetrics.ClaimRequest{{ConversationID: "c1",
		Occurrences: []flowmetrics.Occurrence{storetest.Occ("F", "A", time.Date(2026, 11, 20, 9, 31, 0, 0, time.UTC))}}}); err != nil {
		t.Fatal(err)
	}
	// "dead" holds c1's key: it was handed the same message and dies now.
	ev := sqsEvent(envelope("c1", held), envelope("c2", map[string]string{"FMetric_B(2026-11-20T09:31:05Z)": "1"}))
	resp := h.HandleSQS(invocation(t), ev)
	if got := strings.Join(failures(resp), ","); got != "m0" {
		t.Errorf("failures: got %q, want m0 (its key is pending under a live lease)", got)
	}
	if got := fmt.Sprint(sink.total()); got != "map[F/B:1]" {
		t.Errorf("delivered: got %s, want map[F/B:1]", got)
	}
	if got := out.reports(t); fmt.Sprint(got) != "map[pending_elsewhere:[0 1]]" {
		t.Errorf("reports: got %v, want one deferred record", got)
	}
	// Within the lease the resend is deferred again (and not cached as
	// known, which would acknowledge it).
	clk.Advance(20 * time.Second)
	if resp := h.HandleSQS(invocation(t), sqsEvent(ev.Records[0].Body)); len(resp.BatchItemFailures) != 1 {
		t.Errorf("resend within the lease: got failures %v, want m0", failures(resp))
	}
	clk.Advance(dynamostore.DefaultLease)
	if resp := h.HandleSQS(invocation(t), sqsEvent(ev.Records[0].Body)); len(resp.BatchItemFailures) != 0 {
		t.Errorf("resend after the lease: got failures %v, want none", failures(resp))
	}
	if got := fmt.Sprint(sink.total()); got != "map[F/A:1 F/B:1]" {
		t.Errorf("delivered: got %s, want map[F/A:1 F/B:1]", got)
	}
}

// A direct EventBridge invocation whose key is pending elsewhere returns an
// error, so Lambda retries it.
func TestEventBridgePendingElsewhereFails(t *testing.T) {
	sink := &recordingSink{}
	h, dead, clk, _ := twoInstances(t, sink)
	if _, err := dead.Claim(context.Background(), []flowmetrics.ClaimRequest{{ConversationID: "c1",
		Occurrences: []flowmetrics.Occurrence{storetest.Occ("F", "A", time.Date(2026, 11, 20, 9, 31, 0, 0, time.UTC))}}}); err != nil {
		t.Fatal(err)
	}
	ev := []byte(envelope("c1", map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1"}))
	if err := h.HandleEventBridge(invocation(t), ev); err == nil {
		t.Error("within the lease: got nil, want an error so Lambda retries")
	}
	clk.Advance(dynamostore.DefaultLease + time.Second) // Lambda's first retry comes after a minute
	if err := h.HandleEventBridge(invocation(t), ev); err != nil {
		t.Errorf("retry after the lease: %v", err)
	}
	if got := fmt.Sprint(sink.total()); got != "map[F/A:1]" {
		t.Errorf("delivered: got %s, want map[F/A:1]", got)
	}
}

// A sink that keeps failing fails the invocation after FlushAttempts sends,
// long before the invocation's deadline, and says so on stdout.
func TestSinkDownFailsFast(t *testing.T) {
	sink := &recordingSink{failing: true}
	out := &syncBuffer{}
	cfg := lambdafn.Config{Pipeline: pipeline.Config{CacheTTL: lambdafn.DefaultCacheTTL}, MetricsOut: out}
	h, err := lambdafn.NewHandler(context.Background(), dynamo(t, "a"), []flowmetrics.Sink{sink}, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	resp := h.HandleSQS(ctx, sqsEvent(envelope("c1", map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1"})))
	took := time.Since(start)
	if len(resp.BatchItemFailures) != 1 {
		t.Errorf("failures: got %v, want m0", failures(resp))
	}
	// Default backoff: 0.25–0.5 s, then 0.5–1 s; the third failure ends it.
	if took > 5*time.Second {
		t.Errorf("the invocation took %v, want it to give up after %d sends (under 5 s), not at its deadline", took, lambdafn.DefaultFlushAttempts)
	}
	if got := out.reports(t); fmt.Sprint(got) != "map[delivery:[1 0]]" {
		t.Errorf("reports: got %v, want one failed record", got)
	}
}

// The dogstatsd sink with nothing listening (no extension layer): the
// batch fails within seconds, and no key is marked delivered.
func TestDogStatsDWithoutExtension(t *testing.T) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	sink, err := dogstatsd.New(dogstatsd.Config{Addr: addr}, sink.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	st, err := dynamostore.Open(dynamostore.Config{Table: table, Owner: "a", ReadFirst: true}, srv.Client, store.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	cfg := lambdafn.Config{Pipeline: pipeline.Config{CacheTTL: lambdafn.DefaultCacheTTL}, MetricsOut: out}
	h, err := lambdafn.NewHandler(context.Background(), st, []flowmetrics.Sink{sink}, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	resp := h.HandleSQS(ctx, sqsEvent(envelope("c1", map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1"})))
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %v, want the batch failed within seconds", took)
	}
	if len(resp.BatchItemFailures) != 1 {
		t.Errorf("failures: got %v, want m0", failures(resp))
	}
	got, err := srv.Client.GetItem(context.Background(), &dynamodb.GetItemInput{TableName: aws.String(table),
		Key: map[string]types.AttributeValue{"id": &types.AttributeValueMemberS{Value: "c1"}}, ConsistentRead: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := got.Item["k:FMetric_A(2026-11-20T09:31:00Z)"].(*types.AttributeValueMemberS); !ok || v.Value == "d" {
		t.Errorf("claim mark: got %v, want it pending (not delivered)", got.Item)
	}
	if got := out.reports(t); fmt.Sprint(got) != "map[delivery:[1 0]]" {
		t.Errorf("reports: got %v, want one failed record", got)
	}
}
