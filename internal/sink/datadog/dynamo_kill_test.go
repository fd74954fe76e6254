package datadog

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

const (
	envChild     = "FLOWMETRICS_DATADOG_CHILD"
	envTable     = "FLOWMETRICS_DATADOG_TABLE"
	envIntake    = "FLOWMETRICS_DATADOG_INTAKE"
	envBase      = "FLOWMETRICS_DATADOG_BASE"
	killLease    = 3 * time.Second
	killMargin   = time.Second
	childTimeout = 30 * time.Second
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) != "" {
		os.Exit(childInstance())
	}
	os.Exit(m.Run())
}

// killBatch returns the events of batch 1 or 2: five conversations each,
// attribute times relative to base, batch 2 revisiting batch 1's buckets.
func killBatch(base time.Time, n int) []genesys.Record {
	var recs []genesys.Record
	for i := 0; i < 5; i++ {
		var names []string
		for j, age := range [][]time.Duration{{20 * time.Second, 40 * time.Second}, {21 * time.Second, 60 * time.Second, 41 * time.Second}}[n-1] {
			flow := []string{"CustomerRouting", "Billing Main"}[(i+j)%2]
			names = append(names, fmt.Sprintf("%sMetric_M%d(%s)", flow, j, base.Add(-age).UTC().Format(time.RFC3339Nano)))
		}
		recs = append(recs, genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: fmt.Sprintf("conv-%d-%d", n, i), MetricNames: names}})
	}
	return recs
}

// instance is one Lambda-like process: dynamostore on the table, the
// Datadog count sink, the pipeline.
type instance struct {
	st *dynamostore.Store
	p  *pipeline.Pipeline
}

func newInstance(endpoint, table, owner, intake string) (*instance, error) {
	st, err := dynamostore.Open(dynamostore.Config{Table: table, Owner: owner, Lease: killLease, Margin: killMargin}, dynalitetest.NewClient(endpoint), store.Options{}, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	m := telemetry.New()
	sink, err := New(Config{Mode: Count, URL: intake, APIKeyEnv: "FLOWMETRICS_TEST_DD_KEY", MaxRetries: 1, RetryInitial: time.Millisecond, RetryMax: 5 * time.Millisecond}, sink.Deps{Metrics: m, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	p := pipeline.New(st, []flowmetrics.Sink{sink}, pipeline.Config{CacheConversations: -1, RetryMin: time.Millisecond, RetryMax: 10 * time.Millisecond}, m, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	if err := p.Register(ctx); err != nil {
		return nil, err
	}
	return &instance{st, p}, nil
}

// deliver is what the Lambda handler does with a batch: claim, flush,
// settle the marks.
func (in *instance) deliver(recs []genesys.Record) error {
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	if _, err := in.p.Ingest(ctx, recs); err != nil {
		return err
	}
	if err := in.p.Flush(ctx); err != nil {
		return err
	}
	return in.st.Settle(ctx)
}

// childInstance delivers batch 1 (committed), then batch 2, during whose
// send the parent kills it.
func childInstance() int {
	base, _ := strconv.ParseInt(os.Getenv(envBase), 10, 64)
	in, err := newInstance(os.Getenv(dynalitetest.EnvEndpoint), os.Getenv(envTable), "child", os.Getenv(envIntake))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	if err := in.deliver(killBatch(time.Unix(base, 0), 1)); err != nil {
		fmt.Println("batch 1:", err)
		return 1
	}
	fmt.Println("batch 1 committed")
	err = in.deliver(killBatch(time.Unix(base, 0), 2))
	fmt.Println("batch 2 returned (the parent should have killed this process):", err)
	return 3
}

// TestKillBetweenSendAndCommitDynamo: count mode on dynamostore (moto, whose
// DynamoDB has transactions). A process delivers batch 1 (its totals and
// delivered marks committed in one transaction) and is SIGKILLed after
// Datadog stored batch 2's totals and before it could commit anything. The
// events of batch 2 are redelivered to a new instance after the lease: it
// restores batch 1's totals from the table, takes the claims over and resends
// batch 2 computed from them, so it sends the same values. Reconstructing
// what Datadog keeps (the last value per series and second), every count is
// exact, and no write ever lowered a total. Redelivering batch 1 counts
// nothing.
func TestKillBetweenSendAndCommitDynamo(t *testing.T) {
	srv := dynalitetest.StartMoto(t)
	table := srv.CreateTable(t)
	t.Setenv("FLOWMETRICS_TEST_DD_KEY", testKey)
	base := time.Now().Truncate(time.Second)
	fake := datadogtest.New(t, testKey, time.Now)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=1", envTable+"="+table, envIntake+"="+fake.URL,
		envBase+"="+strconv.FormatInt(base.Unix(), 10), dynalitetest.EnvEndpoint+"="+srv.Endpoint)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	batch1Payloads := -1
	fake.Do(func() {
		fake.OnAccept = func(n int) {
			if batch1Payloads < 0 || n <= batch1Payloads {
				return
			}
			cmd.Process.Kill() // Datadog holds the values; the 202 never arrives
			cmd.Process.Wait()
		}
	})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Batch 1 is one payload; arm the kill once it is accepted.
	deadline := time.Now().Add(childTimeout)
	for {
		var n int
		fake.Do(func() { n = len(fake.Bodies) })
		if n >= 1 {
			fake.Do(func() { batch1Payloads = n })
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child sent nothing: %s", out.String())
		}
		time.Sleep(time.Millisecond)
	}
	werr := make(chan error, 1)
	go func() { werr <- cmd.Wait() }()
	select {
	case err := <-werr:
		if err == nil || !strings.Contains(out.String(), "batch 1 committed") || strings.Contains(out.String(), "batch 2 returned") {
			t.Fatalf("child: %v, output %q; want it to commit batch 1 and be killed sending batch 2", err, out.String())
		}
	case <-time.After(childTimeout):
		t.Fatalf("the child was not killed: %s", out.String())
	}
	var heldAtKill map[datadogtest.Point]float64
	fake.Do(func() {
		fake.OnAccept = nil
		heldAtKill = make(map[datadogtest.Point]float64, len(fake.Store))
		for k, v := range fake.Store {
			heldAtKill[k] = v
		}
	})

	// The redelivery reaches a new instance after the dead one's lease.
	time.Sleep(killLease + 500*time.Millisecond)
	in, err := newInstance(srv.Endpoint, table, "next", fake.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer in.st.Close()
	if err := in.deliver(killBatch(base, 2)); err != nil {
		t.Fatalf("redelivery of batch 2: %v", err)
	}
	if err := in.deliver(killBatch(base, 1)); err != nil {
		t.Fatalf("redelivery of batch 1: %v", err)
	}

	namer := naming.New(naming.Config{})
	want := map[datadogtest.Point]float64{}
	for _, n := range []int{1, 2} {
		for _, rec := range killBatch(base, n) {
			for _, name := range rec.Event.MetricNames {
				a, ok, err := genesys.ParseAttribute(name)
				if !ok || err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				k := datadogtest.PointOf(MetricName(namer.Name(a.Flow, a.Metric)), Tags(namer, a.Flow, a.Metric), flowmetrics.BucketStart(a.Time, 10*time.Second).Unix())
				want[k]++
			}
		}
	}
	fake.Lock()
	defer fake.Unlock()
	for _, v := range fake.Violations {
		t.Errorf("contract violation: %s", v)
	}
	for _, l := range fake.Lowered {
		t.Errorf("a total Datadog held was lowered: %s", l)
	}
	total := 0.0
	for k, w := range want {
		total += w
		if got := fake.Store[k]; got != w {
			t.Errorf("%v: Datadog holds %v, want %v (held %v when the process was killed)", k, got, w, heldAtKill[k])
		}
	}
	for k := range fake.Store {
		if _, ok := want[k]; !ok {
			t.Errorf("%v: Datadog holds %v, want nothing", k, fake.Store[k])
		}
	}
	t.Logf("%v occurrences in %d series-seconds, exact after the kill; %d payloads", total, len(want), len(fake.Bodies))
}
