package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/flowmetrics/flowmetrics"
)

// Bounds of one group claim (calls, and their claim requests in all): the
// calls beyond them wait for the next group. HTTP ingest hands the pipeline
// up to 1,000 records per call.
const (
	maxGroupCalls    = 32
	maxGroupRequests = 8000
)

// claimGroup lets concurrent Ingest calls share one Store.Claim. While one
// claim is in the store, the calls that arrive wait; when it returns, the
// first of them claims for all of them at once. So one durable write (one
// fsync of the embedded store) answers a whole group, and concurrent
// requests over the same conversations no longer queue one behind another
// for the store's per-conversation locks, each with a sync of its own. A
// call alone (replay, one request at a time) goes straight to the store.
//
// Merging changes nothing a caller sees: Claim treats the requests of a
// call in order, the group's calls one after another, and returns the new
// occurrences in request order, so each call gets back exactly what a
// Claim of its own requests, made just after the calls before it in the
// group, would have returned. Its refusals and pending requests come back
// with its own request indexes. A store failure fails every call of the
// group (nothing of them is acknowledged; retrying is safe).
type claimGroup struct {
	claim func(context.Context, []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error)

	mu      sync.Mutex
	busy    bool         // a group is in the store
	waiting []*groupCall // calls that arrived meanwhile, in order
}

type groupCall struct {
	ctx   context.Context
	reqs  []flowmetrics.ClaimRequest
	fresh []flowmetrics.Occurrence
	err   error
	// lead, when set as done is closed, hands this call the next group
	// (itself first) to claim for.
	lead []*groupCall
	done chan struct{}
}

// Claim is Store.Claim, shared with the calls made at the same time.
func (g *claimGroup) Claim(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
	c := &groupCall{ctx: ctx, reqs: reqs}
	g.mu.Lock()
	if !g.busy {
		g.busy = true
		g.mu.Unlock()
		g.run([]*groupCall{c})
		return c.fresh, c.err
	}
	c.done = make(chan struct{})
	g.waiting = append(g.waiting, c)
	g.mu.Unlock()
	<-c.done
	if c.lead != nil {
		g.run(c.lead)
	}
	return c.fresh, c.err
}

// run claims for group (its first call is the caller's own), answers the
// others, and hands what waits to the next leader.
func (g *claimGroup) run(group []*groupCall) {
	group, later := split(group)
	g.claimAll(group)
	g.mu.Lock()
	next := append(later, g.waiting...)
	g.waiting = nil
	if len(next) == 0 {
		g.busy = false
	}
	g.mu.Unlock()
	for _, c := range group[1:] {
		close(c.done)
	}
	if len(next) > 0 {
		next[0].lead = next
		if next[0].done == nil {
			// (Never: only the first call of a group runs without
			// waiting, and it is never left for later.)
			next[0].done = make(chan struct{})
		}
		close(next[0].done)
	}
}

// split returns the calls of group that one claim can take, and those left
// for the next group: beyond the bounds, and any call that would make the
// new occurrences ambiguous. The store returns new occurrences without
// their conversation, so they are handed back by walking the requests in
// order and matching keys: a call that names a key under another
// conversation than a call before it in the group (two conversations with
// the same attribute name, and time, at once) waits for the next group.
func split(group []*groupCall) (now, later []*groupCall) {
	if len(group) == 1 {
		return group, nil
	}
	convOf := map[string]string{} // key → the conversation it was named under
	mixed := map[string]bool{}    // keys named under several conversations
	n := 0
	for i, c := range group {
		if i > 0 && (len(now) >= maxGroupCalls || n+len(c.reqs) > maxGroupRequests || clashes(c, convOf, mixed)) {
			later = append(later, c)
			continue
		}
		for _, r := range c.reqs {
			for _, o := range r.Occurrences {
				switch conv, ok := convOf[o.Key]; {
				case !ok:
					convOf[o.Key] = r.ConversationID
				case conv != r.ConversationID:
					mixed[o.Key] = true
				}
			}
		}
		now = append(now, c)
		n += len(c.reqs)
	}
	return now, later
}

// clashes reports whether c names a key the group holds under another
// conversation.
func clashes(c *groupCall, convOf map[string]string, mixed map[string]bool) bool {
	for _, r := range c.reqs {
		for _, o := range r.Occurrences {
			if conv, ok := convOf[o.Key]; ok && (conv != r.ConversationID || mixed[o.Key]) {
				return true
			}
		}
	}
	return false
}

// claimAll makes one Store.Claim of every call's requests and hands each
// call its part of the answer.
func (g *claimGroup) claimAll(group []*groupCall) {
	if len(group) == 1 {
		c := group[0]
		c.fresh, c.err = g.claim(c.ctx, c.reqs)
		return
	}
	n := 0
	for _, c := range group {
		n += len(c.reqs)
	}
	all := make([]flowmetrics.ClaimRequest, 0, n)
	for _, c := range group {
		all = append(all, c.reqs...)
	}
	// The claim answers every call of the group: the leader's request
	// ending must not cut it off for the others.
	fresh, err := g.claim(context.WithoutCancel(group[0].ctx), all)
	var pe *flowmetrics.PendingError
	var re *flowmetrics.RefusedError
	if err != nil && !errors.As(err, &pe) && !errors.As(err, &re) {
		for _, c := range group {
			c.err = err
		}
		return
	}
	refused := map[int]bool{}
	if re != nil {
		for _, f := range re.Refusals {
			refused[f.Request] = true
		}
	}
	j, off := 0, 0
	for _, c := range group {
		from := j
		for i, r := range c.reqs {
			if refused[off+i] {
				continue
			}
			for _, o := range r.Occurrences {
				if j < len(fresh) && fresh[j].Key == o.Key {
					j++
				}
			}
		}
		c.fresh = fresh[from:j:j]
		c.err = callErr(pe, re, off, len(c.reqs))
		off += len(c.reqs)
	}
	if j != len(fresh) {
		// Claim broke its contract (new occurrences out of request order):
		// nothing is acknowledged; what it claimed is delivered, and the
		// retries find it held.
		err := fmt.Errorf("claim: %d of %d new occurrences do not follow the requests' order", len(fresh)-j, len(fresh))
		for _, c := range group {
			c.fresh, c.err = nil, err
		}
	}
}

// callErr is the part of a group's pending and refused requests that
// falls in requests [off, off+n), with indexes from 0.
func callErr(pe *flowmetrics.PendingError, re *flowmetrics.RefusedError, off, n int) error {
	var errs []error
	if pe != nil {
		var own []int
		for _, i := range pe.Requests {
			if i >= off && i < off+n {
				own = append(own, i-off)
			}
		}
		if len(own) > 0 {
			errs = append(errs, &flowmetrics.PendingError{Requests: own})
		}
	}
	if re != nil {
		var own []flowmetrics.Refusal
		for _, f := range re.Refusals {
			if f.Request >= off && f.Request < off+n {
				f.Request -= off
				own = append(own, f)
			}
		}
		if len(own) > 0 {
			errs = append(errs, &flowmetrics.RefusedError{Refusals: own})
		}
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}
