package dogstatsd

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
)

// A line as a DogStatsD server reads it: name:value|type|#tags|Tts.
type dsdLine struct {
	series string // name and tags
	value  float64
	typ    string
	ts     int64 // 0: none
}

func parseLine(t *testing.T, s string) dsdLine {
	t.Helper()
	nameValue, rest, _ := strings.Cut(s, "|")
	name, value, _ := strings.Cut(nameValue, ":")
	v, err := strconv.ParseFloat(value, 64)
	if err != nil {
		t.Fatalf("line %q: %v", s, err)
	}
	l := dsdLine{series: name, value: v}
	for i, f := range strings.Split(rest, "|") {
		switch {
		case i == 0:
			l.typ = f
		case strings.HasPrefix(f, "#"):
			l.series += "|" + f
		case strings.HasPrefix(f, "T"):
			l.ts, _ = strconv.ParseInt(f[1:], 10, 64)
		}
	}
	return l
}

// datadogKey is what Datadog keeps one value of: a series and a second.
type datadogKey struct {
	series string
	ts     int64
}

// agentStores is what Datadog holds after the Agent forwarded the sends:
// the Agent's no-aggregation pipeline turns each timestamped count into a
// point of its own at its time (datadog-agent,
// pkg/aggregator/no_aggregation_stream_worker.go), and Datadog keeps the
// last value per series and second.
func agentStores(t *testing.T, sends [][]string) map[datadogKey]float64 {
	stored := map[datadogKey]float64{}
	for _, lines := range sends {
		for _, s := range lines {
			l := parseLine(t, s)
			if l.typ != "c" || l.ts == 0 {
				t.Fatalf("line %q: want a timestamped count", s)
			}
			stored[datadogKey{l.series, l.ts}] = l.value
		}
	}
	return stored
}

// extensionStores is what Datadog holds after the Datadog Lambda Extension
// forwarded the sends, flushing after the sends listed in flushAfter (and
// at the end). Its aggregator (DataDog/serverless-components, crate
// dogstatsd, aggregator/core.rs and metric.rs) keys a point by name, tags
// and its timestamp rounded down to 10 s (the arrival time when it has
// none), adds up counts and merges distributions under one key until the
// flush, which ships one value per key. Datadog keeps the last count per
// series and second, and adds distributions up. A distribution's values
// are counted here (each is 1 per occurrence).
func extensionStores(t *testing.T, sends [][]string, flushAfter map[int]bool, arrival int64) (counts map[datadogKey]float64, distributions map[string]float64) {
	counts, distributions = map[datadogKey]float64{}, map[string]float64{}
	agg := map[datadogKey]float64{}
	flush := func() {
		for k, v := range agg {
			counts[k] = v
		}
		clear(agg)
	}
	for i, lines := range sends {
		for _, s := range lines {
			l := parseLine(t, s)
			switch l.typ {
			case "c":
				ts := l.ts
				if ts == 0 {
					ts = arrival
				}
				agg[datadogKey{l.series, ts / 10 * 10}] += l.value
			case "d":
				distributions[l.series]++
			default:
				t.Fatalf("line %q: unexpected type", s)
			}
		}
		if flushAfter[i] {
			flush()
		}
	}
	flush()
	return counts, distributions
}

// sendAll sends each batch through a real sink to a UDP listener and
// returns the lines of each send.
func sendAll(t *testing.T, mode datadog.Mode, batches [][]flowmetrics.Point) [][]string {
	t.Helper()
	l := listenUDP(t)
	s, _ := newSink(t, Config{Addr: l.addr, Mode: mode}, naming.Config{})
	var sends [][]string
	for _, b := range batches {
		if err := s.Send(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, p := range b {
			n += int(p.Count)
		}
		sends = append(sends, l.lines(t, n))
	}
	return sends
}

// TestEachReceiversRule: each receiver stores what its own rule makes of
// the sink's lines. Three sends add 2, 3 and 2 occurrences to one series
// and bucket, and 1 to the next bucket.
//   - The Agent, count mode: the totals (2, 5, 7) land on one second and
//     the last stays: exact.
//   - The Lambda Extension, distribution mode: exact whenever it flushes.
//   - The Lambda Extension, count mode: the totals are summed until a
//     flush: 2+5+7 = 14 for 7 when it flushes once. Config.Validate
//     refuses that combination, and the Lambda entry point uses it.
func TestEachReceiversRule(t *testing.T) {
	batches := [][]flowmetrics.Point{
		{pt("F", "M", 20*time.Second, 2)},
		{pt("F", "M", 20*time.Second, 3)},
		{pt("F", "M", 20*time.Second, 2), pt("F", "M", 10*time.Second, 1)},
	}
	const series = "genesys.flow.metric|#flow:f,metric:m"
	b1, b2 := t0.Add(-20*time.Second).Unix()/10*10, t0.Add(-10*time.Second).Unix()/10*10
	want := map[datadogKey]float64{{series, b1}: 7, {series, b2}: 1}
	flushes := map[string]map[int]bool{
		"once, at the end": {},
		"after each send":  {0: true, 1: true, 2: true},
		"after the first":  {0: true},
	}

	counts := sendAll(t, datadog.Count, batches)
	if got := agentStores(t, counts); !equalStores(got, want) {
		t.Errorf("Agent, count mode: Datadog holds %v, want %v", got, want)
	}
	overcount := false
	for name, f := range flushes {
		got, _ := extensionStores(t, counts, f, t0.Unix())
		if got[datadogKey{series, b1}] > 7 {
			overcount = true
			t.Logf("Lambda Extension, count mode, flushing %s: Datadog would hold %v for %v: refused", name, got, want)
		}
	}
	if !overcount {
		t.Errorf("Lambda Extension, count mode: no flush pattern overcounts, yet Validate refuses it")
	}
	if err := (Config{Mode: datadog.Count, Receiver: LambdaExtension}).Validate(); err == nil || !strings.Contains(err.Error(), "not exact through the Datadog Lambda Extension") {
		t.Errorf("count mode to the Lambda Extension: got %v, want it refused", err)
	}

	dists := sendAll(t, datadog.Distribution, batches)
	for name, f := range flushes {
		_, got := extensionStores(t, dists, f, t0.Unix())
		if got[series] != 8 || len(got) != 1 {
			t.Errorf("Lambda Extension, distribution mode, flushing %s: Datadog holds %v, want 8 values of %s", name, got, series)
		}
	}
	if err := (Config{Mode: datadog.Distribution, Receiver: LambdaExtension}).Validate(); err != nil {
		t.Errorf("distribution mode to the Lambda Extension: got %v, want it allowed", err)
	}
}

func equalStores(a, b map[datadogKey]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
