package main

import (
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
)

// udpLines listens on a UDP port of 127.0.0.1 and returns its address and
// a function that waits until nothing has come for a moment and returns
// every line received.
func udpLines(t *testing.T) (string, func() []string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	// The DogStatsD client writes a batch's datagrams as fast as it can;
	// a large receive buffer (up to the kernel's rmem_max) keeps a burst
	// from overflowing it while the reader catches up.
	pc.(*net.UDPConn).SetReadBuffer(8 << 20)
	var mu sync.Mutex
	var lines []string
	go func() {
		buf := make([]byte, 70000)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			lines = append(lines, strings.Split(strings.TrimRight(string(buf[:n]), "\n"), "\n")...)
			mu.Unlock()
		}
	}()
	return pc.LocalAddr().String(), func() []string {
		for last := -1; ; time.Sleep(200 * time.Millisecond) {
			mu.Lock()
			n := len(lines)
			mu.Unlock()
			if n == last {
				break
			}
			last = n
		}
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), lines...)
	}
}

// statsdLine is name:value|type, with the |#tags of the DogStatsD format
// read into a map.
type statsdLine struct {
	name  string
	value float64
	typ   string
	tags  map[string]string
	ts    int64
}

func parseStatsdLine(t *testing.T, l string) statsdLine {
	t.Helper()
	name, rest, _ := strings.Cut(l, ":")
	v, rest, _ := strings.Cut(rest, "|")
	value, err := strconv.ParseFloat(v, 64)
	if err != nil {
		t.Fatalf("bad line %q: %v", l, err)
	}
	out := statsdLine{name: name, value: value, tags: map[string]string{}}
	for i, f := range strings.Split(rest, "|") {
		switch {
		case i == 0:
			out.typ = f
		case strings.HasPrefix(f, "#"):
			for _, tag := range strings.Split(f[1:], ",") {
				k, v, _ := strings.Cut(tag, ":")
				out.tags[k] = v
			}
		case strings.HasPrefix(f, "T"):
			out.ts, _ = strconv.ParseInt(f[1:], 10, 64)
		}
	}
	return out
}

// unsegment turns a step rendered as one name segment or tag value
// ("IVR_Start", "ivr_start") back into the corpus's "Flow/Metric" form
// (the corpus's names hold no "_").
func unsegment(s string) string { return strings.Replace(s, "_", "/", 1) }

// TestPathsReplayStatsD: replay -config with the statsd sink (default tag
// style) backfills paths. The lines are added up as a StatsD daemon does
// (counters summed, every timer value kept) and compared per series with
// the corpus's truth.
func TestPathsReplayStatsD(t *testing.T) {
	addr, lines := udpLines(t)
	truth, occurrences := replayPaths(t, "sinks:\n  statsd:\n    addr: "+addr+"\n")
	got := newTruth()
	var counts int64
	for _, l := range lines() {
		p := parseStatsdLine(t, l)
		seg := strings.Split(p.name, ".")
		if len(seg) < 4 || seg[0] != "genesys" || seg[1] != "flow" {
			t.Fatalf("unexpected line %q", l)
		}
		n := int(p.value)
		switch kind := seg[2]; {
		case kind == "metric" && p.typ == "c":
			counts += int64(n)
		case kind == "exit" && p.typ == "c" && len(seg) == 5:
			got.exits[seg[3]+"/"+seg[4]] += n
		case kind == "step" && p.typ == "ms" && len(seg) == 5:
			got.steps[seg[3]+"/"+seg[4]] = append(got.steps[seg[3]+"/"+seg[4]], p.value/1000)
		case kind == "timing" && p.typ == "ms" && len(seg) == 4:
			got.timings[seg[3]] = append(got.timings[seg[3]], p.value/1000)
		case kind == "funnel" && p.typ == "c" && len(seg) == 5:
			got.funnels[seg[3]+"/"+unsegment(seg[4])] += n
		case kind == "experiment" && p.typ == "c" && len(seg) == 6:
			got.exps[seg[3]+"/"+seg[4]+"/"+unsegment(seg[5])] += n
		default:
			t.Errorf("unexpected line %q", l)
		}
	}
	got.sort()
	compareTruth(t, got, truth)
	if counts != occurrences {
		t.Errorf("occurrences: got %d, want %d", counts, occurrences)
	}
}

// TestPathsReplayDogStatsD: replay -config with the dogstatsd sink
// backfills paths, in count mode (rebuilt by the Agent's rule: the last
// timestamped count per series and second, every distribution value) and
// in distribution mode (every value: the Agent's and the Lambda
// Extension's rule). Datadog lower-cases tags, so the truth is compared
// lower-cased.
func TestPathsReplayDogStatsD(t *testing.T) {
	for _, mode := range []string{"count", "distribution"} {
		t.Run(mode, func(t *testing.T) {
			addr, lines := udpLines(t)
			truth, occurrences := replayPaths(t, "sinks:\n  dogstatsd:\n    addr: "+addr+"\n    mode: "+mode+"\n")
			got := newTruth()
			var counts int64
			type second struct {
				series string
				ts     int64
			}
			last := map[second]statsdLine{}
			for _, l := range lines() {
				p := parseStatsdLine(t, l)
				if p.typ == "c" {
					if p.ts == 0 {
						t.Fatalf("line %q: a count without |T", l)
					}
					_, tags, _ := strings.Cut(l, "|#")
					last[second{p.name + "|" + tags, p.ts}] = p // the Agent: the last value per second
					continue
				}
				if p.typ != "d" {
					t.Fatalf("unexpected line %q", l)
				}
				addPathValue(t, got, &counts, p)
			}
			for _, p := range last {
				addPathValue(t, got, &counts, p)
			}
			got.sort()
			compareTruth(t, got, lowerTruth(truth))
			if counts != occurrences {
				t.Errorf("occurrences: got %d, want %d", counts, occurrences)
			}
		})
	}
}

// addPathValue adds one count (its value) or distribution value to got.
func addPathValue(t *testing.T, got *pathTruth, counts *int64, p statsdLine) {
	t.Helper()
	n := int(p.value)
	tg := p.tags
	switch p.name {
	case "genesys.flow.metric":
		*counts += int64(n)
	case "genesys.flow.exit":
		got.exits[tg["flow"]+"/"+tg["metric"]] += n
	case "genesys.flow.step":
		got.steps[tg["flow"]+"/"+tg["metric"]] = append(got.steps[tg["flow"]+"/"+tg["metric"]], p.value)
	case "genesys.flow.timing":
		got.timings[tg["timing"]] = append(got.timings[tg["timing"]], p.value)
	case "genesys.flow.funnel":
		got.funnels[tg["funnel"]+"/"+tg["step"]] += n
	case "genesys.flow.experiment":
		got.exps[tg["experiment"]+"/"+tg["variant"]+"/"+tg["step"]] += n
	default:
		t.Errorf("unexpected metric %q", p.name)
	}
}

// lowerTruth is the truth with its series keys lower-cased, as Datadog
// tags are.
func lowerTruth(tr *pathTruth) *pathTruth {
	out := newTruth()
	for k, v := range tr.exits {
		out.exits[strings.ToLower(k)] += v
	}
	for k, v := range tr.funnels {
		out.funnels[strings.ToLower(k)] += v
	}
	for k, v := range tr.exps {
		out.exps[strings.ToLower(k)] += v
	}
	for k, v := range tr.steps {
		out.steps[strings.ToLower(k)] = append(out.steps[strings.ToLower(k)], v...)
	}
	for k, v := range tr.timings {
		out.timings[strings.ToLower(k)] = append(out.timings[strings.ToLower(k)], v...)
	}
	out.sort()
	return out
}

// TestPathsReplayDatadog: replay -config with the datadog API sink
// backfills paths, in both modes, into a loopback Datadog intake that
// keeps what Datadog keeps (the last count per series and second, every
// distribution value). The archive is older than Datadog's window, so
// every point is clamped to now−59 min by the default late policy; each
// series still adds up to the corpus's truth.
func TestPathsReplayDatadog(t *testing.T) {
	const key = "0123456789abcdef0123456789abcdef"
	for _, mode := range []string{"count", "distribution"} {
		t.Run(mode, func(t *testing.T) {
			t.Setenv("FLOWMETRICS_TEST_DD_KEY", key)
			intake := datadogtest.New(t, key, time.Now)
			truth, occurrences := replayPaths(t, "sinks:\n  datadog:\n    url: "+intake.URL+"\n    api_key_env: FLOWMETRICS_TEST_DD_KEY\n    mode: "+mode+"\n")
			got := newTruth()
			var counts int64
			intake.Do(func() {
				for _, v := range intake.Violations {
					t.Errorf("contract violation: %s", v)
				}
				if intake.OutOfWindow > 0 {
					t.Errorf("%d points outside Datadog's window", intake.OutOfWindow)
				}
				line := func(p datadogtest.Point, v float64) statsdLine {
					l := statsdLine{name: p.Metric, value: v, tags: map[string]string{}}
					for _, tag := range strings.Split(p.Tags, ",") {
						k, v, _ := strings.Cut(tag, ":")
						l.tags[k] = v
					}
					return l
				}
				for p, v := range intake.Store {
					addPathValue(t, got, &counts, line(p, v))
				}
				for p, vs := range intake.Dist {
					for _, v := range vs {
						addPathValue(t, got, &counts, line(p, v))
					}
				}
			})
			got.sort()
			compareTruth(t, got, lowerTruth(truth))
			if counts != occurrences {
				t.Errorf("occurrences: got %d, want %d", counts, occurrences)
			}
		})
	}
}
