package lambda_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
)

// dynamoMeter is a reverse proxy in front of dynalite that counts the
// requests the function sends and the capacity DynamoDB reports for them,
// as AWS would bill them: a write refused by its condition costs one write
// unit, and DynamoDB does not report it.
type dynamoMeter struct {
	mu                     sync.Mutex
	gets, updates, refused int64
	readUnits, writeUnits  float64
	other                  map[string]int64
}

func (m *dynamoMeter) reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gets, m.updates, m.refused, m.readUnits, m.writeUnits = 0, 0, 0, 0, 0
	m.other = map[string]int64{}
}

func startMeter(t *testing.T, target string) (*dynamoMeter, string) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	m := &dynamoMeter{other: map[string]int64{}}
	proxy := httputil.NewSingleHostReverseProxy(u)
	proxy.ModifyResponse = func(resp *http.Response) error {
		op := strings.TrimPrefix(resp.Request.Header.Get("X-Amz-Target"), "DynamoDB_20120810.")
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		var out struct {
			Type             string `json:"__type"`
			ConsumedCapacity struct{ CapacityUnits float64 }
		}
		json.Unmarshal(body, &out)
		m.mu.Lock()
		defer m.mu.Unlock()
		switch op {
		case "GetItem":
			m.gets++
			m.readUnits += out.ConsumedCapacity.CapacityUnits
		case "UpdateItem":
			m.updates++
			if strings.Contains(out.Type, "ConditionalCheckFailed") {
				m.refused++
				m.writeUnits++
			} else {
				m.writeUnits += out.ConsumedCapacity.CapacityUnits
			}
		default:
			m.other[op]++
		}
		return nil
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	return m, srv.URL
}

type timedEvent struct {
	at   time.Time
	body string
}

// costCorpus is the corpus of internal/lambdafn's cost measurement, in
// time order: flows of 2 ordinary then 3 to 6 metric steps 20–60 s apart,
// one event per participant (2 or 3) per step carrying every attribute so
// far, 2 % of events delivered twice. The conversations start at random
// over a spread chosen so that the events arrive at about rate per second.
func costCorpus(conversations int, rate float64) ([]timedEvent, int) {
	rng := rand.New(rand.NewPCG(1, 1))
	start := time.Now().Add(-50 * time.Minute).Truncate(time.Second)
	// A conversation has about 16 events over about 4 minutes.
	spread := max(1, int(float64(conversations)*16.3/rate)-240)
	type ev = timedEvent
	var evs []ev
	occs := 0
	for c := 0; c < conversations; c++ {
		conv := fmt.Sprintf("%08x-0000-4000-8000-%012d", rng.Uint32(), c)
		at := start.Add(time.Duration(rng.IntN(spread)) * time.Second)
		participants := 2 + rng.IntN(2)
		metrics := 3 + rng.IntN(4)
		occs += metrics
		attrs := map[string]string{}
		for step := 0; step < 2+metrics; step++ {
			at = at.Add(time.Duration(20+rng.IntN(41)) * time.Second)
			if step < 2 {
				attrs["Ordinary"+strconv.Itoa(step)] = "value"
			} else {
				attrs[genesys.AttributeName("CustomerRouting", fmt.Sprintf("Step%d", step), at)] = "1"
			}
			for p := 0; p < participants; p++ {
				e := ev{at.Add(time.Duration(p*150) * time.Millisecond), envelope(conv, fmt.Sprintf("p%d", p), attrs)}
				evs = append(evs, e)
				if rng.IntN(100) < 2 {
					e.at = e.at.Add(time.Duration(rng.IntN(5000)) * time.Millisecond)
					evs = append(evs, e)
				}
			}
		}
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at.Before(evs[j].at) })
	return evs, occs
}

// batches groups the events as an SQS event source with a batching window
// does: from the first waiting event, everything that arrives within the
// window, at most 100 (BatchSize). A zero window is the EventBridge
// target: one event per invocation.
func batches(evs []timedEvent, window time.Duration) [][]timedEvent {
	var out [][]timedEvent
	for i := 0; i < len(evs); {
		j := i + 1
		for window > 0 && j < len(evs) && j-i < 100 && evs[j].at.Sub(evs[i].at) < window {
			j++
		}
		out = append(out, evs[i:j])
		i = j
	}
	return out
}

var billed = regexp.MustCompile(`Billed Duration: (\d+) ms`)

// stdoutMeter counts what an instance writes to CloudWatch Logs.
type stdoutMeter struct {
	mu          sync.Mutex
	bytes       int64
	lines       int64
	billedMs    int64
	invocations int64
}

func (s *stdoutMeter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bytes += int64(len(p))
	s.lines += int64(bytes.Count(p, []byte("\n")))
	for _, m := range billed.FindAllSubmatch(p, -1) {
		ms, _ := strconv.ParseInt(string(m[1]), 10, 64)
		s.billedMs += ms
		s.invocations++
	}
	return len(p), nil
}

// Prices, us-east-1 (the README states their dates).
const (
	pricePartnerEvent = 1.00 / 1e6 // EventBridge, per event
	priceSQS          = 0.40 / 1e6 // standard queue, per request (64 KB chunk)
	priceLambdaReq    = 0.20 / 1e6
	priceLambdaGBs    = 0.0000133334 // arm64
	priceWRU          = 0.625 / 1e6
	priceRRU          = 0.125 / 1e6
	priceLogsGB       = 0.50
	memoryGB          = 128.0 / 1024
)

type shape struct {
	name          string
	direct        bool
	conversations int
	rate          float64       // events per second
	window        time.Duration // batching window
}

// TestCostOfTheRealBinary replays the cost corpus through the real
// bootstrap under the emulator, once per deployable shape, counting the
// DynamoDB requests and capacity it uses (through a proxy in front of
// dynalite), the invocations, and the bytes it and the platform write to
// CloudWatch Logs, and prints the cost per million events with the
// arithmetic (deploy/aws/README.md publishes it).
func TestCostOfTheRealBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("cost measurement: skipped in -short mode")
	}
	if os.Getenv("FLOWMETRICS_DYNALITE") == "" && os.Getenv(dynalitetest.EnvEndpoint) == "" {
		t.Skip("set FLOWMETRICS_DYNALITE to dynalite's cli.js (.ci/run installs it) to run the cost measurement")
	}
	bootstrap, rie := buildTools(t)
	srv := dynalitetest.Start(t)
	meter, endpoint := startMeter(t, srv.Endpoint)

	shapes := []shape{
		{name: "EventBridge → Lambda", direct: true, conversations: 100, rate: 2},
		{name: "EventBridge → SQS → Lambda, window 5 s (template default), 2 events/s", conversations: 100, rate: 2, window: 5 * time.Second},
		{name: "EventBridge → SQS → Lambda, window 5 s, 20 events/s", conversations: 400, rate: 20, window: 5 * time.Second},
		{name: "EventBridge → SQS → Lambda, window 1 s, 2 events/s", conversations: 100, rate: 2, window: time.Second},
	}
	for _, sh := range shapes {
		evs, occs := costCorpus(sh.conversations, sh.rate)
		rate := float64(len(evs)) / evs[len(evs)-1].at.Sub(evs[0].at).Seconds()
		bs := batches(evs, sh.window)
		table := srv.CreateTable(t)
		meter.reset()
		logs := &stdoutMeter{}
		in := &instance{name: "cost", bootstrap: bootstrap, rie: rie, t: t, out: &output{}, logTo: logs,
			env: append(os.Environ(),
				"AWS_LAMBDA_FUNCTION_TIMEOUT=20", "AWS_LAMBDA_FUNCTION_NAME=flowmetrics-cost", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128",
				"AWS_REGION=us-east-1", "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test", "AWS_EC2_METADATA_DISABLED=true",
				"FLOWMETRICS_TABLE="+table, "FLOWMETRICS_DYNAMODB_ENDPOINT="+endpoint, "FLOWMETRICS_SINK=emf",
				// The replay is faster than the corpus's hour, so the
				// known-key cache is off: every event reaches DynamoDB
				// (an upper bound on reads).
				"FLOWMETRICS_CACHE_CONVERSATIONS=-1",
			)}
		in.start()
		invocations := 0
		receives := 0.0 // at best: ceil(batch/10) per batch
		for i, part := range bs {
			var payload []byte
			if sh.direct {
				payload = []byte(part[0].body)
			} else {
				receives += math.Ceil(float64(len(part)) / 10)
				var ev events.SQSEvent
				for j, e := range part {
					ev.Records = append(ev.Records, events.SQSMessage{MessageId: fmt.Sprintf("m%d-%d", i, j), Body: e.body, EventSource: "aws:sqs"})
				}
				payload, _ = json.Marshal(ev)
			}
			out, err := in.invoke(t.Context(), payload)
			if err != nil {
				t.Fatalf("%s: invocation %d: %v", sh.name, invocations, err)
			}
			if !sh.direct && strings.Contains(string(out), "itemIdentifier") {
				t.Fatalf("%s: invocation %d failed records: %s", sh.name, invocations, out)
			}
			invocations++
		}
		in.kill()

		n := float64(len(evs))
		per := func(v float64) float64 { return v / n * 1e6 } // per million events
		meter.mu.Lock()
		gets, updates, refused, ru, wu := meter.gets, meter.updates, meter.refused, meter.readUnits, meter.writeUnits
		meter.mu.Unlock()
		logs.mu.Lock()
		logBytes, logLines, billedMs := logs.bytes, logs.lines, logs.billedMs
		logs.mu.Unlock()

		var lines []string
		add := func(format string, a ...any) { lines = append(lines, fmt.Sprintf(format, a...)) }
		total := 0.0
		item := func(name string, qty, price float64, unit string) {
			c := qty * price
			total += c
			add("  %-24s %12.0f %-9s × $%.7f = $%.3f", name, qty, unit, price, c)
		}
		item("EventBridge events", 1e6, pricePartnerEvent, "events")
		if !sh.direct {
			sends := 1e6
			// Lambda's poller receives at most 10 messages per call and
			// deletes at most 10 per DeleteMessageBatch; a batch of b
			// takes ceil(b/10) of each at best. At low rates a receive
			// returns fewer: the upper line counts one receive per event.
			calls := per(receives)
			item("SQS SendMessage", sends, priceSQS, "requests")
			item("SQS ReceiveMessage", calls, priceSQS, "requests")
			item("SQS DeleteMessageBatch", calls, priceSQS, "requests")
		}
		item("Lambda requests", per(float64(invocations)), priceLambdaReq, "requests")
		item("Lambda GB-seconds", per(float64(billedMs))/1000*memoryGB, priceLambdaGBs, "GB-s")
		item("DynamoDB write units", per(wu), priceWRU, "WRU")
		item("DynamoDB read units", per(ru), priceRRU, "RRU")
		item("CloudWatch Logs", per(float64(logBytes))/1e9, priceLogsGB, "GB")
		upper := ""
		if !sh.direct {
			upper = fmt.Sprintf("\n  %-24s %44s $%.2f", "if every receive got 1", "", total+(1e6-per(receives))*priceSQS)
		}
		t.Logf("%s: %d events at %.1f/s, %d occurrences (%.2f per event), %.1f events per invocation; per million events: %.0f invocations, %.0f GetItem, %.0f UpdateItem (%.0f refused), %.0f log lines (%.0f bytes per invocation), %.1f ms billed per invocation here\n%s\n  %-24s %44s $%.2f%s",
			sh.name, len(evs), rate, occs, float64(occs)/n, n/float64(invocations), per(float64(invocations)), per(float64(gets)), per(float64(updates)), per(float64(refused)),
			per(float64(logLines)), float64(logBytes)/float64(invocations), float64(billedMs)/float64(invocations),
			strings.Join(lines, "\n"), "total", "", total, upper)
		var counted int64
		for _, p := range in.out.points {
			counted += p.value
		}
		if counted != int64(occs) {
			t.Errorf("%s: EMF counted %d occurrences, want %d", sh.name, counted, occs)
		}
	}
}
