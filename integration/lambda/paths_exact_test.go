package lambda_test

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/paths"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog/datadogtest"
	"github.com/flowmetrics/flowmetrics/internal/sink/emf"
)

// pathsConfig is the exactness test's paths section: a funnel over the
// corpus's steps.
const pathsConfig = `{"funnels": [{"name": "routing", "steps": ["CustomerRouting/Step1", "CustomerRouting/Step2", "CustomerRouting/Step3"]}]}`

// checkPaths is the exactness test's second phase, once every attribute
// event is acknowledged: the customer.end events of two conversations in
// three (5 % sent twice) go through the queue, the close messages the
// function sends come back through it after their delay, a sweep message
// every 1.5 s for long enough that every idle path is due and every close
// an instance died holding is past its lease, and two more SIGKILLs. Then
// each backend must hold, per series and minute, what the deriver makes of
// each conversation's whole path exactly once: exits, step timings (in
// EMF the number of durations, in Datadog their sum in whole seconds) and
// the funnel; duplicates only inside the window of killed or timed-out
// invocations.
func checkPaths(t *testing.T, ar arrangement, q *queue, closeQ *fakeSQS, setFeeding func(bool), drain func(int) int,
	stalled func() bool, want map[occurrence]time.Time, out *output, dd *datadogtest.Intake, ins []*instance) {
	t.Helper()
	for _, in := range ins {
		in.start() // phase one ended by stopping them: a cold start each
	}
	var seq atomic.Int64
	closeQ.mu.Lock()
	closeQ.onSend = func(body string, delay int32) {
		q.push(&message{id: fmt.Sprint("close-", seq.Add(1)), body: body, visibleAt: time.Now().Add(time.Duration(delay) * time.Second)})
	}
	closeQ.mu.Unlock()
	keys := map[string][]string{}
	for o := range want {
		keys[o.conv] = append(keys[o.conv], o.key)
	}
	var convs []string
	for c := range keys {
		convs = append(convs, c)
	}
	sort.Strings(convs)
	ended := map[string]bool{}
	for i, c := range convs {
		if i%3 == 0 {
			continue // no customer.end: closes at its idle timeout
		}
		ended[c] = true
		q.push(&message{id: "end-" + c, body: endEnvelope(c)})
		if i%20 == 1 {
			q.push(&message{id: "end-again-" + c, body: endEnvelope(c)})
		}
	}
	setFeeding(true)
	go func() {
		defer setFeeding(false)
		// Long enough after the last claim or close for the idle timeout
		// (4 s, rounded up to 1 s), and for a close an instance died
		// holding to pass its lease and be swept again. Counted from the
		// last message acknowledged, not from the start: on a busy machine
		// the end events and close messages can take longer than that
		// window to go through, and a path no sweep finds due stays open.
		// Bounded: at most sweepFor in all.
		const window = 4*time.Second + time.Second + 2*lease + 4*time.Second
		const sweepFor = 3 * time.Minute
		start := time.Now()
		for i := 0; ; i++ {
			left, last := q.work()
			if now := time.Now(); now.Sub(start) > sweepFor || left == 0 && now.After(start.Add(window)) && now.After(last.Add(window)) {
				break
			}
			q.push(&message{id: fmt.Sprint("sweep-", i), body: `{"flowmetrics":"sweep"}`})
			time.Sleep(1500 * time.Millisecond)
		}
	}()
	killed := drain(2)
	if stalled() {
		t.Fatalf("paths: no message acknowledged for %v", stallLimit)
	}
	if left := q.remaining(); left > 0 {
		t.Fatalf("paths: %d messages still not acknowledged", left)
	}
	for _, in := range ins {
		in.kill()
	}
	closeQ.mu.Lock()
	sent := len(closeQ.bodies)
	closeQ.mu.Unlock()
	t.Logf("paths: %d conversations, %d with a customer.end; %d close messages; %d more SIGKILLs", len(convs), len(ended), sent, killed)
	if ar.instances > 1 && sent < len(ended) {
		t.Errorf("paths: %d close messages for %d customer.end events", sent, len(ended))
	}

	var cfg paths.Config
	if err := json.Unmarshal([]byte(pathsConfig), &cfg); err != nil {
		t.Fatal(err)
	}
	d := paths.New(cfg, nil)
	emfWant, ddWant := map[cell]int64{}, map[cell]int64{}
	ddKeys := map[string]bool{}
	kinds := map[flowmetrics.PathKind]int{}
	for _, c := range convs {
		for _, p := range d.Derive(flowmetrics.ClosedPath{ConversationID: c, Keys: keys[c], Ended: ended[c]}) {
			kinds[p.Kind]++
			minute := p.Time.UTC().Truncate(time.Minute)
			name, tags := datadog.PathSeries(p)
			var labels, ddTags []string
			for _, tg := range tags {
				labels = append(labels, tg.Key+"="+tg.Value)
				if v := datadog.Tag(tg.Key, tg.Value); v != "" {
					ddTags = append(ddTags, v)
				}
			}
			emfWant[cell{emfName(p.Kind), strings.Join(labels, ","), minute}]++
			k := datadogtest.SeriesKey(datadog.MetricName(name), ddTags)
			ddKeys[k] = true
			v := int64(1)
			if p.Kind.IsDuration() {
				v = int64(math.Round(p.Seconds)) // whole seconds in this corpus
			}
			ddWant[cell{k, "", minute}] += v
		}
	}
	t.Logf("paths: derived %d exits, %d step timings, %d funnel steps", kinds[flowmetrics.PathExit], kinds[flowmetrics.PathStep], kinds[flowmetrics.PathFunnel])
	if kinds[flowmetrics.PathExit] != len(convs) || kinds[flowmetrics.PathStep] == 0 || kinds[flowmetrics.PathFunnel] == 0 {
		t.Fatalf("paths: the corpus does not exercise exits, steps and the funnel: %v", kinds)
	}
	if strings.Contains(ar.sinks, "emf") {
		got := map[cell]int64{}
		out.mu.Lock()
		for _, p := range out.paths {
			got[cell{p.name, p.dims, p.at.Truncate(time.Minute)}] += p.value
		}
		risk := out.pathRisk
		out.mu.Unlock()
		compare(t, "paths in CloudWatch (EMF)", emfWant, got, risk)
	}
	if dd == nil {
		return
	}
	got := map[cell]int64{}
	for _, dist := range []bool{false, true} {
		for k, mins := range dd.PerMinute(dist) {
			if !isPathSeries(k) {
				continue
			}
			if !ddKeys[k] {
				t.Errorf("paths: Datadog holds a series no derived point belongs to: %s", k)
				continue
			}
			for m, v := range mins {
				got[cell{k, "", m}] += int64(math.Round(v))
			}
		}
	}
	compare(t, "paths in Datadog ("+ar.mode+")", ddWant, got, atRisk(dd, risks(ins)))
}

func emfName(k flowmetrics.PathKind) string {
	switch k {
	case flowmetrics.PathExit:
		return emf.ExitName
	case flowmetrics.PathStep:
		return emf.StepName
	case flowmetrics.PathTiming:
		return emf.TimingName
	case flowmetrics.PathFunnel:
		return emf.FunnelName
	}
	return emf.ExperimentName
}

func isPathSeries(key string) bool {
	for _, m := range []string{datadog.ExitMetric, datadog.StepMetric, datadog.TimingMetric, datadog.FunnelMetric, datadog.ExperimentMetric} {
		if strings.HasPrefix(key, datadog.MetricName(m)+"|") {
			return true
		}
	}
	return false
}
