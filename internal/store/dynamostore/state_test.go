package dynamostore_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// TestConformanceMoto runs the conformance suite on moto, whose DynamoDB has
// the TransactWriteItems that sink state needs.
func TestConformanceMoto(t *testing.T) {
	srv := dynalitetest.StartMoto(t)
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T, opts store.Options) flowmetrics.Store {
			return open(t, srv, srv.CreateTable(t), conformanceConfig(true), opts)
		},
		PathsOpenOnKnownKeys: true,
	})
}

// TestStateCommitBeyondOneTransaction: one acknowledgement whose marks and
// state need more than DynamoDB's 100 items per transaction is written as
// several transactions; afterwards another instance sees the whole state,
// and every claim as delivered.
func TestStateCommitBeyondOneTransaction(t *testing.T) {
	srv := dynalitetest.StartMoto(t)
	table := srv.CreateTable(t)
	ctx := context.Background()
	a := open(t, srv, table, dynamostore.Config{Owner: "a"}, store.Options{})
	if err := a.Register(ctx, []string{"sink"}); err != nil {
		t.Fatal(err)
	}
	var reqs []flowmetrics.ClaimRequest
	for i := 0; i < 150; i++ {
		reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: fmt.Sprintf("conv-%d", i), Occurrences: []flowmetrics.Occurrence{storetest.Occ("F", "A", t0)}})
	}
	// A conversation id that looks like a state item is kept apart.
	reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: "s\x1fsink\x1fk-7", Occurrences: []flowmetrics.Occurrence{storetest.Occ("F", "A", t0)}})
	if got, err := a.Claim(ctx, reqs); err != nil || len(got) != 151 {
		t.Fatalf("claim: got %d, %v; want 151 new", len(got), err)
	}
	es, _ := a.ReadOutbox(ctx, 0, 100)
	u := flowmetrics.StateUpdate{"\xff not UTF-8": []byte("binary key")}
	for i := 0; i < 120; i++ {
		u[fmt.Sprintf("k-%d", i)] = []byte(fmt.Sprintf("v%d", i))
	}
	if err := a.AckState(ctx, "sink", es[len(es)-1].Seq, u); err != nil {
		t.Fatal(err)
	}
	if n := a.Stats().TransactWriteItems; n < 3 {
		t.Errorf("transactions: got %d, want at least 3 (272 items)", n)
	}
	// A deletion and a change, in one small transaction.
	if err := a.AckState(ctx, "sink", es[len(es)-1].Seq, flowmetrics.StateUpdate{"k-0": nil, "k-1": []byte("changed")}); err != nil {
		t.Fatal(err)
	}

	b := open(t, srv, table, dynamostore.Config{Owner: "b"}, store.Options{})
	if err := b.Register(ctx, []string{"sink"}); err != nil {
		t.Fatal(err)
	}
	st, err := b.SinkState(ctx, "sink")
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 120 || st["k-0"] != nil || string(st["k-1"]) != "changed" || string(st["k-7"]) != "v7" || string(st["\xff not UTF-8"]) != "binary key" {
		t.Errorf("state seen by another instance: %d keys, k-0=%q k-1=%q k-7=%q; want 120 keys, k-0 absent, k-1=changed, k-7=v7", len(st), st["k-0"], st["k-1"], st["k-7"])
	}
	if got, err := b.Claim(ctx, reqs); err != nil || len(got) != 0 {
		t.Errorf("claims after the commit: got %d new, %v; want none (all marked delivered)", len(got), err)
	}
}

// TestStateCommitSkipsGoneItems: a conversation item that expired and was
// deleted before its mark is skipped; the rest of the commit is written.
func TestStateCommitSkipsGoneItems(t *testing.T) {
	srv := dynalitetest.StartMoto(t)
	table := srv.CreateTable(t)
	ctx := context.Background()
	a := open(t, srv, table, dynamostore.Config{Owner: "a"}, store.Options{})
	if err := a.Register(ctx, []string{"sink"}); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, a, "gone", storetest.Occ("F", "A", t0))
	mustClaim(t, a, "kept", storetest.Occ("F", "A", t0))
	if _, err := srv.Client.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(table), Key: map[string]types.AttributeValue{"id": &types.AttributeValueMemberS{Value: "gone"}}}); err != nil {
		t.Fatal(err)
	}
	es, _ := a.ReadOutbox(ctx, 0, 10)
	if err := a.AckState(ctx, "sink", es[len(es)-1].Seq, flowmetrics.StateUpdate{"x": []byte("1")}); err != nil {
		t.Fatalf("commit with a gone item: %v", err)
	}
	if got := item(t, srv, table, "kept")["k:"+storetest.Occ("F", "A", t0).Key]; got != "d" {
		t.Errorf("kept's mark: got %q, want d", got)
	}
	if len(item(t, srv, table, "gone")) != 0 {
		t.Error("the gone item was written again")
	}
	b := open(t, srv, table, dynamostore.Config{Owner: "b"}, store.Options{})
	b.Register(ctx, []string{"sink"})
	if st, _ := b.SinkState(ctx, "sink"); string(st["x"]) != "1" {
		t.Errorf("state: got %q, want x=1", st)
	}
}

// TestPendingStateBounded: while one sink does not acknowledge, another
// sink's state updates wait in memory, up to a bound; beyond it AckState
// fails (the pipeline retries) instead of holding ever more. When the late
// sink acknowledges, everything is committed.
func TestPendingStateBounded(t *testing.T) {
	srv := dynalitetest.StartMoto(t)
	ctx := context.Background()
	table := srv.CreateTable(t)
	s := open(t, srv, table, dynamostore.Config{}, store.Options{})
	if err := s.Register(ctx, []string{"up", "down"}); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, s, "c", storetest.Occ("F", "A", t0))
	es, _ := s.ReadOutbox(ctx, 0, 10)
	seq := es[0].Seq
	var err error
	n := 0
	for ; n < 10000; n++ {
		if err = s.AckState(ctx, "up", seq, flowmetrics.StateUpdate{"k": []byte(fmt.Sprint(n))}); err != nil {
			break
		}
	}
	if err == nil || n >= 10000 {
		t.Fatalf("after %d updates waiting: got %v, want AckState to refuse more", n, err)
	}
	if st, _ := s.SinkState(ctx, "up"); string(st["k"]) != fmt.Sprint(n-1) {
		t.Errorf("state shown while waiting: got %q, want k=%d", st["k"], n-1)
	}
	if err := s.AckState(ctx, "down", seq, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.AckState(ctx, "up", seq, flowmetrics.StateUpdate{"k": []byte("last")}); err != nil {
		t.Fatalf("after the late sink acknowledged: %v", err)
	}
	b := open(t, srv, table, dynamostore.Config{Owner: "b"}, store.Options{})
	b.Register(ctx, []string{"up", "down"})
	if st, _ := b.SinkState(ctx, "up"); string(st["k"]) != "last" {
		t.Errorf("state committed in the table: got %q, want k=last", st["k"])
	}
}
