package genesys

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/flowmetrics/flowmetrics"
)

func TestExtract(t *testing.T) {
	tests := []struct {
		name  string
		names []string
		occs  []flowmetrics.Occurrence
		bad   []Malformed
	}{
		{name: "no attributes"},
		{name: "no metric attributes", names: []string{"AccountID", "Language"}},
		{
			name: "mixed, sorted by key and name",
			names: []string{
				"CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)",
				"AccountID",
				"CustomerRoutingMetric_Transferred(2023-03-05T08:19:31.002Z)",
				"Billing MainMetric_PaymentTaken(2023-03-05T09:20:12.880+01:00)",
				"CustomerRoutingMetric_Oops(not-a-time)",
				"Metric_NoFlow(2023-03-05T08:18:04Z)",
			},
			occs: []flowmetrics.Occurrence{
				{Key: "Billing MainMetric_PaymentTaken(2023-03-05T09:20:12.880+01:00)", Flow: "Billing Main", Metric: "PaymentTaken", Time: utc("2023-03-05T08:20:12.880Z")},
				{Key: "CustomerRoutingMetric_Transferred(2023-03-05T08:19:31.002Z)", Flow: "CustomerRouting", Metric: "Transferred", Time: utc("2023-03-05T08:19:31.002Z")},
				{Key: "CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)", Flow: "CustomerRouting", Metric: "Unknown", Time: utc("2023-03-05T08:18:04.568Z")},
			},
			bad: []Malformed{
				{Name: "CustomerRoutingMetric_Oops(not-a-time)", Flow: "CustomerRouting", Reason: errTimeLayout.Error(), Err: errTimeLayout},
				{Name: "Metric_NoFlow(2023-03-05T08:18:04Z)", Flow: "", Reason: errEmptyFlow.Error(), Err: errEmptyFlow},
			},
		},
		{
			// Events built by hand may list names in any order and repeat
			// them; the decoder's are sorted and unique.
			name: "any order, a repeated name once",
			names: []string{
				"BMetric_X(2023-03-05T08:18:04Z)", "AMetric_Y(bad)", "AMetric_X(2023-03-05T08:18:04Z)",
				"BMetric_X(2023-03-05T08:18:04Z)", "AMetric_Y(bad)",
			},
			occs: []flowmetrics.Occurrence{
				{Key: "AMetric_X(2023-03-05T08:18:04Z)", Flow: "A", Metric: "X", Time: utc("2023-03-05T08:18:04Z")},
				{Key: "BMetric_X(2023-03-05T08:18:04Z)", Flow: "B", Metric: "X", Time: utc("2023-03-05T08:18:04Z")},
			},
			bad: []Malformed{{Name: "AMetric_Y(bad)", Flow: "A", Reason: errTimeLayout.Error(), Err: errTimeLayout}},
		},
		{
			name:  "invalid UTF-8 flow is replaced",
			names: []string{"F\xffMetric_A(2023-03-05T08:18:04Z)"},
			bad:   []Malformed{{Name: "F\xffMetric_A(2023-03-05T08:18:04Z)", Flow: "F\uFFFD", Reason: errInvalidUTF8.Error(), Err: errInvalidUTF8}},
		},
		{
			// Different bytes are different names, each malformed; none is
			// counted under a name made valid by replacement.
			name: "invalid UTF-8 names stay apart and are never counted",
			names: []string{
				"FMetric_A\xff(2023-03-05T08:18:04Z)",
				"FMetric_A\xfe(2023-03-05T08:18:04Z)",
				"FMetric_A\xed\xa0\x80(2023-03-05T08:18:04Z)",
			},
			bad: []Malformed{
				{Name: "FMetric_A\xed\xa0\x80(2023-03-05T08:18:04Z)", Flow: "F", Reason: errInvalidUTF8.Error(), Err: errInvalidUTF8},
				{Name: "FMetric_A\xfe(2023-03-05T08:18:04Z)", Flow: "F", Reason: errInvalidUTF8.Error(), Err: errInvalidUTF8},
				{Name: "FMetric_A\xff(2023-03-05T08:18:04Z)", Flow: "F", Reason: errInvalidUTF8.Error(), Err: errInvalidUTF8},
			},
		},
		{
			name: "names too long are malformed, their flow cut for the label",
			names: []string{
				strings.Repeat("f", MaxFlowLen+1) + "Metric_A(2023-03-05T08:18:04Z)",
				"FMetric_" + strings.Repeat("m", MaxMetricLen+1) + "(2023-03-05T08:18:04Z)",
				strings.Repeat("f", MaxFlowLen) + "Metric_" + strings.Repeat("m", MaxMetricLen) + "(2023-03-05T08:18:04Z)",
			},
			occs: []flowmetrics.Occurrence{{
				Key:  strings.Repeat("f", MaxFlowLen) + "Metric_" + strings.Repeat("m", MaxMetricLen) + "(2023-03-05T08:18:04Z)",
				Flow: strings.Repeat("f", MaxFlowLen), Metric: strings.Repeat("m", MaxMetricLen), Time: utc("2023-03-05T08:18:04Z"),
			}},
			bad: []Malformed{
				{Name: "FMetric_" + strings.Repeat("m", MaxMetricLen+1) + "(2023-03-05T08:18:04Z)", Flow: "F", Reason: "metric name longer than 200 bytes", Err: errMetricTooLong},
				{Name: strings.Repeat("f", MaxFlowLen+1) + "Metric_A(2023-03-05T08:18:04Z)", Flow: strings.Repeat("f", MaxFlowLen), Reason: "flow name longer than 200 bytes", Err: errFlowTooLong},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names := slices.Clone(tt.names)
			occs, bad := Extract(&Event{ConversationID: "c", MetricNames: names})
			if !slices.Equal(names, tt.names) {
				t.Errorf("got the event's names changed to %q, want %q left as they were", names, tt.names)
			}
			if !reflect.DeepEqual(occs, tt.occs) {
				t.Errorf("got occurrences %+v, want %+v", occs, tt.occs)
			}
			if !reflect.DeepEqual(bad, tt.bad) {
				t.Errorf("got malformed %+v, want %+v", bad, tt.bad)
			}
		})
	}
}

// Occurrences outlive events in stores and caches; they must not keep the
// event's shared attribute string alive.
func TestExtractCopies(t *testing.T) {
	rec := DecodeValue([]byte(`{"topicName":"v2.detail.events.conversation.c.attributes","eventBody":{"conversationId":"c","attributes":{"FMetric_A(2023-03-05T08:18:04Z)":"","FMetric_B(x)":""}}}`))
	if rec.Outcome != Accepted {
		t.Fatalf("got %v %v, want accepted", rec.Outcome, rec.Err)
	}
	occs, bad := Extract(rec.Event)
	if len(occs) != 1 || len(bad) != 1 {
		t.Fatalf("got %d occurrences and %d malformed, want 1 and 1", len(occs), len(bad))
	}
	for _, name := range rec.Event.MetricNames {
		for _, s := range []string{occs[0].Key, occs[0].Flow, occs[0].Metric, bad[0].Name, bad[0].Flow} {
			if overlaps(s, name) {
				t.Errorf("got %q sharing memory with the event, want a copy", s)
			}
		}
	}
}

func overlaps(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	pa, pb := uintptr(unsafe.Pointer(unsafe.StringData(a))), uintptr(unsafe.Pointer(unsafe.StringData(b)))
	return pa < pb+uintptr(len(b)) && pb < pa+uintptr(len(a))
}

// TestNameMemoAsExtract: extracting batches' events through one NameMemo
// gives what Extract gives each event alone, whatever the events repeat of
// one another (well-formed, malformed and ordinary names, out of order and
// repeated, names of one pair at other times and in other forms), and what
// a caller does to the occurrences it got back (the pipeline folds some
// into the overflow series in place) does not reach the memo.
func TestNameMemoAsExtract(t *testing.T) {
	pool := []string{
		"FMetric_A(2026-11-20T09:31:48.900Z)", "FMetric_B(2026-11-20T09:31:49Z)",
		"Other FlowMetric_C(2026-11-20T09:31:50+01:00)", "FMetric_Bad(yesterday)",
		"FMetric_Open(2026-11-20T09:31:50Z", "FMetric_NoTime", "Flow\x01Metric_D(2026-11-20T09:31:50Z)",
		"FMetric_\xffE(2026-11-20T09:31:50Z)", "ÉtéMetric_F(2026-11-20T09:31:50Z)",
		// The names of those above, at other times, well-formed or not.
		"FMetric_A(2026-11-20T09:31:49.901Z)", "FMetric_A(2026-11-20t09:31:48.900z)", "FMetric_A(2026-02-30T09:31:48.900Z)",
		"FMetric_A(2026-11-20T09:31:48.900Z) ", "FMetric_A(2026-11-20T09:31:48.900Z)(x)", "FMetric_A((2026-11-20T09:31:48.900Z)",
		"FMetric_A(2026-11-20T09:31:48.900\xffZ)", "FMetric_A(2026-11-20T09:31:48.9+01:00)", "ÉtéMetric_F(2026-11-20T09:31:51.000Z)",
		"FMetric_B(2026-11-20T09:31:49Z", "FMetric_B()", "Other FlowMetric_C(2026-11-20T09:31:50.000Z)",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var kept [][2][]flowmetrics.Occurrence // what later events must not change
	// One memo, as the pipeline's are: the names of pairs it remembers
	// stay from batch to batch, large (Batch) or small.
	var memo NameMemo
	for round := range 4 {
		if round%2 == 0 {
			memo.Batch()
		}
		for i := range 500 {
			names := make([]string, rng.IntN(6))
			for j := range names {
				names[j] = pool[rng.IntN(len(pool))]
			}
			if rng.IntN(2) == 0 {
				slices.Sort(names)
				names = slices.Compact(names)
			}
			got, gotBad := memo.Extract(names)
			want, wantBad := ExtractNames(names)
			if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotBad, wantBad) {
				t.Fatalf("round %d event %d %q: got %v %v, want %v %v", round, i, names, got, gotBad, want, wantBad)
			}
			if round == 0 {
				for k := range got {
					got[k].Flow, got[k].Metric = "overflow", "overflow"
				}
				continue
			}
			// Later events' occurrences are cut from the same room:
			// appending to these must not reach them, nor they these.
			kept = append(kept, [2][]flowmetrics.Occurrence{got, want})
		}
		memo.Reset()
	}
	for _, k := range kept {
		_ = append(k[0], flowmetrics.Occurrence{Key: "appended"})
	}
	for i, k := range kept {
		if got, want := k[0], k[1]; len(got)+len(want) > 0 && !reflect.DeepEqual(got, want) {
			t.Fatalf("kept %d: got %v, want %v", i, got, want)
		}
	}
}

// TestNameMemoGivesUpOnFewRepeats: a batch whose events seldom repeat a
// name (memoTrial names, fewer than one in memoFew seen before) has the
// memo stop looking names up and remembering them, and the next memoRest
// large batches do not look them up at all; it still extracts what
// ExtractNames does, the names it remembered before included.
func TestNameMemoGivesUpOnFewRepeats(t *testing.T) {
	var memo NameMemo
	memo.Batch()
	name := func(i int) string { return fmt.Sprintf("FMetric_A%d(2026-11-20T09:31:48.900Z)", i) }
	check := func(names ...string) {
		t.Helper()
		got, gotBad := memo.Extract(names)
		want, wantBad := ExtractNames(names)
		if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotBad, wantBad) {
			t.Fatalf("%q: got %v %v, want %v %v", names, got, gotBad, want, wantBad)
		}
	}
	for i := 0; i < memoTrial-2; i += 2 {
		check(name(i), name(i+1))
	}
	if !memo.useful() || len(memo.seen) != memoTrial-2 {
		t.Fatalf("after %d distinct names: useful %v, %d remembered", memoTrial-2, memo.useful(), len(memo.seen))
	}
	check(name(memoTrial-2), name(memoTrial-1))
	if memo.useful() {
		t.Fatalf("after %d names, %d found: still looking names up", memo.looked, memo.found)
	}
	check(name(0), name(memoTrial+2), "FMetric_Bad(yesterday)")
	if len(memo.seen) != memoTrial {
		t.Errorf("%d names remembered after the memo gave up, want %d", len(memo.seen), memoTrial)
	}
	for i := range memoRest {
		memo.Reset()
		memo.Batch()
		check(name(1), name(1))
		check(name(1))
		if memo.useful() || len(memo.seen) != 0 {
			t.Fatalf("large batch %d after the one that gave up: useful %v, %d remembered, want neither", i+1, memo.useful(), len(memo.seen))
		}
	}
	memo.Reset()
	memo.Batch()
	check(name(1), name(1))
	check(name(1))
	if !memo.useful() || memo.found != 1 {
		t.Errorf("%d large batches after the one that gave up: useful %v, %d found, want the memo looking again", memoRest+1, memo.useful(), memo.found)
	}
}

// TestNameMemoManyPairs: names of more pairs than the memo's recent places
// (so pairs share a place and take it from one another), and more than
// it remembers at once (so it forgets them and starts again), extracted
// in large and small batches, give what ExtractNames gives; and the keys
// share no memory with the names given nor with one another, and stay as
// they were while later events are extracted.
func TestNameMemoManyPairs(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	var memo NameMemo
	type kept struct {
		occs []flowmetrics.Occurrence
		keys []string // the keys' text, copied when extracted
	}
	var all []kept
	for batch := range 6 {
		large := batch%3 != 2
		if large {
			memo.Batch()
		}
		pairs := 60
		if batch >= 3 {
			pairs = 6000 // past memoPairBytes
		}
		for i := range 400 {
			names := make([]string, 1+rng.IntN(5))
			for j := range names {
				names[j] = fmt.Sprintf("Flow %dMetric_M%d(2026-11-20T09:%02d:%02d.%03dZ)", rng.IntN(pairs), rng.IntN(3), rng.IntN(60), rng.IntN(60), rng.IntN(1000))
			}
			slices.Sort(names)
			names = slices.Compact(names)
			got, gotBad := memo.Extract(names)
			want, wantBad := ExtractNames(names)
			if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotBad, wantBad) {
				t.Fatalf("batch %d event %d %q: got %v %v, want %v %v", batch, i, names, got, gotBad, want, wantBad)
			}
			var keys []string
			for k, o := range got {
				for _, n := range names {
					if overlaps(o.Key, n) {
						t.Fatalf("batch %d event %d: key %q shares memory with the name %q given", batch, i, o.Key, n)
					}
				}
				for _, p := range got[:k] {
					if overlaps(o.Key, p.Key) {
						t.Fatalf("batch %d event %d: keys %q and %q share memory", batch, i, o.Key, p.Key)
					}
				}
				keys = append(keys, strings.Clone(o.Key))
			}
			all = append(all, kept{got, keys})
		}
		memo.Reset()
	}
	for i, k := range all {
		for j, o := range k.occs {
			if o.Key != k.keys[j] {
				t.Fatalf("event %d: key %d became %q, was %q", i, j, o.Key, k.keys[j])
			}
		}
	}
}

// TestLastOpen: lastOpen finds the last "(" as strings.LastIndexByte does,
// where the usual times' "(" would be or elsewhere, with others after it
// or none.
func TestLastOpen(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	names := []string{"", "(", "()", "FMetric_A(2026-11-20T09:31:48.900Z)", "FMetric_A(2026-11-20T09:31:48Z)",
		"FMetric_A(2026-11-20T09:31:48(900Z)", "FMetric_A(2026-11-20T(9:31:48Z)", "(2026-11-20T09:31:48Z)", "(2026-11-20T09:31:48.900Z)"}
	for range 20000 {
		b := []byte(strings.Repeat("x", rng.IntN(40)))
		for range rng.IntN(3) {
			if len(b) > 0 {
				b[rng.IntN(len(b))] = '('
			}
		}
		for _, w := range []int{22, 26} {
			if len(b) >= w && rng.IntN(2) == 0 {
				b[len(b)-w] = '('
			}
		}
		names = append(names, string(b))
	}
	for _, n := range names {
		if got, want := lastOpen(n), strings.LastIndexByte(n, '('); got != want {
			t.Fatalf("lastOpen(%q): got %d, want %d", n, got, want)
		}
	}
}
