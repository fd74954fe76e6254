package lambdafn

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// Conversation paths on Lambda. A path closes by one of two messages, both
// of which the function receives:
//
//   - {"flowmetrics":"close","conversation":"<id>"}: sent by the function
//     itself for each customer.end it reads, to the close queue, delayed
//     by the grace (plus a second, so the close is due when it arrives);
//     its delivery closes that conversation's path.
//   - {"flowmetrics":"sweep"}: sent on a schedule (EventBridge Scheduler,
//     every minute), through the event queue or as a direct invocation; it
//     closes every path that is due, through the store's index of due
//     times: idle conversations, and any close a failed message or a dead
//     instance left behind.
//
// Both close with the store's conditional write, so a path closes exactly
// once however many messages and instances race for it.

// control is the body of a close or sweep message.
type control struct {
	Flowmetrics  string `json:"flowmetrics"`
	Conversation string `json:"conversation,omitempty"`
}

const (
	controlClose = "close"
	controlSweep = "sweep"
)

// parseControl returns the control message in body, if it is one.
func parseControl(body []byte) (control, bool) {
	if !bytes.Contains(body, []byte(`"flowmetrics"`)) {
		return control{}, false
	}
	var c control
	if json.Unmarshal(body, &c) != nil {
		return control{}, false
	}
	switch c.Flowmetrics {
	case controlSweep:
		return c, true
	case controlClose:
		return c, c.Conversation != ""
	}
	return control{}, false
}

// maxSQSDelay is SQS's longest message delay, in seconds.
const maxSQSDelay = 900

// closeDelay is the delay of a close message: the grace, rounded up to
// the second, plus one, so that the end's deadline has passed when the
// message arrives.
func closeDelay(grace time.Duration) int32 {
	return int32((grace+time.Second-1)/time.Second) + 1
}

// SQSAPI is the part of the SQS client the function uses to send close
// messages; *sqs.Client satisfies it.
type SQSAPI interface {
	SendMessageBatch(ctx context.Context, in *sqs.SendMessageBatchInput, optFns ...func(*sqs.Options)) (*sqs.SendMessageBatchOutput, error)
}

// closeQueue sends the delayed close messages.
type closeQueue struct {
	api   SQSAPI
	url   string
	delay int32
}

// send sends one close message per conversation, ten to a request, and
// returns the conversations whose message did not go.
func (q *closeQueue) send(ctx context.Context, convs []string) (failed map[string]bool, err error) {
	failed = map[string]bool{}
	for len(convs) > 0 {
		n := min(len(convs), 10)
		var entries []types.SendMessageBatchRequestEntry
		for i, c := range convs[:n] {
			body, _ := json.Marshal(control{Flowmetrics: controlClose, Conversation: c})
			entries = append(entries, types.SendMessageBatchRequestEntry{
				Id: aws.String(strconv.Itoa(i)), MessageBody: aws.String(string(body)), DelaySeconds: q.delay,
			})
		}
		out, e := q.api.SendMessageBatch(ctx, &sqs.SendMessageBatchInput{QueueUrl: aws.String(q.url), Entries: entries})
		if e != nil {
			err = e
			for _, c := range convs[:n] {
				failed[c] = true
			}
		} else {
			for _, f := range out.Failed {
				if i, e := strconv.Atoi(aws.ToString(f.Id)); e == nil && i < n {
					failed[convs[i]] = true
					err = fmt.Errorf("%s: %s", aws.ToString(f.Code), aws.ToString(f.Message))
				}
			}
		}
		convs = convs[n:]
	}
	return failed, err
}

// ends returns the conversations of the accepted customer.end records,
// each once, and for each the indexes of its records.
func ends(recs []genesys.Record) ([]string, map[string][]int) {
	var order []string
	idx := map[string][]int{}
	for i, r := range recs {
		if r.Outcome != genesys.Accepted || r.Event == nil || !r.Event.Ended {
			continue
		}
		id := r.Event.ConversationID
		if _, ok := idx[id]; !ok {
			order = append(order, id)
		}
		idx[id] = append(idx[id], i)
	}
	return order, idx
}

// scheduleCloses sends the close messages of the batch's customer.end
// records (once their end is in the store) and returns the indexes of the
// records whose message could not be sent: they must be retried.
func (h *Handler) scheduleCloses(ctx context.Context, recs []genesys.Record) (map[int]bool, error) {
	if h.closeQ == nil || !h.paths {
		return nil, nil
	}
	convs, idx := ends(recs)
	if len(convs) == 0 {
		return nil, nil
	}
	failed, err := h.closeQ.send(ctx, convs)
	if err == nil {
		return nil, nil
	}
	out := map[int]bool{}
	for c := range failed {
		for _, i := range idx[c] {
			out[i] = true
		}
	}
	return out, fmt.Errorf("send close messages: %w", err)
}

// sweepLimit is the most paths one round of a sweep closes before it
// delivers their points: small enough that a round ends well within a
// short function timeout, so a backlog is worked off round by round.
const sweepLimit = 64

// HandleSweep closes every conversation path that is due, in rounds of at
// most sweepLimit, delivering each round's points before the next. It
// stops early, with nil, when the invocation's time runs short: the next
// sweep goes on. An error means a round failed; its closes stay pending
// under this instance's lease and a later sweep closes them again.
func (h *Handler) HandleSweep(ctx context.Context) error {
	if !h.paths {
		return nil
	}
	ctx, cancel := h.bounded(ctx)
	defer cancel()
	for {
		n, err := h.p.ClosePathsOnce(ctx, time.Now(), sweepLimit)
		if err != nil {
			return err
		}
		if n > 0 {
			if err := h.deliver(ctx); err != nil {
				return err
			}
		}
		if n < sweepLimit {
			return nil
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < h.reserve+5*time.Second {
			return nil
		}
	}
}

// bounded returns ctx ending the flush reserve before the invocation's
// deadline, so that a slow store call fails the messages instead of timing
// the invocation out.
func (h *Handler) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok {
		return context.WithDeadline(ctx, dl.Add(-h.reserve))
	}
	return context.WithCancel(ctx)
}

// handleControl processes the close and sweep messages of an SQS batch and
// returns those to retry. A close that finds its path not due, closed, or
// being closed by another instance is done: the sweep closes whatever is
// still due later.
func (h *Handler) handleControl(ctx context.Context, msgs []events.SQSMessage, ctl []control) []events.SQSBatchItemFailure {
	var retry []events.SQSBatchItemFailure
	// A failed close fails every message: their closes went in one write.
	all := func() []events.SQSBatchItemFailure {
		out := make([]events.SQSBatchItemFailure, len(msgs))
		for i, m := range msgs {
			out[i] = events.SQSBatchItemFailure{ItemIdentifier: m.MessageId}
		}
		return out
	}
	var convs []string
	sweep := false
	for _, c := range ctl {
		if c.Flowmetrics == controlSweep {
			sweep = true
			continue
		}
		convs = append(convs, c.Conversation)
	}
	if len(convs) > 0 {
		cctx, cancel := h.bounded(ctx)
		closed, err := h.p.ClosePathsOf(cctx, convs, time.Now())
		cancel()
		if err == nil && closed > 0 {
			err = h.deliver(ctx)
		}
		if err != nil {
			h.log.Error("closing paths failed; the messages will be retried", "err", err)
			h.report.write(len(msgs), 0, "close")
			return all()
		}
	}
	if sweep {
		if err := h.HandleSweep(ctx); err != nil {
			h.log.Error("sweep failed; it will be retried", "err", err)
			for i, c := range ctl {
				if c.Flowmetrics == controlSweep {
					retry = append(retry, events.SQSBatchItemFailure{ItemIdentifier: msgs[i].MessageId})
				}
			}
		}
	}
	return retry
}
