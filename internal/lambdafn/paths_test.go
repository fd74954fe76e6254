package lambdafn_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/lambdafn"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
)

// pathSink records counts and path points.
type pathSink struct {
	recordingSink
	pmu  sync.Mutex
	path []flowmetrics.PathPoint
}

func (s *pathSink) SendPaths(ctx context.Context, pts []flowmetrics.PathPoint) error {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	s.path = append(s.path, pts...)
	return nil
}

// fakeQueue records the close messages; a test hands them to handlers.
type fakeQueue struct {
	mu   sync.Mutex
	msgs []events.SQSMessage
}

func (q *fakeQueue) SendMessageBatch(ctx context.Context, in *sqs.SendMessageBatchInput, _ ...func(*sqs.Options)) (*sqs.SendMessageBatchOutput, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, e := range in.Entries {
		if e.DelaySeconds != 2 {
			return nil, fmt.Errorf("delay %d s, want the grace rounded up plus 1 s: 2", e.DelaySeconds)
		}
		q.msgs = append(q.msgs, events.SQSMessage{MessageId: fmt.Sprint("close-", len(q.msgs)), Body: *e.MessageBody, EventSource: "aws:sqs"})
	}
	return &sqs.SendMessageBatchOutput{}, nil
}

// longInvocation is an invocation with time to spare on a loaded machine.
func longInvocation(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func endEnvelope(conv string) string {
	return string(genesys.Envelope{Topic: genesys.TopicCustomerEnd, Conversation: conv, Time: time.Now()}.JSON())
}

// pathHandler is a handler with paths on (cfg.Paths), as an instance named
// owner, on table, with ReadFirst as the function has it, and the sink that
// records what it sends.
func pathHandler(t *testing.T, srv *dynalitetest.Server, table, owner string, cfg lambdafn.Config) (*lambdafn.Handler, *pathSink) {
	t.Helper()
	st, err := dynamostore.Open(dynamostore.Config{Table: table, Owner: owner, ReadFirst: true}, srv.Client, store.Options{Paths: cfg.Paths.WithDefaults().Options()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sk := &pathSink{}
	h, err := lambdafn.NewHandler(context.Background(), st, []flowmetrics.Sink{sk}, cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(context.Background()) })
	return h, sk
}

// TestPathsCloseOnceOnLambda: three instances on one table get the same
// events twice (a duplicate delivery to another instance), each
// customer.end sends one delayed close message, the close messages are
// delivered twice and concurrently, and the scheduled sweep reaches every
// instance at once: each conversation's path is derived and delivered
// exactly once, ended ones by their message, idle ones by the sweep.
func TestPathsCloseOnceOnLambda(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	pc := paths.Config{Grace: time.Second, IdleTimeout: 2 * time.Second}
	q := &fakeQueue{}
	cfg := testCfg
	cfg.Paths, cfg.CloseQueueURL, cfg.SQS = pc, "http://127.0.0.1:1/close", q
	var hs []*lambdafn.Handler
	var sinks []*pathSink
	for i := 0; i < 3; i++ {
		h, sk := pathHandler(t, srv, table, fmt.Sprint("i", i), cfg)
		hs, sinks = append(hs, h), append(sinks, sk)
	}
	const convs = 12
	var batch events.SQSEvent
	for i := 0; i < convs; i++ {
		c := fmt.Sprint("conv-", i)
		batch.Records = append(batch.Records, events.SQSMessage{MessageId: "a-" + c, EventSource: "aws:sqs",
			Body: envelope(c, map[string]string{"IVRMetric_Entered(2026-11-20T09:31:48Z)": "", fmt.Sprintf("IVRMetric_Step%d(2026-11-20T09:32:48Z)", i%3): ""})})
		if i%4 != 0 {
			batch.Records = append(batch.Records, events.SQSMessage{MessageId: "e-" + c, EventSource: "aws:sqs", Body: endEnvelope(c)})
		}
	}
	concurrently := func(f func(h *lambdafn.Handler) []events.SQSBatchItemFailure) {
		var wg sync.WaitGroup
		for _, h := range hs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if f := f(h); len(f) > 0 {
					t.Errorf("batch item failures: %v", f)
				}
			}()
		}
		wg.Wait()
	}
	// Every instance gets the whole batch.
	concurrently(func(h *lambdafn.Handler) []events.SQSBatchItemFailure {
		for attempt := 0; ; attempt++ {
			r := h.HandleSQS(longInvocation(t), batch)
			if len(r.BatchItemFailures) == 0 || attempt == 20 {
				return r.BatchItemFailures
			}
			time.Sleep(50 * time.Millisecond) // pending under another instance's lease
		}
	})
	q.mu.Lock()
	closes := events.SQSEvent{Records: append([]events.SQSMessage(nil), q.msgs...)}
	q.mu.Unlock()
	// One per customer.end read: each instance reads each end at least
	// once (more when a batch is retried).
	if want := 3 * convs * 3 / 4; len(closes.Records) < want {
		t.Errorf("close messages: got %d, want at least %d", len(closes.Records), want)
	}
	time.Sleep(1100 * time.Millisecond) // SQS's delay
	concurrently(func(h *lambdafn.Handler) []events.SQSBatchItemFailure {
		return h.HandleSQS(longInvocation(t), closes).BatchItemFailures
	})
	exits := func() map[string]int {
		out := map[string]int{}
		for _, s := range sinks {
			s.pmu.Lock()
			for _, p := range s.path {
				if p.Kind == flowmetrics.PathExit {
					out[p.Conversation]++
				}
			}
			s.pmu.Unlock()
		}
		return out
	}
	got := exits()
	for i := 0; i < convs; i++ {
		c, want := fmt.Sprint("conv-", i), 1
		if i%4 == 0 {
			want = 0 // no customer.end: waits for its idle timeout
		}
		if got[c] != want {
			t.Errorf("after the close messages, %s: %d exits, want %d", c, got[c], want)
		}
	}
	time.Sleep(2100 * time.Millisecond) // the idle timeout, and its step
	sweep := events.SQSEvent{Records: []events.SQSMessage{{MessageId: "sweep", EventSource: "aws:sqs", Body: `{"flowmetrics":"sweep"}`}}}
	concurrently(func(h *lambdafn.Handler) []events.SQSBatchItemFailure {
		return h.HandleSQS(longInvocation(t), sweep).BatchItemFailures
	})
	got = exits()
	for i := 0; i < convs; i++ {
		if c := fmt.Sprint("conv-", i); got[c] != 1 {
			t.Errorf("after the sweep, %s: %d exits, want 1", c, got[c])
		}
	}
}

// TestKnownKeysKeepAPathOpenOnLambda: a conversation whose events go on
// bringing only keys it already has (every Genesys Cloud event repeats the
// participant's attributes) is not closed idle_timeout after its last new
// key, but idle_timeout after its last event, within a step: the handler's
// known-key cache lets one event a step through to the store, which moves
// the deadline although it writes no key.
func TestKnownKeysKeepAPathOpenOnLambda(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	pc := paths.Config{Grace: time.Second, IdleTimeout: 2 * time.Second} // a step of 125 ms
	cfg := testCfg
	cfg.Paths = pc
	h, sk := pathHandler(t, srv, table, "i0", cfg)
	send := func(id, body string) {
		t.Helper()
		r := h.HandleSQS(longInvocation(t), events.SQSEvent{Records: []events.SQSMessage{{MessageId: id, EventSource: "aws:sqs", Body: body}}})
		if len(r.BatchItemFailures) > 0 {
			t.Fatalf("%s: batch item failures: %v", id, r.BatchItemFailures)
		}
	}
	sweep := func() { send("sweep", `{"flowmetrics":"sweep"}`) }
	exits := func() int {
		sk.pmu.Lock()
		defer sk.pmu.Unlock()
		n := 0
		for _, p := range sk.path {
			if p.Kind == flowmetrics.PathExit && p.Conversation == "conv-k" {
				n++
			}
		}
		return n
	}
	attrs := map[string]string{"IVRMetric_Entered(2026-11-20T09:31:48Z)": ""}
	send("first", envelope("conv-k", attrs))
	start := time.Now()
	// Events with the same key, for longer than the idle timeout.
	var last time.Time
	for i := 0; time.Since(start) < 3*time.Second; i++ {
		time.Sleep(400 * time.Millisecond)
		send(fmt.Sprint("again-", i), envelope("conv-k", attrs))
		last = time.Now()
	}
	sweep()
	if n := exits(); n != 0 {
		t.Fatalf("closed %d time(s) %v after its only new key, while its events kept coming; want it open", n, time.Since(start).Round(time.Millisecond))
	}
	time.Sleep(time.Until(last.Add(2*time.Second + 2*125*time.Millisecond)))
	sweep()
	if n := exits(); n != 1 {
		t.Errorf("idle timeout and a step after its last event: %d exits, want 1", n)
	}
}
