package lambdafn_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/lambdafn"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore"
	"github.com/flowmetrics/flowmetrics/internal/store/dynamostore/dynalitetest"
)

// The cost measurement replays a synthetic day-like corpus through the SQS
// handler against dynalite and counts DynamoDB requests and capacity units.
//
// Corpus: conversations start at random over an hour; each runs a flow of
// steps 20 to 60 s apart. A step sets participant data: first two ordinary
// attributes, then 3 to 6 metric attributes, one per step. Each step emits
// one AttributeUpdateEvent per participant (2 or 3), each carrying every
// attribute set so far, as Genesys does. 2% of events are delivered twice
// (EventBridge and SQS are at-least-once). Events are queued in time order,
// taken in SQS batches of 10 and handed to one of 4 warm instances at random,
// each with its own known-key cache (15 s TTL, on the simulated clock).
const (
	costConversations = 300
	costInstances     = 4
	costBatch         = 10 // SQS batches; the template allows up to 100
)

type costEvent struct {
	at   time.Time
	conv string
	body string
	keys []string // metric attribute names the event carries
}

func costCorpus(seed uint64) ([]costEvent, int) {
	rng := rand.New(rand.NewPCG(seed, seed))
	start := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	var evs []costEvent
	distinct := 0
	for c := 0; c < costConversations; c++ {
		conv := fmt.Sprintf("%08x-0000-4000-8000-%012d", rng.Uint32(), c)
		at := start.Add(time.Duration(rng.IntN(3600)) * time.Second)
		participants := 2 + rng.IntN(2)
		metrics := 3 + rng.IntN(4)
		distinct += metrics
		attrs := map[string]string{}
		var keys []string
		for step := 0; step < 2+metrics; step++ {
			at = at.Add(time.Duration(20+rng.IntN(41)) * time.Second)
			if step < 2 {
				attrs["Ordinary"+strconv.Itoa(step)] = "value"
			} else {
				name := fmt.Sprintf("CustomerRoutingMetric_Step%d(%s)", step, at.Format("2006-01-02T15:04:05.000Z"))
				attrs[name] = "1"
				keys = append(keys, name)
			}
			for p := 0; p < participants; p++ {
				snap := map[string]string{}
				for k, v := range attrs {
					snap[k] = v
				}
				ev := costEvent{at: at.Add(time.Duration(p*150) * time.Millisecond), conv: conv,
					body: envelope(conv, snap), keys: append([]string(nil), keys...)}
				evs = append(evs, ev)
				if rng.IntN(100) < 2 {
					dup := ev
					dup.at = dup.at.Add(time.Duration(rng.IntN(5000)) * time.Millisecond)
					evs = append(evs, dup)
				}
			}
		}
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at.Before(evs[j].at) })
	return evs, distinct
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time    { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time)   { c.mu.Lock(); c.t = t; c.mu.Unlock() }
func (c *clock) After(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.t = laterOf(c.t, t) }
func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

type costResult struct {
	name                         string
	events, invocations          int
	getItem, updateItem, putItem int64
	readUnits, writeUnits        float64
	condFailures                 int64
	delivered                    int64
}

func (r costResult) per1000(v float64) float64 { return v * 1000 / float64(r.events) }

// replayThroughHandlers runs the corpus through costInstances handlers on
// one table and returns what the stores counted.
func replayThroughHandlers(t *testing.T, srv *dynalitetest.Server, evs []costEvent, readFirst bool, batchSize int) costResult {
	table := srv.CreateTable(t)
	clk := &clock{t: evs[0].at}
	sink := &recordingSink{}
	var handlers []*lambdafn.Handler
	var stores []*dynamostore.Store
	for i := 0; i < costInstances; i++ {
		st, err := dynamostore.Open(dynamostore.Config{Table: table, Owner: "instance" + strconv.Itoa(i), ReadFirst: readFirst},
			srv.Client, store.Options{Now: clk.Now}, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := lambdafn.Config{Pipeline: pipeline.Config{CacheTTL: lambdafn.DefaultCacheTTL, Now: clk.Now}}
		h, err := lambdafn.NewHandler(context.Background(), st, []flowmetrics.Sink{sink}, cfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close(context.Background()) })
		handlers = append(handlers, h)
		stores = append(stores, st)
	}
	rng := rand.New(rand.NewPCG(7, 7))
	res := costResult{events: len(evs)}
	for i := 0; i < len(evs); i += batchSize {
		batch := evs[i:min(i+batchSize, len(evs))]
		var bodies []string
		for _, e := range batch {
			bodies = append(bodies, e.body)
		}
		clk.After(batch[len(batch)-1].at)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		h := handlers[rng.IntN(costInstances)]
		if batchSize == 1 {
			// EventBridge rule targeting the function: one event each.
			if err := h.HandleEventBridge(ctx, []byte(bodies[0])); err != nil {
				t.Fatalf("event %d: %v", i, err)
			}
		} else if resp := h.HandleSQS(ctx, sqsEvent(bodies...)); len(resp.BatchItemFailures) > 0 {
			t.Fatalf("batch %d: %d failures", i/batchSize, len(resp.BatchItemFailures))
		}
		cancel()
		res.invocations++
	}
	for _, st := range stores {
		s := st.Stats()
		res.getItem += s.GetItem
		res.updateItem += s.UpdateItem
		res.readUnits += s.ReadUnits
		res.writeUnits += s.WriteUnits
		res.condFailures += s.ConditionalFailures
	}
	for _, n := range sink.total() {
		res.delivered += n
	}
	return res
}

// replayOriginal is the original tool's design: for every event, read the
// conversation's whole state and write it back.
func replayOriginal(t *testing.T, srv *dynalitetest.Server, evs []costEvent) costResult {
	table := srv.CreateTable(t)
	ctx := context.Background()
	res := costResult{name: "original: GetItem + PutItem per event", events: len(evs), invocations: len(evs)}
	for _, e := range evs {
		key := map[string]types.AttributeValue{"id": &types.AttributeValueMemberS{Value: e.conv}}
		got, err := srv.Client.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(table), Key: key,
			ReturnConsumedCapacity: types.ReturnConsumedCapacityTotal})
		if err != nil {
			t.Fatal(err)
		}
		res.getItem++
		res.readUnits += *got.ConsumedCapacity.CapacityUnits
		known := map[string]bool{}
		if ss, ok := got.Item["keys"].(*types.AttributeValueMemberSS); ok {
			for _, k := range ss.Value {
				known[k] = true
			}
		}
		for _, k := range e.keys {
			if !known[k] {
				known[k] = true
				res.delivered++
			}
		}
		item := map[string]types.AttributeValue{"id": key["id"], "ttl": &types.AttributeValueMemberN{Value: strconv.FormatInt(e.at.Add(store.DefaultRetention).Unix(), 10)}}
		if len(known) > 0 {
			var all []string
			for k := range known {
				all = append(all, k)
			}
			item["keys"] = &types.AttributeValueMemberSS{Value: all}
		}
		put, err := srv.Client.PutItem(ctx, &dynamodb.PutItemInput{TableName: aws.String(table), Item: item,
			ReturnConsumedCapacity: types.ReturnConsumedCapacityTotal})
		if err != nil {
			t.Fatal(err)
		}
		res.putItem++
		res.writeUnits += *put.ConsumedCapacity.CapacityUnits
	}
	return res
}

// TestCostPerThousandEvents measures and prints the counts behind
// deploy/aws/README.md's cost table. It also checks that every occurrence
// was delivered exactly once.
func TestCostPerThousandEvents(t *testing.T) {
	if testing.Short() {
		t.Skip("cost measurement: skipped in -short mode")
	}
	srv := dynalitetest.Start(t)
	evs, distinct := costCorpus(1)
	withMetric := 0
	for _, e := range evs {
		if len(e.keys) > 0 {
			withMetric++
		}
	}
	t.Logf("corpus: %d events, %d conversations, %d occurrences, %d events carry metric attributes",
		len(evs), costConversations, distinct, withMetric)
	results := []costResult{}
	for _, v := range []struct {
		readFirst bool
		batch     int
	}{{true, costBatch}, {false, costBatch}, {true, 100}, {true, 1}, {false, 1}} {
		r := replayThroughHandlers(t, srv, evs, v.readFirst, v.batch)
		via := fmt.Sprintf("SQS batches of %d", v.batch)
		if v.batch == 1 {
			via = "EventBridge target"
		}
		r.name = fmt.Sprintf("flowmetrics, %s, ReadFirst=%v", via, v.readFirst)
		results = append(results, r)
	}
	results = append(results, replayOriginal(t, srv, evs))
	for _, r := range results {
		if r.delivered != int64(distinct) {
			t.Errorf("%s: delivered %d occurrences, want %d", r.name, r.delivered, distinct)
		}
		t.Logf("%-52s per 1000 events: %4.0f invocations, %5.0f GetItem, %5.0f UpdateItem, %5.0f PutItem, %6.1f read units, %6.1f write units (%d refused conditional writes)",
			r.name, r.per1000(float64(r.invocations)), r.per1000(float64(r.getItem)), r.per1000(float64(r.updateItem)),
			r.per1000(float64(r.putItem)), r.per1000(r.readUnits), r.per1000(r.writeUnits), r.condFailures)
	}
}
