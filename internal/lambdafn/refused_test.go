package lambdafn_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/lambdafn"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// TestSQSRefusedRecordsDoNotHoldUpTheBatch: records that can never succeed
// are rejected, counted and acknowledged, and the rest of their batch is
// delivered and acknowledged, on both queue shapes the template deploys:
//
//   - standard: one batch mixing them with good records;
//   - fifo: one message group, so batches come one at a time and a listed
//     record would halt the group; each of three batches holds one.
//
// The refusals: a conversation id past flowmetrics.MaxConversationID (and
// DynamoDB's 2,048-byte key), an event whose new keys would take its
// conversation past MaxConversationKeys, and a conversation whose item
// DynamoDB itself refuses for good (an item left just under 400 KB by an older
// version: one more key passes DynamoDB's 400 KB, a ValidationException).
func TestSQSRefusedRecordsDoNotHoldUpTheBatch(t *testing.T) {
	for _, shape := range []struct {
		name  string
		start func(testing.TB) *dynalitetest.Server
	}{
		{"standard", dynalitetest.Start},
		{"fifo", dynalitetest.StartMoto},
	} {
		t.Run(shape.name, func(t *testing.T) {
			srv := shape.start(t)
			table := srv.CreateTable(t)
			ctx := context.Background()
			// An item just under DynamoDB's limit, as a version without the
			// per-conversation bounds could leave it: the largest the
			// backend takes (DynamoDB counts 400 KB as 409,600 bytes, moto
			// as 400,000), found to within 100 bytes.
			put := func(n int) error {
				_, err := srv.Client.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(table), Item: map[string]types.AttributeValue{
					"id":                            &types.AttributeValueMemberS{Value: "huge"},
					"ttl":                           &types.AttributeValueMemberN{Value: strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)},
					"k:" + strings.Repeat("L", 300): &types.AttributeValueMemberS{Value: "d"},
					"legacy":                        &types.AttributeValueMemberS{Value: strings.Repeat("x", n)},
				}})
				return err
			}
			lo, hi := 380_000, 410_000
			if err := put(lo); err != nil {
				t.Fatalf("seed a %d-byte item: %v", lo, err)
			}
			for hi-lo > 100 {
				if mid := (lo + hi) / 2; put(mid) == nil {
					lo = mid
				} else {
					hi = mid
				}
			}
			if err := put(lo); err != nil {
				t.Fatal(err)
			}
			st, err := dynamostore.Open(dynamostore.Config{Table: table, Owner: "a", ReadFirst: shape.name == "standard"}, srv.Client, store.Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			sink := &recordingSink{}
			m := telemetry.New()
			h, err := lambdafn.NewHandler(ctx, st, []flowmetrics.Sink{sink}, testCfg, m, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { h.Close(context.Background()) })

			many := map[string]string{}
			for i := range flowmetrics.MaxConversationKeys + 1 {
				many[fmt.Sprintf("FMetric_M%04d(2026-11-20T09:31:00Z)", i)] = "1"
			}
			good := func(conv string) string {
				return envelope(conv, map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1"})
			}
			bad := []string{
				envelope(strings.Repeat("c", 3000), map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1"}),
				envelope("full", many),
				envelope("huge", map[string]string{"FMetric_B" + strings.Repeat("b", 190) + "(2026-11-20T09:31:00Z)": "1"}),
			}
			var batches [][]string
			if shape.name == "standard" {
				batches = [][]string{{good("g0"), bad[0], bad[1], good("g1"), bad[2], good("g2")}}
			} else {
				for i, b := range bad {
					batches = append(batches, []string{good(fmt.Sprintf("g%d", 2*i)), b, good(fmt.Sprintf("g%d", 2*i+1))})
				}
			}
			wantGood := int64(len(batches[0]) - 3)
			if shape.name == "fifo" {
				wantGood = 6
			}
			for round := range 2 { // the second round is SQS delivering everything again
				for i, b := range batches {
					resp := h.HandleSQS(invocation(t), sqsEvent(b...))
					if len(resp.BatchItemFailures) != 0 {
						t.Errorf("round %d batch %d: failures %v, want none: a refused record is acknowledged and holds up nothing", round, i, failures(resp))
					}
				}
				if got := sink.total()["F/A"]; got != wantGood {
					t.Errorf("round %d: delivered F/A %d, want %d (each good record once)", round, got, wantGood)
				}
				if got := sink.total()["F/B"+strings.Repeat("b", 190)] + sink.total()["F/M0000"]; got != 0 {
					t.Errorf("round %d: delivered %d occurrences of refused records, want 0", round, got)
				}
			}
			for _, reason := range []string{flowmetrics.RefusedIDTooLong, flowmetrics.RefusedConversation, flowmetrics.RefusedByStore} {
				if got := testutil.ToFloat64(m.RecordsRejected.WithLabelValues(reason)); got != 2 {
					t.Errorf("records_rejected_total{reason=%s}: got %v, want 2 (one per round)", reason, got)
				}
			}
			if got := st.Stats().Refused; got != 4 {
				t.Errorf("store refusals: got %d, want 4 (conversation_full and store_refused, twice)", got)
			}
		})
	}
}

// slowSink is a sink whose first send takes the claim's whole lease
// margin (it moves the shared clock) before it succeeds.
type slowSink struct {
	recordingSink
	name  string
	clk   *storetest.Clock
	by    time.Duration
	slept bool
}

func (s *slowSink) Name() string { return s.name }

func (s *slowSink) Send(ctx context.Context, ps []flowmetrics.Point) error {
	if !s.slept {
		s.slept = true
		s.clk.Advance(s.by)
	}
	return s.recordingSink.Send(ctx, ps)
}

// TestSendOutlastingTheLeaseIsNotAcknowledged: with two sinks, the first
// one's send outlasts Lease − Margin, so the store drops the entry before
// the second sink reads it and that sink's flush has nothing to send. The
// records are then listed as failed, not acknowledged, and their
// redelivery after the lease delivers them to the second sink.
func TestSendOutlastingTheLeaseIsNotAcknowledged(t *testing.T) {
	srv := dynalitetest.Start(t)
	clk := storetest.NewClock(time.Now())
	st, err := dynamostore.Open(dynamostore.Config{Table: srv.CreateTable(t), Owner: "a", ReadFirst: true}, srv.Client, store.Options{Now: clk.Now}, nil)
	if err != nil {
		t.Fatal(err)
	}
	slow := &slowSink{name: "slow", clk: clk, by: dynamostore.DefaultLease - dynamostore.DefaultMargin}
	other := &slowSink{name: "other", slept: true}
	cfg := testCfg
	cfg.Pipeline.Now = clk.Now
	h, err := lambdafn.NewHandler(context.Background(), st, []flowmetrics.Sink{slow, other}, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(context.Background()) })
	ev := sqsEvent(envelope("c1", map[string]string{"FMetric_A(2026-11-20T09:31:00Z)": "1"}), `{not json`)
	resp := h.HandleSQS(invocation(t), ev)
	if got := strings.Join(failures(resp), ","); got != "m0" {
		t.Errorf("failures: got %q, want m0 (its occurrence was dropped before the second sink had it)", got)
	}
	if got := other.total()["F/A"]; got != 0 {
		t.Fatalf("second sink: delivered %d before the redelivery, want 0", got)
	}
	clk.Advance(dynamostore.DefaultLease)
	resp = h.HandleSQS(invocation(t), sqsEvent(ev.Records[0].Body))
	if len(resp.BatchItemFailures) != 0 {
		t.Errorf("redelivery: failures %v, want none", failures(resp))
	}
	if got := other.total()["F/A"]; got != 1 {
		t.Errorf("second sink after the redelivery: delivered %d, want 1", got)
	}
}
