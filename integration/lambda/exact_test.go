package lambda_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
)

// Timing of the run. The function's timings are shortened so that a claim
// whose instance died is taken over within seconds; the ratios the
// template keeps (visibility timeout ≥ lease + function timeout + cache
// TTL) are kept.
const (
	lease           = 3 * time.Second
	functionTimeout = 4 * time.Second
	cacheTTL        = time.Second
	visibility      = lease + functionTimeout + cacheTTL + time.Second
	kills           = 6
	runLimit        = 4 * time.Minute
	stallLimit      = 45 * time.Second
)

// event is one EventBridge event of the corpus: an envelope and the metric
// keys it carries.
type event struct {
	conv string
	body string
}

type occurrence struct{ flow, metric, conv, key string }

// corpus builds conversations the way Genesys reports them: each step of a
// flow sets one more attribute, and every participant's event carries every
// attribute set so far. The attribute times are spread over the last ten
// minutes. It returns the events (shuffled, some repeated) and every
// distinct occurrence with its minute.
func corpus(rng *rand.Rand, now time.Time) ([]event, map[occurrence]time.Time) {
	flows := []string{"Customer Routing", "Billing Main", "Kundenzufriedenheit"}
	want := map[occurrence]time.Time{}
	var evs []event
	for c := 0; c < 90; c++ {
		conv := fmt.Sprintf("%08x-0000-4000-8000-%012d", rng.Uint32(), c)
		flow := flows[rng.IntN(len(flows))]
		flowName := strings.ReplaceAll(flow, " ", "")
		at := now.Add(-10*time.Minute + time.Duration(rng.IntN(540))*time.Second)
		attrs := map[string]string{"Ordinary": "x"}
		participants := 2 + rng.IntN(2)
		for step := 0; step < 2+rng.IntN(5); step++ {
			at = at.Add(time.Duration(1+rng.IntN(20)) * time.Second)
			metric := fmt.Sprintf("Step%d", 1+rng.IntN(6))
			key := genesys.AttributeName(flowName, metric, at)
			attrs[key] = "1"
			want[occurrence{flowName, metric, conv, key}] = at.UTC().Truncate(time.Minute)
			for p := 0; p < participants; p++ {
				evs = append(evs, event{conv, envelope(conv, fmt.Sprintf("p%d", p), attrs)})
			}
		}
	}
	// EventBridge is at-least-once: 5% of events are sent twice.
	for i := range len(evs) / 20 {
		_ = i
		evs = append(evs, evs[rng.IntN(len(evs))])
	}
	rng.Shuffle(len(evs), func(i, j int) { evs[i], evs[j] = evs[j], evs[i] })
	return evs, want
}

func envelope(conv, participant string, attrs map[string]string) string {
	snap := map[string]string{}
	for k, v := range attrs {
		snap[k] = v
	}
	return string(genesys.Envelope{
		Conversation: conv, Participant: participant, Time: time.UnixMilli(1795167108900), Attributes: snap,
		ID: fmt.Sprintf("%s-%s-%d", conv, participant, len(snap)), Source: "aws.partner/genesys.com/cloud/org/flow-metrics", Region: "eu-west-2",
	}.JSON())
}

// message is one event in flight: in the SQS queue, or an asynchronous
// EventBridge → Lambda invocation (direct) that Lambda retries on error.
type message struct {
	id        string
	body      string
	direct    bool
	visibleAt time.Time
	receives  int
	deleted   bool
}

// queue is SQS as the event source mapping sees it: a receive hides the
// messages for the visibility timeout; the ones not listed in
// batchItemFailures of a successful invocation are deleted; the others come
// back when their visibility timeout ends.
type queue struct {
	mu   sync.Mutex
	msgs []*message
	left int
	// lastWork is when a message other than a sweep was last deleted.
	lastWork time.Time
}

func (q *queue) receive(rng *rand.Rand, now time.Time) []*message {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 1 + rng.IntN(10)
	var got []*message
	for _, m := range q.msgs {
		if m.deleted || m.visibleAt.After(now) {
			continue
		}
		if m.direct {
			if len(got) > 0 {
				continue
			}
			m.visibleAt, m.receives = now.Add(visibility), m.receives+1
			return []*message{m}
		}
		m.visibleAt, m.receives = now.Add(visibility), m.receives+1
		got = append(got, m)
		if len(got) == n {
			break
		}
	}
	return got
}

func (q *queue) delete(ms []*message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, m := range ms {
		if !m.deleted {
			m.deleted = true
			q.left--
			if !strings.HasPrefix(m.id, "sweep-") {
				q.lastWork = time.Now()
			}
		}
	}
}

// push adds messages to the queue (a close message, a sweep).
func (q *queue) push(ms ...*message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.msgs = append(q.msgs, ms...)
	q.left += len(ms)
}

// work returns how many messages other than sweeps are still to be
// acknowledged, and when the last of the others was.
func (q *queue) work() (left int, last time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, m := range q.msgs {
		if !m.deleted && !strings.HasPrefix(m.id, "sweep-") {
			left++
		}
	}
	return left, q.lastWork
}

func (q *queue) remaining() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.left
}

type stats struct {
	mu                                          sync.Mutex
	invocations, sqs, direct, doubled           int
	itemFailures, transportErrors, functionErrs int
	batchSizes                                  map[int]int
}

func (s *stats) add(f func(*stats)) { s.mu.Lock(); f(s); s.mu.Unlock() }

// TestServerlessExactlyOnce is the serverless exactness test: the real
// bootstrap on emulated Lambda instances sharing dynalite, SQS-shaped
// batches of 1 to 10 records, batchItemFailures resent after the
// visibility timeout, six SIGKILLs each followed by a cold start. What the
// instances wrote to stdout is read back as CloudWatch would (EMF, summed)
// and what they sent to a loopback Datadog intake as Datadog would store it;
// every series' total per minute must equal the corpus's distinct
// occurrences, with nothing lost and any duplicate inside the documented
// window: what an invocation killed before it completed had sent, by a
// SIGKILL or by running into the function timeout, after which the
// emulator (as Lambda) kills the process. A batch whose send outlasts its
// claims' lease is never sent again: the pipeline abandons it, so a loaded
// machine's slow sends add nothing to the window.
//
// Two arrangements, as the template deploys them:
//
//   - distribution: three instances, some batches handed to two instances
//     at once, a fifth of the events as direct EventBridge invocations;
//     sinks emf and datadog in distribution mode (every value kept).
//   - count: one writer (the FIFO queue with one message group: one batch
//     at a time); the datadog sink in count mode (last value per series and
//     second), its running totals restored from DynamoDB at each cold start.
func TestServerlessExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("serverless exactness: skipped in -short mode")
	}
	if os.Getenv("FLOWMETRICS_DYNALITE") == "" && os.Getenv(dynalitetest.EnvEndpoint) == "" {
		t.Skip("set FLOWMETRICS_DYNALITE to dynalite's cli.js (.ci/run installs it) to run the serverless exactness test")
	}
	bootstrap, rie := buildTools(t)
	srv := dynalitetest.Start(t)
	distOK := true
	t.Run("distribution", func(t *testing.T) {
		distOK = runExactness(t, bootstrap, rie, srv, arrangement{
			instances: 3, sinks: "emf,datadog", mode: "distribution", twins: true, direct: true,
		})
	})
	t.Run("count", func(t *testing.T) {
		if !distOK {
			t.Skip("this build's datadog sink has no distribution mode, so no durable count totals either: count mode is exact only without restarts")
		}
		// The count totals are committed with the delivered marks in one
		// TransactWriteItems, which dynalite lacks: moto has it.
		runExactness(t, bootstrap, rie, dynalitetest.StartMoto(t), arrangement{instances: 1, sinks: "datadog", mode: "count"})
	})
}

type arrangement struct {
	instances     int
	sinks, mode   string
	twins, direct bool
}

// runExactness runs the corpus through one arrangement and checks every
// sink's totals. It reports false when the binary ignored the requested
// Datadog mode (the Datadog totals are then not checked).
func runExactness(t *testing.T, bootstrap, rie string, srv *dynalitetest.Server, ar arrangement) bool {
	table := srv.CreateTable(t)
	// The incarnations each send their own API key; the intake accepts any.
	dd := datadogtest.New(t, "", time.Now)
	ddURL := dd.URL

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	evs, want := corpus(rng, time.Now())

	q := &queue{}
	for i, e := range evs {
		q.msgs = append(q.msgs, &message{id: fmt.Sprintf("m%05d", i), body: e.body, direct: ar.direct && rng.IntN(5) == 0})
	}
	q.left = len(q.msgs)

	out := &output{}
	// Conversation paths: a customer.end closes its path a grace later,
	// through the close queue where several instances write (the template
	// has none with a single writer: the sweep closes ended paths there);
	// the others close at their idle timeout, found by the sweep.
	closeQ, sqsURL := startFakeSQS(t)
	env := append(os.Environ(),
		"FLOWMETRICS_PATHS=true", "FLOWMETRICS_GRACE=1s", "FLOWMETRICS_IDLE_TIMEOUT=4s", "FLOWMETRICS_IDLE_STEP=1s",
		"FLOWMETRICS_PATHS_CONFIG="+pathsConfig,
		"AWS_LAMBDA_FUNCTION_TIMEOUT="+fmt.Sprint(int(functionTimeout/time.Second)),
		"AWS_LAMBDA_FUNCTION_NAME=flowmetrics-it",
		"AWS_REGION=us-east-1", "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test",
		"AWS_EC2_METADATA_DISABLED=true",
		"FLOWMETRICS_TABLE="+table,
		"FLOWMETRICS_DYNAMODB_ENDPOINT="+srv.Endpoint,
		"FLOWMETRICS_SINK="+ar.sinks,
		"FLOWMETRICS_DATADOG_MODE="+ar.mode,
		"FLOWMETRICS_DATADOG_URL="+ddURL,
		"FLOWMETRICS_LEASE="+lease.String(),
		"FLOWMETRICS_LEASE_MARGIN=1s",
		"FLOWMETRICS_CACHE_TTL="+cacheTTL.String(),
		"FLOWMETRICS_FLUSH_RESERVE=1s",
		"FLOWMETRICS_LOG_LEVEL=error",
	)
	if ar.instances > 1 {
		env = append(env, "FLOWMETRICS_CLOSE_QUEUE_URL="+sqsURL+"/close", "FLOWMETRICS_SQS_ENDPOINT="+sqsURL)
	}
	var ins []*instance
	for i := 0; i < ar.instances; i++ {
		in := &instance{name: fmt.Sprintf("instance%d", i), bootstrap: bootstrap, rie: rie, env: env, out: out, t: t}
		in.start()
		ins = append(ins, in)
	}
	t.Cleanup(func() {
		for _, in := range ins {
			in.kill()
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), runLimit)
	defer cancel()
	// A run that acknowledges nothing for a while is broken: stop it.
	var stalled atomic.Bool
	go func() {
		last, lastLeft := time.Now(), q.remaining()
		for ctx.Err() == nil {
			time.Sleep(time.Second)
			if left := q.remaining(); left != lastLeft {
				last, lastLeft = time.Now(), left
			} else if time.Since(last) > stallLimit {
				stalled.Store(true)
				cancel()
			}
		}
	}()
	st := &stats{batchSizes: map[int]int{}}
	var rmu sync.Mutex // the shared rng
	rnd := func(f func(*rand.Rand)) { rmu.Lock(); f(rng); rmu.Unlock() }

	// run invokes one instance with a batch and returns the messages it
	// acknowledged.
	run := func(in *instance, batch []*message) []*message {
		var payload []byte
		if batch[0].direct {
			payload = []byte(batch[0].body)
		} else {
			var ev events.SQSEvent
			for _, m := range batch {
				ev.Records = append(ev.Records, events.SQSMessage{MessageId: m.id, Body: m.body, EventSource: "aws:sqs",
					Attributes: map[string]string{"ApproximateReceiveCount": fmt.Sprint(m.receives)}})
			}
			payload, _ = json.Marshal(ev)
		}
		body, err := in.invoke(ctx, payload)
		if errors.Is(err, errDown) {
			return nil // not delivered; the messages come back after the visibility timeout
		}
		st.add(func(s *stats) {
			s.invocations++
			if batch[0].direct {
				s.direct++
			} else {
				s.sqs++
				s.batchSizes[len(batch)]++
			}
		})
		if err != nil {
			st.add(func(s *stats) {
				if strings.Contains(err.Error(), "Runtime.ExitError") || strings.Contains(err.Error(), "connection") || strings.Contains(err.Error(), "EOF") {
					s.transportErrors++
				} else {
					s.functionErrs++
				}
			})
			return nil
		}
		if batch[0].direct {
			return batch
		}
		if bytes.HasPrefix(body, []byte("Task timed out")) {
			// The function ran out of time (a loaded machine): a failed
			// invocation, whose messages come back after the visibility
			// timeout.
			st.add(func(s *stats) { s.functionErrs++ })
			return nil
		}
		var resp events.SQSEventResponse
		if err := json.Unmarshal(body, &resp); err != nil {
			t.Errorf("%s: response %s: %v", in.name, body, err)
			return nil
		}
		failed := map[string]bool{}
		for _, f := range resp.BatchItemFailures {
			failed[f.ItemIdentifier] = true
		}
		st.add(func(s *stats) { s.itemFailures += len(failed) })
		var acked []*message
		for _, m := range batch {
			if !failed[m.id] {
				acked = append(acked, m)
			}
		}
		return acked
	}

	// feeding: more messages are coming (sweeps), so the workers wait
	// for them even when the queue is empty.
	var feeding atomic.Bool
	drain := func(kills int) int {
		var wg sync.WaitGroup
		for w := range ins {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for ctx.Err() == nil && (q.remaining() > 0 || feeding.Load()) {
					if !ins[w].up() {
						time.Sleep(20 * time.Millisecond)
						continue
					}
					var batch []*message
					twin := -1
					rnd(func(r *rand.Rand) {
						batch = q.receive(r, time.Now())
						// SQS is at-least-once: now and then the same batch
						// goes to a second consumer at the same time.
						if ar.twins && len(batch) > 0 && r.IntN(8) == 0 {
							twin = (w + 1 + r.IntN(len(ins)-1)) % len(ins)
						}
					})
					if len(batch) == 0 {
						time.Sleep(50 * time.Millisecond)
						continue
					}
					if twin >= 0 {
						st.add(func(s *stats) { s.doubled++ })
						var twinAcked []*message
						var tw sync.WaitGroup
						tw.Add(1)
						go func() { defer tw.Done(); twinAcked = run(ins[twin], batch) }()
						acked := run(ins[w], batch)
						tw.Wait()
						q.delete(acked)
						q.delete(twinAcked)
						continue
					}
					q.delete(run(ins[w], batch))
				}
			}(w)
		}

		// The killer: SIGKILL an instance in the middle of an invocation, now
		// and then, and start it again (a cold start).
		killed := 0
		for killed < kills && ctx.Err() == nil && q.remaining() > 0 {
			time.Sleep(700 * time.Millisecond)
			var in *instance
			var delay time.Duration
			rnd(func(r *rand.Rand) {
				in = ins[r.IntN(len(ins))]
				delay = time.Duration(r.IntN(30)) * time.Millisecond
			})
			// Wait until it is busy, so the kill lands inside an invocation.
			for i := 0; i < 200 && in.busy.TryLock(); i++ {
				in.busy.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
			time.Sleep(delay)
			in.kill()
			in.start()
			killed++
		}
		wg.Wait()
		return killed
	}
	killed := drain(kills)
	if stalled.Load() {
		t.Fatalf("no event acknowledged for %v (%d of %d left); stdout: %q; intake: %v", stallLimit, q.remaining(), len(q.msgs), out.other, violations(dd))
	}
	if left := q.remaining(); left > 0 {
		t.Fatalf("%d of %d events still not acknowledged after %v", left, len(q.msgs), runLimit)
	}
	for _, in := range ins {
		in.kill()
	}
	st.mu.Lock()
	var starts []int
	for _, in := range ins {
		starts = append(starts, in.starts)
	}
	t.Logf("corpus: %d events (%d direct EventBridge), %d occurrences", len(q.msgs), countDirect(q.msgs), len(want))
	t.Logf("invocations: %d (%d SQS batches, %d direct; %d batches handed to two instances at once); batch sizes %v",
		st.invocations, st.sqs, st.direct, st.doubled, st.batchSizes)
	t.Logf("failures: %d batch items listed, %d function errors, %d invocations lost to SIGKILL; the function reported %d failed and %d deferred records",
		st.itemFailures, st.functionErrs, st.transportErrors, out.failed, out.deferred)
	t.Logf("SIGKILLs: %d, starts per instance %v (every start after the first is a cold start)", killed, starts)
	if killed < 5 {
		t.Errorf("only %d SIGKILLs happened, want at least 5", killed)
	}
	if ar.twins && st.doubled == 0 || ar.direct && st.direct == 0 || st.itemFailures+st.functionErrs+st.transportErrors == 0 {
		t.Errorf("the run did not exercise doubled batches (%d), direct invocations (%d) and retried records (%d)",
			st.doubled, st.direct, st.itemFailures+st.functionErrs+st.transportErrors)
	}
	st.mu.Unlock()
	if len(out.other) > 0 {
		t.Logf("other stdout lines: %q", out.other)
	}

	// What the backends would hold, per series and minute.
	expect := map[cell]int64{}
	for o, minute := range want {
		expect[cell{o.flow, o.metric, minute}]++
	}
	if strings.Contains(ar.sinks, "emf") {
		got := map[cell]int64{}
		out.mu.Lock()
		for _, p := range out.points {
			got[cell{p.flow, p.metric, p.at.Truncate(time.Minute)}] += p.value
		}
		risk := out.atRisk
		out.mu.Unlock()
		compare(t, "CloudWatch (EMF)", expect, got, risk)
	}
	if !strings.Contains(ar.sinks, "datadog") {
		checkPaths(t, ar, q, closeQ, feeding.Store, drain, stalled.Load, want, out, nil, ins)
		return true
	}
	dd.Lock()
	paths, bad := fmt.Sprint(dd.PerEndpoint), dd.Violations
	ignored := ar.mode == "distribution" && dd.PerEndpoint[datadogtest.SeriesPath] > 0
	dd.Unlock()
	t.Logf("Datadog intake: requests per path %s", paths)
	if len(bad) > 0 {
		t.Errorf("Datadog intake refused requests: %q", bad)
	}
	if ignored {
		t.Logf("the binary sent counts although FLOWMETRICS_DATADOG_MODE=distribution: this build has no distribution mode; its Datadog totals are not checked")
		return false
	}
	namer := naming.New(naming.Config{})
	byKey := map[string][2]string{}
	for c := range expect {
		byKey[datadogtest.SeriesKey(datadog.MetricName(namer.Name(c.flow, c.metric)), datadog.Tags(namer, c.flow, c.metric))] = [2]string{c.flow, c.metric}
	}
	got := map[cell]int64{}
	for k, mins := range dd.PerMinute(ar.mode == "distribution") {
		if isPathSeries(k) {
			continue // checked with the paths
		}
		fm, ok := byKey[k]
		if !ok {
			t.Errorf("Datadog holds a series no occurrence belongs to: %s", k)
			continue
		}
		for m, v := range mins {
			got[cell{fm[0], fm[1], m}] += int64(v)
		}
	}
	compare(t, "Datadog ("+ar.mode+")", expect, got, atRisk(dd, risks(ins)))
	checkPaths(t, ar, q, closeQ, feeding.Store, drain, stalled.Load, want, out, dd, ins)
	return true
}

type cell struct {
	flow, metric string
	minute       time.Time
}

// compare checks a backend's totals per series and minute against the
// corpus: nothing lost, and no more duplicates than the window holds.
func compare(t *testing.T, backend string, expect, got map[cell]int64, window int64) {
	t.Helper()
	var cells []cell
	for c := range expect {
		cells = append(cells, c)
	}
	for c := range got {
		if _, ok := expect[c]; !ok {
			cells = append(cells, c)
		}
	}
	sort.Slice(cells, func(i, j int) bool {
		a, b := cells[i], cells[j]
		if a.flow+a.metric != b.flow+b.metric {
			return a.flow+a.metric < b.flow+b.metric
		}
		return a.minute.Before(b.minute)
	})
	var lost, dups, total int64
	for _, c := range cells {
		e, g := expect[c], got[c]
		total += e
		switch {
		case g < e:
			lost += e - g
			t.Errorf("%s: %s/%s %s: holds %d, want %d (%d lost)", backend, c.flow, c.metric, c.minute.Format("15:04"), g, e, e-g)
		case g > e:
			dups += g - e
			t.Logf("%s: %s/%s %s: holds %d, want %d (%d duplicates)", backend, c.flow, c.metric, c.minute.Format("15:04"), g, e, g-e)
		}
	}
	t.Logf("%s: %d occurrences in %d series-minutes: %d lost, %d duplicates; the duplicate window (sent by invocations killed or timed out before completing) held %d",
		backend, total, len(expect), lost, dups, window)
	if dups > window {
		t.Errorf("%s: %d duplicates, more than the %d inside the documented duplicate window", backend, dups, window)
	}
}

func countDirect(ms []*message) int {
	n := 0
	for _, m := range ms {
		if m.direct {
			n++
		}
	}
	return n
}
