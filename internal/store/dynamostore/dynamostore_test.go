package dynamostore_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
	"github.com/flowmetrics/flowmetrics/internal/store/storetest"
)

// The multi-process tests re-run this test binary as children; these
// variables tell a child what to do.
const (
	envChild = "FLOWMETRICS_DYNAMOSTORE_CHILD"
	envTable = "FLOWMETRICS_DYNAMOSTORE_TABLE"
	envIndex = "FLOWMETRICS_DYNAMOSTORE_INDEX"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envChild) {
	case "":
		os.Exit(m.Run())
	case "claim":
		os.Exit(childClaim())
	case "crash":
		os.Exit(childCrash())
	default:
		fmt.Fprintln(os.Stderr, "unknown child role")
		os.Exit(3)
	}
}

var t0 = time.Date(2026, 11, 20, 9, 31, 48, 0, time.UTC)

func open(t *testing.T, srv *dynalitetest.Server, table string, cfg dynamostore.Config, opts store.Options) *dynamostore.Store {
	t.Helper()
	cfg.Table = table
	s, err := dynamostore.Open(cfg, srv.Client, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	srv := dynalitetest.Start(t)
	var tables sync.Map // store → its table, for a second writer
	for _, readFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("ReadFirst=%v", readFirst), func(t *testing.T) {
			storetest.Run(t, storetest.Harness{
				Open: func(t *testing.T, opts store.Options) flowmetrics.Store {
					table := srv.CreateTable(t)
					s := open(t, srv, table, conformanceConfig(readFirst), opts)
					tables.Store(s, table)
					return s
				},
				Another: func(t *testing.T, s flowmetrics.Store) flowmetrics.Store {
					table, _ := tables.Load(s)
					return open(t, srv, table.(string), conformanceConfig(readFirst), store.Options{})
				},
				SkipSinkState:        "dynalite has no TransactWriteItems: TestConformanceMoto runs the sink-state tests",
				PathsOpenOnKnownKeys: true,
			})
		})
	}
}

// conformanceConfig is the store's configuration for the conformance
// suite: an idle step of 1 ms, since the suite checks idle deadlines to the
// millisecond (the default rounds them up to the minute), and a lease
// longer than the suite's clock jumps, since the suite expects its outbox
// to keep what it holds (this store's outbox gives up an entry at the end
// of its lease: TestCrashBetweenClaimAndDelivery and the lease tests cover
// that).
func conformanceConfig(readFirst bool) dynamostore.Config {
	return dynamostore.Config{ReadFirst: readFirst, IdleStep: time.Millisecond, Lease: 24 * time.Hour}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		name string
		cfg  dynamostore.Config
		ok   bool
	}{
		{"defaults", dynamostore.Config{Table: "t"}, true},
		{"no table", dynamostore.Config{}, false},
		{"margin not below lease", dynamostore.Config{Table: "t", Lease: time.Second, Margin: time.Second}, false},
		{"negative lease", dynamostore.Config{Table: "t", Lease: -time.Second}, false},
		{"owner with @", dynamostore.Config{Table: "t", Owner: "a@b"}, false},
	}
	for _, c := range cases {
		if err := c.cfg.Validate(); (err == nil) != c.ok {
			t.Errorf("%s: got error %v, want ok=%v", c.name, err, c.ok)
		}
	}
}

func mustClaim(t *testing.T, s flowmetrics.Store, conv string, occs ...flowmetrics.Occurrence) []string {
	t.Helper()
	got, err := s.Claim(context.Background(), []flowmetrics.ClaimRequest{{ConversationID: conv, Occurrences: occs}})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range got {
		keys = append(keys, o.Key)
	}
	return keys
}

// claimPending claims and returns the new keys and the requests the store
// reported as pending under another instance.
func claimPending(t *testing.T, s flowmetrics.Store, reqs ...flowmetrics.ClaimRequest) ([]string, []int) {
	t.Helper()
	got, err := s.Claim(context.Background(), reqs)
	var pe *flowmetrics.PendingError
	if err != nil && !errors.As(err, &pe) {
		t.Fatal(err)
	}
	var keys []string
	for _, o := range got {
		keys = append(keys, o.Key)
	}
	if pe == nil {
		return keys, nil
	}
	return keys, pe.Requests
}

func item(t *testing.T, srv *dynalitetest.Server, table, conv string) map[string]string {
	t.Helper()
	out, err := srv.Client.GetItem(context.Background(), &dynamodb.GetItemInput{
		TableName: aws.String(table), ConsistentRead: aws.Bool(true),
		Key: map[string]types.AttributeValue{"id": &types.AttributeValueMemberS{Value: conv}},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for k, v := range out.Item {
		switch v := v.(type) {
		case *types.AttributeValueMemberS:
			m[k] = v.Value
		case *types.AttributeValueMemberN:
			m[k] = v.Value
		}
	}
	return m
}

// TestPendingUntilAcked follows one claim through its pending mark, the
// sink's acknowledgement and the mark as delivered.
func TestPendingUntilAcked(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	s := open(t, srv, table, dynamostore.Config{Owner: "a", Lease: time.Minute, Margin: 10 * time.Second}, store.Options{Now: clock.Now})
	if err := s.Register(ctx, []string{"sink"}); err != nil {
		t.Fatal(err)
	}
	a := storetest.Occ("F", "A", t0)
	if got := mustClaim(t, s, "c1", a); len(got) != 1 {
		t.Fatalf("first claim: got %q, want the key", got)
	}
	k := "k:" + a.Key
	wantPending := "a@" + strconv.FormatInt(t0.Add(time.Minute).UnixMilli(), 10)
	if got := item(t, srv, table, "c1")[k]; got != wantPending {
		t.Errorf("after claim: got mark %q, want %q", got, wantPending)
	}
	if got := item(t, srv, table, "c1")["ttl"]; got != strconv.FormatInt(t0.Add(store.DefaultRetention).Unix(), 10) {
		t.Errorf("ttl: got %s, want now + retention", got)
	}
	// Still in this instance's outbox: known to a repeat.
	if got := mustClaim(t, s, "c1", a); len(got) != 0 {
		t.Errorf("repeat while pending here: got %q, want nothing", got)
	}
	es, err := s.ReadOutbox(ctx, 0, 10)
	if err != nil || len(es) != 1 {
		t.Fatalf("outbox: got %d entries (err %v), want 1", len(es), err)
	}
	if err := s.AckState(ctx, "sink", es[0].Seq, nil); err != nil {
		t.Fatal(err)
	}
	if got := item(t, srv, table, "c1")[k]; got != "d" {
		t.Errorf("after ack: got mark %q, want d", got)
	}
	// Delivered: known to anyone, whatever the time.
	clock.Advance(time.Hour)
	other := open(t, srv, table, dynamostore.Config{Owner: "b"}, store.Options{Now: clock.Now})
	other.Register(ctx, []string{"sink"})
	if got := mustClaim(t, other, "c1", a); len(got) != 0 {
		t.Errorf("after delivery, another instance: got %q, want nothing", got)
	}
	if st := s.Stats(); st.UpdateItem != 3 || st.GetItem != 0 || st.WriteUnits < 3 {
		t.Errorf("stats: got %+v, want 3 updates (claim, repeat, mark) and their units", st)
	}
}

// TestLeaseTakeover: a claim nobody delivered is claimed again once its lease
// has ended, by exactly one of several instances, and is known before that.
func TestLeaseTakeover(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	cfg := dynamostore.Config{Lease: time.Minute, Margin: 10 * time.Second}
	opts := store.Options{Now: clock.Now}
	a := storetest.Occ("F", "A", t0)

	dead := open(t, srv, table, withOwner(cfg, "dead"), opts)
	dead.Register(ctx, []string{"sink"})
	if got := mustClaim(t, dead, "c1", a); len(got) != 1 {
		t.Fatalf("first claim: got %q", got)
	}
	// "dead" never delivers. Within its lease, others do not count it, and
	// report its request as pending elsewhere (not to be acknowledged).
	clock.Advance(30 * time.Second)
	var stores []*dynamostore.Store
	for i := 0; i < 6; i++ {
		s := open(t, srv, table, withOwner(cfg, fmt.Sprintf("live%d", i)), opts)
		s.Register(ctx, []string{"sink"})
		stores = append(stores, s)
	}
	b := storetest.Occ("F", "B", t0)
	got, pending := claimPending(t, stores[0],
		flowmetrics.ClaimRequest{ConversationID: "c2", Occurrences: []flowmetrics.Occurrence{b}},
		flowmetrics.ClaimRequest{ConversationID: "c1", Occurrences: []flowmetrics.Occurrence{a}})
	if len(got) != 1 || got[0] != b.Key {
		t.Errorf("within the lease: got %q new, want only %q", got, b.Key)
	}
	if len(pending) != 1 || pending[0] != 1 {
		t.Errorf("within the lease: got pending requests %v, want [1]", pending)
	}
	if es, _ := stores[0].ReadOutbox(ctx, 0, 10); len(es) != 1 || len(es[0].Occurrences) != 1 {
		t.Errorf("outbox of the live instance: got %v, want one entry with %q", es, b.Key)
	}
	// With ReadFirst the read alone decides it, with no write.
	rf := cfg
	rf.ReadFirst = true
	reader := open(t, srv, table, withOwner(rf, "reader"), opts)
	reader.Register(ctx, []string{"sink"})
	if got, pending := claimPending(t, reader, flowmetrics.ClaimRequest{ConversationID: "c1", Occurrences: []flowmetrics.Occurrence{a}}); len(got) != 0 || len(pending) != 1 {
		t.Errorf("ReadFirst within the lease: got %q new and pending %v, want nothing new and [0]", got, pending)
	}
	if st := reader.Stats(); st.UpdateItem != 0 || st.PendingElsewhere != 1 {
		t.Errorf("ReadFirst within the lease: got %d writes and %d pending, want 0 and 1", st.UpdateItem, st.PendingElsewhere)
	}
	// Its own outbox stops handing it out Margin before the lease ends.
	clock.Advance(21 * time.Second)
	if es, _ := dead.ReadOutbox(ctx, 0, 10); len(es) != 0 {
		t.Errorf("outbox within the margin: got %d entries, want 0", len(es))
	}
	if st := dead.Stats(); st.Dropped != 1 {
		t.Errorf("dropped: got %d, want 1", st.Dropped)
	}
	clock.Advance(10 * time.Second)
	var mu sync.Mutex
	wins, pendings := 0, 0
	var wg sync.WaitGroup
	for _, s := range stores {
		wg.Add(1)
		go func(s *dynamostore.Store) {
			defer wg.Done()
			got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "c1", Occurrences: []flowmetrics.Occurrence{a}}})
			var pe *flowmetrics.PendingError
			if err != nil && !errors.As(err, &pe) {
				t.Error(err)
				return
			}
			mu.Lock()
			wins += len(got)
			if pe != nil {
				pendings++
			}
			mu.Unlock()
		}(s)
	}
	wg.Wait()
	// One takes it over; the others find it pending under the winner's
	// new lease.
	if wins != 1 || pendings != len(stores)-1 {
		t.Errorf("after the lease: %d instances got the key as new and %d found it pending, want 1 and %d", wins, pendings, len(stores)-1)
	}
	// The dead instance coming back does not count it again either.
	if got, pending := claimPending(t, dead, flowmetrics.ClaimRequest{ConversationID: "c1", Occurrences: []flowmetrics.Occurrence{a}}); len(got) != 0 || len(pending) != 1 {
		t.Errorf("old owner after takeover: got %q new and pending %v, want nothing new, pending under the new owner", got, pending)
	}
}

// TestOwnOrphanReclaimed: this instance's own pending key that no live
// outbox entry holds (its entry ran out of lease) is new again to it.
func TestOwnOrphanReclaimed(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	s := open(t, srv, table, dynamostore.Config{Owner: "me", Lease: time.Minute, Margin: 10 * time.Second}, store.Options{Now: clock.Now})
	s.Register(ctx, []string{"sink"})
	a := storetest.Occ("F", "A", t0)
	mustClaim(t, s, "c1", a)
	clock.Advance(55 * time.Second) // past the entry's deadline, within the lease
	if es, _ := s.ReadOutbox(ctx, 0, 10); len(es) != 0 {
		t.Fatalf("outbox: got %d entries, want the expired one dropped", len(es))
	}
	if got := mustClaim(t, s, "c1", a); len(got) != 1 {
		t.Errorf("own orphan: got %q, want it new again", got)
	}
	es, _ := s.ReadOutbox(ctx, 0, 10)
	if len(es) != 1 {
		t.Fatalf("outbox after reclaim: got %d entries, want 1", len(es))
	}
}

// TestNoSinksWritesDelivered: with no sink registered nothing will deliver,
// so claims are written as delivered and never taken over.
func TestNoSinksWritesDelivered(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	s := open(t, srv, table, dynamostore.Config{}, store.Options{})
	a := storetest.Occ("F", "A", t0)
	mustClaim(t, s, "c1", a)
	if got := item(t, srv, table, "c1")["k:"+a.Key]; got != "d" {
		t.Errorf("mark: got %q, want d", got)
	}
}

func withOwner(c dynamostore.Config, o string) dynamostore.Config { c.Owner = o; return c }

// Multi-process: several processes claim overlapping keys of the same
// conversations at once; every key is new to exactly one of them.

const (
	mpChildren = 4
	mpConvs    = 12
	mpMetrics  = 16
	mpRounds   = 5
)

func TestMultiProcess(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type result struct {
		out []byte
		err error
	}
	results := make([]result, mpChildren)
	var wg sync.WaitGroup
	for i := 0; i < mpChildren; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), envChild+"=claim", envTable+"="+table, envIndex+"="+strconv.Itoa(i),
				dynalitetest.EnvEndpoint+"="+srv.Endpoint)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				err = fmt.Errorf("%v: %s", err, stderr.Bytes())
			}
			results[i] = result{out, err}
		}(i)
	}
	wg.Wait()
	won := map[string]int{}
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("child %d: %v", i, r.err)
		}
		sc := bufio.NewScanner(bytes.NewReader(r.out))
		for sc.Scan() {
			if k, ok := strings.CutPrefix(sc.Text(), "WON "); ok {
				won[k]++
			}
		}
	}
	if len(won) != mpConvs*mpMetrics {
		t.Errorf("got %d distinct keys claimed, want %d", len(won), mpConvs*mpMetrics)
	}
	for k, n := range won {
		if n != 1 {
			t.Errorf("key %s: new to %d claims, want 1", k, n)
		}
	}
}

// childClaim claims overlapping windows of keys in a different order per
// child, delivering (acknowledging) after every claim, and prints what it
// got as new.
func childClaim() int {
	ctx := context.Background()
	w, _ := strconv.Atoi(os.Getenv(envIndex))
	client := dynalitetest.NewClient(os.Getenv(dynalitetest.EnvEndpoint))
	s, err := dynamostore.Open(dynamostore.Config{Table: os.Getenv(envTable), Owner: "child" + strconv.Itoa(w)}, client, store.Options{}, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	if err := s.Register(ctx, []string{"sink"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var cursor uint64
	for r := 0; r < mpRounds; r++ {
		var reqs []flowmetrics.ClaimRequest
		for c := 0; c < mpConvs; c++ {
			conv := fmt.Sprintf("conv-%d", (c+w)%mpConvs)
			var occs []flowmetrics.Occurrence
			for m := (w + r) % 3; m < mpMetrics; m += 1 + (w+r)%2 {
				// Keys differ per conversation so each new key names its
				// conversation in the attribution below.
				occs = append(occs, storetest.Occ(conv, fmt.Sprintf("M%d", (m+w)%mpMetrics), t0))
			}
			// The last round asks for every key, so all get claimed.
			if r == mpRounds-1 {
				occs = occs[:0]
				for m := 0; m < mpMetrics; m++ {
					occs = append(occs, storetest.Occ(conv, fmt.Sprintf("M%d", m), t0))
				}
			}
			reqs = append(reqs, flowmetrics.ClaimRequest{ConversationID: conv, Occurrences: occs})
		}
		// Requests holding keys another child claims right now are
		// retried, as SQS would redeliver their records, until the other
		// child delivered them.
		for try := 0; len(reqs) > 0; try++ {
			if try == 500 {
				fmt.Fprintln(os.Stderr, "requests still pending elsewhere after 500 tries")
				return 1
			}
			if try > 0 {
				time.Sleep(10 * time.Millisecond)
			}
			var pending []flowmetrics.ClaimRequest
			var code int
			if pending, code = childClaimOnce(ctx, s, reqs, &cursor); code != 0 {
				return code
			}
			reqs = pending
		}
	}
	return 0
}

// childClaimOnce claims reqs, acknowledges what it got, prints it and
// returns the requests pending under another child.
func childClaimOnce(ctx context.Context, s *dynamostore.Store, reqs []flowmetrics.ClaimRequest, cursor *uint64) ([]flowmetrics.ClaimRequest, int) {
	{
		got, err := s.Claim(ctx, reqs)
		var pe *flowmetrics.PendingError
		if err != nil && !errors.As(err, &pe) {
			fmt.Fprintln(os.Stderr, err)
			return nil, 1
		}
		var pending []flowmetrics.ClaimRequest
		if pe != nil {
			for _, i := range pe.Requests {
				pending = append(pending, reqs[i])
			}
		}
		es, err := s.ReadOutbox(ctx, *cursor, 1000)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return nil, 1
		}
		n := 0
		for _, e := range es {
			*cursor = e.Seq
			n += len(e.Occurrences)
		}
		if n != len(got) {
			fmt.Fprintf(os.Stderr, "outbox holds %d occurrences, claim returned %d\n", n, len(got))
			return nil, 1
		}
		if len(es) > 0 {
			if err := s.AckState(ctx, "sink", *cursor, nil); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return nil, 1
			}
		}
		// Attribute each new key to its conversation by request order.
		i := 0
		for _, rq := range reqs {
			seen := map[string]bool{}
			for _, o := range rq.Occurrences {
				if i < len(got) && got[i].Key == o.Key && !seen[o.Key] {
					fmt.Printf("WON %s|%s\n", rq.ConversationID, o.Key)
					seen[o.Key] = true
					i++
				}
			}
		}
		return pending, 0
	}
}

// TestCrashBetweenClaimAndDelivery: a process claims and dies before
// delivering. A redelivered event, once the lease has ended, gets the
// occurrences as new: exactly once over all survivors.
func TestCrashBetweenClaimAndDelivery(t *testing.T) {
	srv := dynalitetest.Start(t)
	table := srv.CreateTable(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=crash", envTable+"="+table, dynalitetest.EnvEndpoint+"="+srv.Endpoint)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "claimed 3") {
		t.Fatalf("child: got err %v, output %q; want it to claim 3 keys and die", err, out)
	}
	occs := crashOccs()
	clock := storetest.NewClock(time.Now())
	cfg := dynamostore.Config{Lease: time.Minute, Margin: 10 * time.Second}
	s1 := open(t, srv, table, withOwner(cfg, "s1"), store.Options{Now: clock.Now})
	s1.Register(ctx, []string{"sink"})
	if got, pending := claimPending(t, s1, flowmetrics.ClaimRequest{ConversationID: "conv-crash", Occurrences: occs}); len(got) != 0 || len(pending) != 1 {
		t.Errorf("during the dead process's lease: got %q new and pending %v, want nothing new and the request pending", got, pending)
	}
	clock.Advance(cfg.Lease + time.Second)
	got := mustClaim(t, s1, "conv-crash", occs...)
	if len(got) != 3 {
		t.Errorf("redelivery after the lease: got %q, want all 3 keys", got)
	}
	es, _ := s1.ReadOutbox(ctx, 0, 10)
	if len(es) != 1 {
		t.Fatalf("outbox: got %d entries, want 1", len(es))
	}
	if err := s1.AckState(ctx, "sink", es[0].Seq, nil); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	s2 := open(t, srv, table, withOwner(cfg, "s2"), store.Options{Now: clock.Now})
	s2.Register(ctx, []string{"sink"})
	if got := mustClaim(t, s2, "conv-crash", occs...); len(got) != 0 {
		t.Errorf("after delivery: got %q, want nothing", got)
	}
}

func crashOccs() []flowmetrics.Occurrence {
	return []flowmetrics.Occurrence{storetest.Occ("F", "A", t0), storetest.Occ("F", "B", t0), storetest.Occ("G", "C", t0)}
}

// childCrash claims and dies without delivering or closing.
func childCrash() int {
	client := dynalitetest.NewClient(os.Getenv(dynalitetest.EnvEndpoint))
	s, err := dynamostore.Open(dynamostore.Config{Table: os.Getenv(envTable), Owner: "crasher", Lease: time.Minute, Margin: 10 * time.Second}, client, store.Options{}, nil)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	ctx := context.Background()
	s.Register(ctx, []string{"sink"})
	got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{{ConversationID: "conv-crash", Occurrences: crashOccs()}})
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Printf("claimed %d\n", len(got))
	return 7 // dies: no Ack, no Close
}

// TestHoldsABatch: the store tells the pipeline that a batch it read may
// not be sent once one of its entries was dropped for its lease running
// short: from then on a redelivered event claims the keys again.
func TestHoldsABatch(t *testing.T) {
	srv := dynalitetest.Start(t)
	ctx := context.Background()
	clock := storetest.NewClock(t0)
	s := open(t, srv, srv.CreateTable(t), dynamostore.Config{Owner: "a", Lease: time.Minute, Margin: 10 * time.Second}, store.Options{Now: clock.Now})
	if err := s.Register(ctx, []string{"sink"}); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, s, "c1", storetest.Occ("F", "A", t0))
	clock.Advance(20 * time.Second)
	mustClaim(t, s, "c2", storetest.Occ("F", "A", t0))
	es, err := s.ReadOutbox(ctx, 0, 10)
	if err != nil || len(es) != 2 {
		t.Fatalf("outbox: %d entries (err %v), want 2", len(es), err)
	}
	if !s.Holds(0, es[1].Seq, 2) {
		t.Error("both entries within their lease: not held")
	}
	// The first entry's lease runs short (less than the margin left).
	clock.Advance(31 * time.Second)
	if s.Holds(0, es[1].Seq, 2) {
		t.Error("both after the first was dropped: still held")
	}
	if !s.Holds(es[0].Seq, es[1].Seq, 1) {
		t.Error("the second, within its lease: not held")
	}
	if st := s.Stats(); st.Dropped != 1 {
		t.Errorf("dropped: %d, want 1", st.Dropped)
	}
	// The dropped claim is this instance's to take again: it is new.
	if got := mustClaim(t, s, "c1", storetest.Occ("F", "A", t0)); len(got) != 1 {
		t.Errorf("claim again after the drop: %q, want the key", got)
	}
}
