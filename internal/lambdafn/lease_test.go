package lambdafn_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/lambdafn"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// failPathSink is a pathSink whose SendPaths fails too while failing is set.
type failPathSink struct{ pathSink }

func (s *failPathSink) SendPaths(ctx context.Context, pts []flowmetrics.PathPoint) error {
	s.mu.Lock()
	f := s.failing
	s.mu.Unlock()
	if f {
		return errors.New("backend down")
	}
	return s.pathSink.SendPaths(ctx, pts)
}

// leasedHandler is one instance with a 3 s lease (1 s margin) on a fresh
// table, on the store's clock clk, with paths on and no known-key cache.
func leasedHandler(t *testing.T, clk *storetest.Clock, sk flowmetrics.Sink) *lambdafn.Handler {
	t.Helper()
	srv := dynalitetest.Start(t)
	pc := paths.Config{Grace: time.Second, IdleTimeout: time.Hour}
	st, err := dynamostore.Open(dynamostore.Config{Table: srv.CreateTable(t), Owner: "a", Lease: 3 * time.Second, Margin: time.Second},
		srv.Client, store.Options{Now: clk.Now, Paths: pc.WithDefaults().Options()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testCfg
	cfg.Paths = pc
	cfg.Pipeline.CacheConversations = -1
	h, err := lambdafn.NewHandler(context.Background(), st, []flowmetrics.Sink{sk}, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(context.Background()) })
	return h
}

// TestDeliveryHeldPastTheLeaseIsNotSentTwice: an invocation whose sink
// fails leaves its batch held for a retry; its event comes back after the
// lease (as SQS redelivers it) and the key is claimed again. The held
// batch, whose lease ended, is not sent: the occurrence is delivered once,
// by the claim that holds it now. (Before the fence, one instance with no
// crash delivered it twice.)
func TestDeliveryHeldPastTheLeaseIsNotSentTwice(t *testing.T) {
	clk := storetest.NewClock(time.Now())
	sk := &recordingSink{}
	h := leasedHandler(t, clk, sk)
	ev := sqsEvent(envelope("conv-1", map[string]string{"IVRMetric_Entered(2026-11-20T09:31:48Z)": ""}))
	sk.setFailing(true)
	if f := failures(h.HandleSQS(longInvocation(t), ev)); len(f) != 1 {
		t.Fatalf("failures with the sink down: %v, want the record", f)
	}
	clk.Advance(4 * time.Second) // past the lease: the visibility timeout ends
	sk.setFailing(false)
	for i := 0; i < 3 && len(failures(h.HandleSQS(longInvocation(t), ev))) > 0; i++ {
	}
	if got := sk.total()["IVR/Entered"]; got != 1 {
		t.Errorf("IVR/Entered delivered %d times, want 1", got)
	}
}

// TestCloseHeldPastTheLeaseIsNotSentTwice: a sweep whose sink fails leaves
// the close's points held; another failing invocation after the lease
// withdraws them, and the next sweep closes the path again. The held
// points are not sent: the exit is delivered once.
func TestCloseHeldPastTheLeaseIsNotSentTwice(t *testing.T) {
	// The sweep's asOf is the wall clock: the store's clock runs behind
	// it, so that the end's grace is over.
	clk := storetest.NewClock(time.Now().Add(-time.Minute))
	sk := &failPathSink{}
	h := leasedHandler(t, clk, sk)
	if f := failures(h.HandleSQS(longInvocation(t), sqsEvent(envelope("conv-1", map[string]string{"IVRMetric_Entered(2026-11-20T09:31:48Z)": ""}), endEnvelope("conv-1")))); len(f) > 0 {
		t.Fatalf("failures: %v", f)
	}
	clk.Advance(2 * time.Second)
	sweep := sqsEvent(`{"flowmetrics":"sweep"}`)
	sk.setFailing(true)
	if f := failures(h.HandleSQS(longInvocation(t), sweep)); len(f) != 1 {
		t.Fatalf("sweep with the sink down: failures %v, want the sweep", f)
	}
	clk.Advance(4 * time.Second)
	h.HandleSQS(longInvocation(t), sqsEvent(envelope("conv-2", map[string]string{"IVRMetric_Entered(2026-11-20T09:31:49Z)": ""})))
	sk.setFailing(false)
	for i := 0; i < 3 && len(failures(h.HandleSQS(longInvocation(t), sweep))) > 0; i++ {
	}
	sk.pmu.Lock()
	defer sk.pmu.Unlock()
	exits := 0
	for _, p := range sk.path {
		if p.Conversation == "conv-1" && p.Kind == flowmetrics.PathExit {
			exits++
		}
	}
	if exits != 1 {
		t.Errorf("conv-1's exit delivered %d times, want 1: %v", exits, sk.path)
	}
}

// slowStore is a store whose claims take until their context ends, as
// DynamoDB's do on a starved machine.
type slowStore struct{ flowmetrics.Store }

func (slowStore) Claim(ctx context.Context, _ []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestSlowClaimEndsBeforeTheTimeout: a claim that DynamoDB does not answer
// in time fails the invocation's records within the deadline less the
// flush reserve, so the invocation answers instead of timing out (which
// makes Lambda discard the environment: the next invocation would pay a
// cold start).
func TestSlowClaimEndsBeforeTheTimeout(t *testing.T) {
	cfg := testCfg
	cfg.FlushReserve = time.Second
	h, err := lambdafn.NewHandler(context.Background(), slowStore{memstore.New(store.Options{})}, []flowmetrics.Sink{&recordingSink{}}, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	dl, _ := ctx.Deadline()
	r := h.HandleSQS(ctx, sqsEvent(envelope("conv-1", map[string]string{"IVRMetric_Entered(2026-11-20T09:31:48Z)": ""})))
	if left := time.Until(dl); left < 500*time.Millisecond {
		t.Errorf("answered %v before the deadline, want about the reserve (1 s)", left)
	}
	if f := failures(r); len(f) != 1 {
		t.Errorf("failures: %v, want the record", f)
	}
	if err := h.HandleEventBridge(ctx, []byte(envelope("conv-2", map[string]string{"IVRMetric_Entered(2026-11-20T09:31:48Z)": ""}))); err == nil {
		t.Error("EventBridge: a claim that timed out succeeded")
	}
}
