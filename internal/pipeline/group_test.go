package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
)

func groupOcc(key string) flowmetrics.Occurrence {
	return flowmetrics.Occurrence{Key: key, Flow: "F", Metric: key, Time: time.Unix(1700000000, 0)}
}

func groupReq(conv string, keys ...string) flowmetrics.ClaimRequest {
	r := flowmetrics.ClaimRequest{ConversationID: conv}
	for _, k := range keys {
		r.Occurrences = append(r.Occurrences, groupOcc(k))
	}
	return r
}

// tooMany is a request the store refuses: more keys than a conversation
// may hold.
func tooMany(conv string) flowmetrics.ClaimRequest {
	keys := make([]string, flowmetrics.MaxConversationKeys+1)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s%d", conv, i)
	}
	return groupReq(conv, keys...)
}

func keysOf(occs []flowmetrics.Occurrence) []string {
	var ks []string
	for _, o := range occs {
		ks = append(ks, o.Key)
	}
	return ks
}

// TestGroupClaimAnswersEachCallAsAlone claims the calls of a group in one
// Store.Claim and checks each call's answer against a Claim of its own
// requests, made in turn on a second store: the same new occurrences, the
// same refusals under its own request indexes.
func TestGroupClaimAnswersEachCallAsAlone(t *testing.T) {
	calls := [][]flowmetrics.ClaimRequest{
		{groupReq("a", "x", "y"), groupReq("b", "w")},
		{groupReq("a", "y", "z"), tooMany("c"), groupReq("b", "w", "v")},
		{groupReq("b", "u", "w", "v"), groupReq("a", "z")},
		{tooMany("d")},
		{groupReq("e", "q"), groupReq("e", "q", "r")},
	}
	var stored int
	merged := memstore.New(store.Options{})
	g := &claimGroup{claim: func(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
		stored++
		return merged.Claim(ctx, reqs)
	}}
	group := make([]*groupCall, len(calls))
	for i, reqs := range calls {
		group[i] = &groupCall{ctx: context.Background(), reqs: reqs}
	}
	now, later := split(group)
	if len(now) != len(calls) || len(later) != 0 {
		t.Fatalf("split: got %d now, %d later, want %d and 0", len(now), len(later), len(calls))
	}
	g.claimAll(now)
	if stored != 1 {
		t.Fatalf("got %d store claims, want 1", stored)
	}
	alone := memstore.New(store.Options{})
	for i, reqs := range calls {
		want, wantErr := alone.Claim(context.Background(), reqs)
		got := group[i]
		if !slices.Equal(keysOf(got.fresh), keysOf(want)) {
			t.Errorf("call %d: got new %q, want %q", i, keysOf(got.fresh), keysOf(want))
		}
		if refusedOf(got.err) != refusedOf(wantErr) {
			t.Errorf("call %d: got refusals %s, want %s", i, refusedOf(got.err), refusedOf(wantErr))
		}
	}
}

func refusedOf(err error) string {
	var re *flowmetrics.RefusedError
	if !errors.As(err, &re) {
		return fmt.Sprint(err)
	}
	var idx []int
	for _, f := range re.Refusals {
		idx = append(idx, f.Request)
	}
	return fmt.Sprint("refused ", idx)
}

// TestGroupClaimKeepsApartAmbiguousCalls: the store returns new occurrences
// without their conversation, so a call naming a key the group already
// names under another conversation is left for the next group, where its
// answer cannot be confused with the first call's.
func TestGroupClaimKeepsApartAmbiguousCalls(t *testing.T) {
	first := &groupCall{reqs: []flowmetrics.ClaimRequest{groupReq("a", "x"), groupReq("b", "k")}}
	same := &groupCall{reqs: []flowmetrics.ClaimRequest{groupReq("a", "x", "y")}}
	other := &groupCall{reqs: []flowmetrics.ClaimRequest{groupReq("c", "x")}}
	last := &groupCall{reqs: []flowmetrics.ClaimRequest{groupReq("d", "z")}}
	now, later := split([]*groupCall{first, same, other, last})
	if want := []*groupCall{first, same, last}; !slices.Equal(now, want) {
		t.Errorf("now: got %d calls, want first, same, last", len(now))
	}
	if want := []*groupCall{other}; !slices.Equal(later, want) {
		t.Errorf("later: got %d calls, want other", len(later))
	}
}

// TestGroupClaimSharesTheStore: calls made while a claim is in the store
// wait for it, then go to the store together, each with its own answer.
func TestGroupClaimSharesTheStore(t *testing.T) {
	const waiters = 5
	st := memstore.New(store.Options{})
	release := make(chan struct{})
	var mu sync.Mutex
	var sizes []int
	g := &claimGroup{}
	g.claim = func(ctx context.Context, reqs []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
		mu.Lock()
		sizes = append(sizes, len(reqs))
		first := len(sizes) == 1
		mu.Unlock()
		if first {
			<-release
		}
		return st.Claim(ctx, reqs)
	}
	results := make([][]string, waiters+1)
	errs := make([]error, waiters+1)
	var wg sync.WaitGroup
	claim := func(i int) {
		conv := fmt.Sprint("conv", i)
		fresh, err := g.Claim(context.Background(), []flowmetrics.ClaimRequest{groupReq(conv, conv+"x", conv+"y")})
		results[i], errs[i] = keysOf(fresh), err
	}
	wg.Go(func() { claim(0) })
	for !g.inStore() {
		time.Sleep(time.Millisecond)
	}
	for i := 1; i <= waiters; i++ {
		wg.Go(func() { claim(i) })
	}
	for g.queued() < waiters {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if want := []int{1, waiters}; !slices.Equal(sizes, want) {
		t.Errorf("store claims of %v requests, want %v", sizes, want)
	}
	for i := range results {
		conv := fmt.Sprint("conv", i)
		if want := []string{conv + "x", conv + "y"}; errs[i] != nil || !slices.Equal(results[i], want) {
			t.Errorf("call %d: got %q, %v, want %q, nil", i, results[i], errs[i], want)
		}
	}
	if g.inStore() {
		t.Error("the group is still marked in the store after every call returned")
	}
}

// TestGroupClaimFailsEveryCall: a store failure reaches every call of the
// group, so none of them is acknowledged.
func TestGroupClaimFailsEveryCall(t *testing.T) {
	boom := errors.New("disk on fire")
	g := &claimGroup{claim: func(context.Context, []flowmetrics.ClaimRequest) ([]flowmetrics.Occurrence, error) {
		return nil, boom
	}}
	group := []*groupCall{
		{ctx: context.Background(), reqs: []flowmetrics.ClaimRequest{groupReq("a", "x")}},
		{ctx: context.Background(), reqs: []flowmetrics.ClaimRequest{groupReq("b", "y")}},
	}
	g.claimAll(group)
	for i, c := range group {
		if !errors.Is(c.err, boom) || c.fresh != nil {
			t.Errorf("call %d: got %q, %v, want nothing and the store's error", i, keysOf(c.fresh), c.err)
		}
	}
}

func (g *claimGroup) inStore() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.busy
}

func (g *claimGroup) queued() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.waiting)
}

// TestGroupStartsWhileTheOneBeforeSyncs: with a store that applies a claim
// before it is durable (claimStarter), the next group goes to the store
// while the group before waits for its sync, and no call is answered
// before its own claim is durable.
func TestGroupStartsWhileTheOneBeforeSyncs(t *testing.T) {
	st := memstore.New(store.Options{})
	synced := make(chan struct{})
	var mu sync.Mutex
	starts := 0
	g := &claimGroup{claim: st.Claim}
	g.start = func(ctx context.Context, reqs []flowmetrics.ClaimRequest) func() ([]flowmetrics.Occurrence, error) {
		fresh, err := st.Claim(ctx, reqs)
		mu.Lock()
		starts++
		mu.Unlock()
		return func() ([]flowmetrics.Occurrence, error) {
			<-synced
			return fresh, err
		}
	}
	answers := make(chan string, 2)
	for _, conv := range []string{"a", "b"} {
		go func() {
			fresh, err := g.Claim(context.Background(), []flowmetrics.ClaimRequest{groupReq(conv, conv+"x")})
			answers <- fmt.Sprint(keysOf(fresh), err)
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := starts
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			close(synced)
			t.Fatalf("%d claims started while the first waited for its sync, want 2", n)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case a := <-answers:
		t.Errorf("a call was answered (%s) before its sync", a)
	case <-time.After(50 * time.Millisecond):
	}
	close(synced)
	got := []string{<-answers, <-answers}
	slices.Sort(got)
	if want := []string{"[ax] <nil>", "[bx] <nil>"}; !slices.Equal(got, want) {
		t.Errorf("answers: got %q, want %q", got, want)
	}
	if g.inStore() {
		t.Error("the group is still marked in the store after every call returned")
	}
}
