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
// claim is going into the store, the calls that arrive wait; when it
// returns (or, with a store that can start a claim before it is durable,
// as soon as it is applied: see claimStarter), the first of them claims
// for all of them at once. So one durable write (one
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
	// start, when set, is the store's claim in two halves (claimStarter):
	// the next group goes to the store as soon as the one before is
	// applied, while that one's sync is still under way.
	start func(context.Context, []flowmetrics.ClaimRequest) func() ([]flowmetrics.Occurrence, error)

	mu      sync.Mutex
	busy    bool         // a group is going into the store
	waiting []*groupCall // calls that arrived meanwhile, in order
}

// claimStarter is a store whose claims can overlap: StartClaim returns
// once its claim is applied, so that any later claim sees it, and the
// function it returns waits until the claim is durable and returns what
// Claim returns. A later claim is durable only once the claims started
// before it are (pebblestore: they precede it in the write-ahead log).
type claimStarter interface {
	StartClaim(ctx context.Context, reqs []flowmetrics.ClaimRequest) (wait func() ([]flowmetrics.Occurrence, error))
}

func newClaimGroup(st flowmetrics.Store) *claimGroup {
	g := &claimGroup{claim: st.Claim}
	if s, ok := st.(claimStarter); ok {
		g.start = s.StartClaim
	}
	return g
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
	return g.Start(ctx, reqs)()
}

// Start is Claim in two halves: it returns once the call's claim is in the
// store (applied, with a store that can tell; answered, with any other),
// and wait waits until it is durable and returns Claim's answer. wait must
// be called, and soon: the calls grouped with this one get their answers
// when it is.
func (g *claimGroup) Start(ctx context.Context, reqs []flowmetrics.ClaimRequest) (wait func() ([]flowmetrics.Occurrence, error)) {
	c := &groupCall{ctx: ctx, reqs: reqs}
	answer := func() ([]flowmetrics.Occurrence, error) { return c.fresh, c.err }
	g.mu.Lock()
	if !g.busy {
		g.busy = true
		g.mu.Unlock()
		finish := g.run([]*groupCall{c})
		return func() ([]flowmetrics.Occurrence, error) { finish(); return answer() }
	}
	c.done = make(chan struct{})
	g.waiting = append(g.waiting, c)
	g.mu.Unlock()
	<-c.done
	if c.lead != nil {
		finish := g.run(c.lead)
		return func() ([]flowmetrics.Occurrence, error) { finish(); return answer() }
	}
	return answer
}

// run starts the claim of group (its first call is the caller's own) and
// hands what waits to the next leader, which may start its own claim at
// once; finish waits for the claim and answers the group's other calls.
func (g *claimGroup) run(group []*groupCall) (finish func()) {
	group, later := split(group)
	wait := g.startAll(group)
	g.mu.Lock()
	next := append(later, g.waiting...)
	g.waiting = nil
	if len(next) == 0 {
		g.busy = false
	}
	g.mu.Unlock()
	if len(next) > 0 {
		next[0].lead = next
		if next[0].done == nil {
			// (Never: only the first call of a group runs without
			// waiting, and it is never left for later.)
			next[0].done = make(chan struct{})
		}
		close(next[0].done)
	}
	return func() {
		wait()
		for _, c := range group[1:] {
			close(c.done)
		}
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
func (g *claimGroup) claimAll(group []*groupCall) { g.startAll(group)() }

// storeStart starts a store claim; wait returns its answer.
func (g *claimGroup) storeStart(ctx context.Context, reqs []flowmetrics.ClaimRequest) (wait func() ([]flowmetrics.Occurrence, error)) {
	if g.start != nil {
		return g.start(ctx, reqs)
	}
	fresh, err := g.claim(ctx, reqs)
	return func() ([]flowmetrics.Occurrence, error) { return fresh, err }
}

// startAll starts one store claim of every call's requests; finish waits
// for it and hands each call its part of the answer.
func (g *claimGroup) startAll(group []*groupCall) (finish func()) {
	if len(group) == 1 {
		c := group[0]
		wait := g.storeStart(c.ctx, c.reqs)
		return func() { c.fresh, c.err = wait() }
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
	wait := g.storeStart(context.WithoutCancel(group[0].ctx), all)
	return func() { answerAll(group, wait) }
}

// answerAll waits for the group's claim and hands each call its part.
func answerAll(group []*groupCall, wait func() ([]flowmetrics.Occurrence, error)) {
	fresh, err := wait()
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
