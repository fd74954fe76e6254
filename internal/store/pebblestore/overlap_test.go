package pebblestore_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
)

// TestClaimStartsWhileTheOneBeforeSyncs: with the write-ahead log's sync
// held up, a started claim is applied but not acknowledged: its outbox
// entry is not read, and a claim of the same conversation started meanwhile
// does not wait for that sync, sees the first claim's key as held (each
// key is new once) and is not acknowledged before the first is durable.
func TestClaimStartsWhileTheOneBeforeSyncs(t *testing.T) {
	hold, release := new(atomic.Bool), make(chan struct{})
	s := openHeldSync(t, store.Options{}, hold, release)
	ctx := context.Background()
	at := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	occ := func(name string) flowmetrics.Occurrence {
		return flowmetrics.Occurrence{Key: fmt.Sprintf("FMetric_%s(%s)", name, at.Format(time.RFC3339)), Flow: "F", Metric: name, Time: at}
	}
	req := func(names ...string) []flowmetrics.ClaimRequest {
		r := flowmetrics.ClaimRequest{ConversationID: "c1"}
		for _, n := range names {
			r.Occurrences = append(r.Occurrences, occ(n))
		}
		return []flowmetrics.ClaimRequest{r}
	}
	hold.Store(true)
	started := make(chan func() ([]flowmetrics.Occurrence, error), 2)
	go func() {
		started <- s.StartClaim(ctx, req("A"))
		started <- s.StartClaim(ctx, req("A", "B"))
	}()
	var waits []func() ([]flowmetrics.Occurrence, error)
	for range 2 {
		select {
		case w := <-started:
			waits = append(waits, w)
		case <-time.After(10 * time.Second):
			close(release)
			t.Fatal("a claim did not start while the sync before it was held up")
		}
	}
	answered := make(chan string, 2)
	for _, w := range waits {
		go func() {
			fresh, err := w()
			var keys []string
			for _, o := range fresh {
				keys = append(keys, o.Metric)
			}
			answered <- fmt.Sprint(keys, err)
		}()
	}
	select {
	case a := <-answered:
		t.Errorf("a claim was answered (%s) before its sync", a)
	case <-time.After(100 * time.Millisecond):
	}
	if entries, err := s.ReadOutbox(ctx, 0, 10); err != nil || len(entries) != 0 {
		t.Errorf("outbox before the sync: got %d entries, %v; want none", len(entries), err)
	}
	hold.Store(false)
	close(release)
	got := map[string]bool{}
	for range 2 {
		select {
		case a := <-answered:
			got[a] = true
		case <-time.After(10 * time.Second):
			t.Fatal("a claim was not answered after the sync")
		}
	}
	if want := map[string]bool{"[A] <nil>": true, "[B] <nil>": true}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("answers: got %v, want %v (A claimed by the first only)", got, want)
	}
	entries, err := s.ReadOutbox(ctx, 0, 10)
	if err != nil || len(entries) != 2 {
		t.Fatalf("outbox after the sync: got %d entries, %v; want 2", len(entries), err)
	}
}

// TestCloseStartsWhileItsSyncIsHeld: with the write-ahead log's sync held
// up, a started close returns once it is applied: a claim of its
// conversation started meanwhile sees the path closed (its new key counts
// as late), and the close's points are not read from the outbox until
// its wait has seen it durable.
func TestCloseStartsWhileItsSyncIsHeld(t *testing.T) {
	at := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	now := func() time.Time { return at }
	hold, release := new(atomic.Bool), make(chan struct{})
	s := openHeldSync(t, store.Options{Now: now, Paths: &flowmetrics.PathOptions{Grace: time.Minute, Idle: time.Hour}}, hold, release)
	ctx := context.Background()
	occ := func(name string) flowmetrics.Occurrence {
		return flowmetrics.Occurrence{Key: fmt.Sprintf("FMetric_%s(%s)", name, at.Format(time.RFC3339)), Flow: "F", Metric: name, Time: at}
	}
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c1", Occurrences: []flowmetrics.Occurrence{occ("A")}, Ended: true}}); err != nil {
		t.Fatal(err)
	}
	derive := func(cp flowmetrics.ClosedPath) []flowmetrics.PathPoint {
		return []flowmetrics.PathPoint{{Kind: flowmetrics.PathExit, Flow: "F", Metric: fmt.Sprint(cp.Keys), Conversation: cp.ConversationID, Time: at}}
	}
	hold.Store(true)
	type started struct {
		n    int
		wait func() error
		err  error
	}
	closes := make(chan started, 1)
	go func() {
		n, wait, err := s.StartClosePathsOf(ctx, []string{"c1", "unknown"}, at.Add(2*time.Minute), derive)
		closes <- started{n, wait, err}
	}()
	var c started
	select {
	case c = <-closes:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("the close did not return while its sync was held up")
	}
	if c.err != nil || c.n != 1 {
		close(release)
		t.Fatalf("started close: closed %d (%v), want 1", c.n, c.err)
	}
	late := s.StartClaim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c1", Occurrences: []flowmetrics.Occurrence{occ("B")}}})
	if entries, err := s.ReadOutbox(ctx, 0, 10); err != nil || len(entries) != 1 || len(entries[0].Paths) != 0 {
		t.Errorf("outbox before the close's sync: got %+v, %v; want the claim's entry alone", entries, err)
	}
	hold.Store(false)
	close(release)
	if err := c.wait(); err != nil {
		t.Fatalf("close wait: %v", err)
	}
	fresh, err := late()
	if err != nil || len(fresh) != 1 || !fresh[0].AfterClose {
		t.Errorf("claim started after the close was applied: got %+v (%v), want B, late", fresh, err)
	}
	entries, err := s.ReadOutbox(ctx, 0, 10)
	if err != nil || len(entries) != 3 || len(entries[1].Paths) != 1 || entries[1].Paths[0].Metric != "[FMetric_A(2026-11-20T09:00:00Z)]" {
		t.Fatalf("outbox after the sync: got %+v, %v; want the claim's, the close's (its path of A) and the late claim's", entries, err)
	}
	if n, err := s.ClosePathsOf(ctx, []string{"c1"}, at.Add(time.Hour), derive); err != nil || n != 0 {
		t.Errorf("closing again: closed %d (%v), want 0", n, err)
	}
}

// openHeldSync opens a registered store whose write-ahead log's syncs wait
// for release while hold is set, and closes it when the test ends.
func openHeldSync(t *testing.T, opts store.Options, hold *atomic.Bool, release <-chan struct{}) *pebblestore.Store {
	t.Helper()
	inj := errorfs.InjectorFunc(func(o errorfs.Op) error {
		if hold.Load() && strings.HasSuffix(o.Path, ".log") && (o.Kind == errorfs.OpFileSync || o.Kind == errorfs.OpFileSyncData) {
			<-release
		}
		return nil
	})
	s, err := pebblestore.OpenFS(t.TempDir(), errorfs.Wrap(vfs.Default, inj), opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.Register(context.Background(), []string{"a"}); err != nil {
		t.Fatal(err)
	}
	return s
}
