package genesys

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// examples holds the repository's sample events, which the README's
// commands use too.
const examples = "../../examples/"

const (
	convID    = "12341234-1234-1234-1234-123456789012"
	attrTopic = "v2.detail.events.conversation." + convID + ".attributes"
	endTopic  = "v2.detail.events.conversation." + convID + ".customer.end"
)

func readSample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examples, name))
	if err != nil {
		t.Fatalf("sample: %v", err)
	}
	return b
}

// compact returns a sample as one line, for building NDJSON.
func compact(t testing.TB, name string) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, readSample(t, name)); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestDecodeValue(t *testing.T) {
	bare := func(eventBody string) string {
		return `{"topicName":"` + attrTopic + `","eventBody":` + eventBody + `}`
	}
	tests := []struct {
		name    string
		in      string
		outcome Outcome
		err     error  // for Rejected
		errText string // a part of the message, when it matters
		topic   string
		event   *Event
	}{
		{
			name: "envelope", in: string(readSample(t, "attributes-eventbridge.json")),
			outcome: Accepted, topic: attrTopic,
			event: &Event{
				ConversationID: convID, ParticipantID: "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
				EventTime: time.UnixMilli(1678004285012).UTC(),
				// AccountID is not a metric name: it is left out.
				MetricNames: []string{"CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)"},
			},
		},
		{
			name: "bare detail", in: string(readSample(t, "attributes-bare-detail.json")),
			outcome: Accepted, topic: attrTopic,
			event: &Event{
				ConversationID: convID, ParticipantID: "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a",
				EventTime: time.UnixMilli(1678004412900).UTC(),
				// In byte order; malformed names are kept for Extract
				// to name.
				MetricNames: []string{
					"Billing MainMetric_PaymentTaken(2023-03-05T08:20:12.880Z)",
					"CustomerRoutingMetric_Oops(not-a-time)",
					"CustomerRoutingMetric_Transferred(2023-03-05T08:19:31.002Z)",
					"CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)",
				},
			},
		},
		{name: "customer.end", in: string(readSample(t, "customer-end-eventbridge.json")), outcome: Accepted, topic: endTopic,
			event: &Event{ConversationID: convID, EventTime: time.UnixMilli(1678004500127).UTC(), Ended: true}},
		{name: "customer.end, bare", in: `{"topicName":"` + endTopic + `","eventBody":{"conversationId":"c","attributes":{"a":"b"}}}`, outcome: Accepted, topic: endTopic,
			event: &Event{ConversationID: "c", Ended: true}},
		{name: "customer.end without conversationId", in: `{"topicName":"` + endTopic + `","eventBody":{}}`, outcome: Rejected, err: ErrNoConversationID},
		{name: "customer.end without eventBody object", in: `{"topicName":"` + endTopic + `","eventBody":[]}`, outcome: Rejected, err: ErrNoConversationID},
		{name: "other topic", in: `{"topicName":"v2.detail.events.conversation.c.customer.start","eventBody":{}}`, outcome: Skipped, topic: "v2.detail.events.conversation.c.customer.start"},
		{name: "other topic needs no valid body", in: `{"topicName":"v2.users.x.presence","eventBody":7}`, outcome: Skipped, topic: "v2.users.x.presence"},
		{name: "SQS event is not an EventBridge event", in: string(readSample(t, "sqs-batch.json")), outcome: Rejected, err: ErrNotEvent},

		{name: "empty attributes", in: bare(`{"conversationId":"c","attributes":{}}`), outcome: Accepted, topic: attrTopic,
			event: &Event{ConversationID: "c"}},
		{name: "no metric names", in: bare(`{"conversationId":"c","attributes":{"AccountID":"0-1","Metric":"x","Flow Metric ":"y"}}`), outcome: Accepted, topic: attrTopic,
			event: &Event{ConversationID: "c"}},
		{name: "a name with the marker but not the shape is kept for Extract to judge",
			in:      bare(`{"conversationId":"c","attributes":{"FMetric_A":"1","Metric_":""}}`),
			outcome: Accepted, topic: attrTopic, event: &Event{ConversationID: "c", MetricNames: []string{"FMetric_A", "Metric_"}}},
		{name: "detail-type stands in for a missing topicName",
			in:      `{"detail-type":"v2.detail.events.conversation.{id}.attributes","detail":{"eventBody":{"conversationId":"c","attributes":{}}}}`,
			outcome: Accepted, topic: "v2.detail.events.conversation.{id}.attributes",
			event: &Event{ConversationID: "c"}},
		{name: "topicName wins over detail-type",
			in:      `{"detail-type":"v2.detail.events.conversation.{id}.attributes","detail":{"topicName":"` + endTopic + `","eventBody":{"conversationId":"c"}}}`,
			outcome: Accepted, topic: endTopic, event: &Event{ConversationID: "c", Ended: true}},
		{name: "envelope wins over a bare detail's fields",
			in:      `{"topicName":"` + endTopic + `","eventBody":{},"detail":` + bare(`{"conversationId":"c","attributes":{}}`) + `}`,
			outcome: Accepted, topic: attrTopic, event: &Event{ConversationID: "c"}},
		{name: "unknown fields and deep values ignored",
			in:      `{"x":[{"y":[1,2.5e-3,true,false,null,"\u00e9"]}],"topicName":"` + attrTopic + `","eventBody":{"communications":[{"id":"1"}],"conversationId":"c","attributes":{"aMetric_b(":"b"},"z":{"detail":{}}}}`,
			outcome: Accepted, topic: attrTopic, event: &Event{ConversationID: "c", MetricNames: []string{"aMetric_b("}}},
		{name: "escapes in names and values",
			in:      `{"topic\u004eame":"` + attrTopic + `","eventBody":{"conversation\u0049d":"c\/1","attributes":{"Caf\u00e9 \ud83d\ude00Metric_A\"q\"(2023-03-05T08:18:04Z)":"tab\there","bad\ud800surrogateMetric_A(x)":"\\","Escaped\u004detric_B(x)":"","Escaped\u004detric-C(x)":""}}}`,
			outcome: Accepted, topic: attrTopic,
			event: &Event{ConversationID: "c/1", MetricNames: []string{
				"Café 😀Metric_A\"q\"(2023-03-05T08:18:04Z)",
				// An escape can spell the marker.
				"EscapedMetric_B(x)",
				// A lone surrogate has no UTF-8: the name keeps it as WTF-8,
				// invalid UTF-8 that no other name can share.
				"bad\xed\xa0\x80surrogateMetric_A(x)",
			}}},
		{name: "invalid UTF-8 is replaced in ids, kept in names",
			in:      bare("{\"conversationId\":\"c\xff\",\"participantId\":\"p\xc3\",\"attributes\":{\"F\xffMetric_A(2023-03-05T08:18:04Z)\":\"\xe2\x82\"}}"),
			outcome: Accepted, topic: attrTopic,
			event: &Event{ConversationID: "c\uFFFD", ParticipantID: "p\uFFFD", MetricNames: []string{
				"F\xffMetric_A(2023-03-05T08:18:04Z)",
			}}},
		{name: "duplicate members: the last wins, and a repeated attribute name is kept once",
			in:      bare(`{"conversationId":"a","conversationId":"c","attributes":{"xMetric_A(x)":"1"},"attributes":{"yMetric_B(x)":"1","aMetric_C(x)":"","yMetric_B(x)":"2","y\u004detric_B(x)":"3"}}`),
			outcome: Accepted, topic: attrTopic, event: &Event{ConversationID: "c", MetricNames: []string{"aMetric_C(x)", "yMetric_B(x)"}}},
		{name: "eventTime that is not an integer is zero",
			in:      bare(`{"conversationId":"c","eventTime":1.5e12,"attributes":{}}`),
			outcome: Accepted, topic: attrTopic, event: &Event{ConversationID: "c"}},
		{name: "eventTime as a string is zero",
			in:      bare(`{"conversationId":"c","eventTime":"1678004285012","attributes":{}}`),
			outcome: Accepted, topic: attrTopic, event: &Event{ConversationID: "c"}},
		{name: "participantId that is not a string is absent",
			in:      bare(`{"conversationId":"c","participantId":5,"attributes":{}}`),
			outcome: Accepted, topic: attrTopic, event: &Event{ConversationID: "c"}},
		{name: "whitespace around the value", in: " \r\n\t" + bare(`{"conversationId":"c","attributes":{}}`) + "\n\n",
			outcome: Accepted, topic: attrTopic, event: &Event{ConversationID: "c"}},

		{name: "empty input", in: "", outcome: Rejected, err: ErrNotJSON, errText: "unexpected end of input"},
		{name: "truncated", in: `{"topicName":"x"`, outcome: Rejected, err: ErrNotJSON, errText: "unexpected end of input at offset 16"},
		{name: "not JSON", in: "hello", outcome: Rejected, err: ErrNotJSON, errText: "invalid character 'h' looking for beginning of value at offset 0"},
		{name: "two values", in: "{} {}", outcome: Rejected, err: ErrNotJSON, errText: "after top-level value at offset 3"},
		{name: "trailing comma", in: `{"a":1,}`, outcome: Rejected, err: ErrNotJSON},
		{name: "single quotes", in: `{'a':1}`, outcome: Rejected, err: ErrNotJSON},
		{name: "raw newline in a string", in: "{\"a\":\"x\ny\"}", outcome: Rejected, err: ErrNotJSON, errText: `invalid character '\n' in string literal`},
		{name: "bad escape", in: `{"a":"\x"}`, outcome: Rejected, err: ErrNotJSON},
		{name: "leading zero", in: `{"a":01}`, outcome: Rejected, err: ErrNotJSON},
		{name: "byte order mark", in: "\xef\xbb\xbf{}", outcome: Rejected, err: ErrNotJSON},
		{name: "too deep", in: strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1), outcome: Rejected, err: ErrNotJSON, errText: "exceeded max depth"},
		{name: "array", in: "[]", outcome: Rejected, err: ErrNotEvent, errText: "got an array"},
		{name: "number", in: "12", outcome: Rejected, err: ErrNotEvent, errText: "got a number"},
		{name: "string", in: `"x"`, outcome: Rejected, err: ErrNotEvent},
		{name: "null", in: "null", outcome: Rejected, err: ErrNotEvent},
		{name: "empty object", in: "{}", outcome: Rejected, err: ErrNotEvent},
		{name: "topicName without eventBody", in: `{"topicName":"` + attrTopic + `"}`, outcome: Rejected, err: ErrNotEvent},
		{name: "eventBody without topicName", in: `{"eventBody":{}}`, outcome: Rejected, err: ErrNotEvent},
		{name: "field names are case-sensitive", in: `{"TopicName":"` + attrTopic + `","eventBody":{}}`, outcome: Rejected, err: ErrNotEvent},
		{name: "detail that is not an object", in: `{"detail":"x","topicName":"` + attrTopic + `","eventBody":{}}`, outcome: Rejected, err: ErrNotEvent, errText: "detail is a string"},
		{name: "envelope without any topic", in: `{"detail":{"eventBody":{}}}`, outcome: Rejected, err: ErrNotEvent, errText: "no topicName"},
		{name: "topicName that is not a string", in: `{"topicName":7,"eventBody":{}}`, outcome: Rejected, err: ErrNotEvent, errText: "topicName is a number"},
		{name: "attributes topic without eventBody", in: `{"detail":{"topicName":"` + attrTopic + `"}}`, outcome: Rejected, err: ErrNoConversationID, errText: "no eventBody"},
		{name: "eventBody that is not an object", in: `{"topicName":"` + attrTopic + `","eventBody":[]}`, outcome: Rejected, err: ErrNoConversationID},
		{name: "without conversationId", in: bare(`{"attributes":{}}`), outcome: Rejected, err: ErrNoConversationID, topic: attrTopic},
		{name: "conversationId that is not a string", in: bare(`{"conversationId":12,"attributes":{}}`), outcome: Rejected, err: ErrNoConversationID, errText: "conversationId is a number"},
		{name: "empty conversationId", in: bare(`{"conversationId":"","attributes":{}}`), outcome: Rejected, err: ErrNoConversationID, errText: "empty"},
		{name: "conversationId is case-sensitive", in: bare(`{"conversationID":"c","attributes":{}}`), outcome: Rejected, err: ErrNoConversationID},
		{name: "attributes missing", in: bare(`{"conversationId":"c"}`), outcome: Rejected, err: ErrNoAttributes},
		{name: "attributes null", in: bare(`{"conversationId":"c","attributes":null}`), outcome: Rejected, err: ErrNoAttributes},
		{name: "attributes array", in: bare(`{"conversationId":"c","attributes":[]}`), outcome: Rejected, err: ErrBadAttributes, errText: "got an array"},
		{name: "attributes string", in: bare(`{"conversationId":"c","attributes":"x"}`), outcome: Rejected, err: ErrBadAttributes},
		{name: "attribute value number", in: bare(`{"conversationId":"c","attributes":{"a":"1","n":1}}`), outcome: Rejected, err: ErrBadAttributes, errText: `"n" is a number`},
		{name: "attribute value null", in: bare(`{"conversationId":"c","attributes":{"n":null}}`), outcome: Rejected, err: ErrBadAttributes, errText: `"n" is null`},
		{name: "attribute value object", in: bare(`{"conversationId":"c","attributes":{"n":{"x":"y"}}}`), outcome: Rejected, err: ErrBadAttributes},
		{name: "not JSON beats not an event", in: `{"detail":{"topicName":"` + endTopic + `"}`, outcome: Rejected, err: ErrNotJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := DecodeValue([]byte(tt.in))
			if rec.Outcome != tt.outcome {
				t.Fatalf("got outcome %v (err %v), want %v", rec.Outcome, rec.Err, tt.outcome)
			}
			if rec.Index != 0 || rec.Line != 0 {
				t.Errorf("got index %d line %d, want 0 0", rec.Index, rec.Line)
			}
			switch tt.outcome {
			case Rejected:
				if !errors.Is(rec.Err, tt.err) {
					t.Errorf("got error %v, want %v", rec.Err, tt.err)
				}
				if !strings.Contains(fmt.Sprint(rec.Err), tt.errText) {
					t.Errorf("got error %q, want it to contain %q", rec.Err, tt.errText)
				}
				if rec.Event != nil {
					t.Errorf("got event %+v, want none", rec.Event)
				}
			default:
				if rec.Err != nil {
					t.Errorf("got error %v, want none", rec.Err)
				}
				if rec.Topic != tt.topic {
					t.Errorf("got topic %q, want %q", rec.Topic, tt.topic)
				}
				if !reflect.DeepEqual(rec.Event, tt.event) {
					t.Errorf("got event %+v, want %+v", rec.Event, tt.event)
				}
			}
		})
	}
}

// rec is the part of a Record the layout tests compare.
type rec struct {
	Index, Line int
	Outcome     Outcome
	Err         error // a sentinel, compared with errors.Is
}

func decodeAll(t *testing.T, r io.Reader) ([]Record, error) {
	t.Helper()
	return decodeWith(Decode, r)
}

func decodeWith(decode func(io.Reader, func(Record) error) error, r io.Reader) ([]Record, error) {
	var got []Record
	err := decode(r, func(r Record) error {
		got = append(got, r)
		return nil
	})
	return got, err
}

// parallelDecoders are DecodeParallel as replay uses it and with chunks
// small enough to cut the tests' inputs into many, every one of which must
// give what Decode gives.
var parallelDecoders = map[string]func(io.Reader, func(Record) error) error{
	"parallel": func(r io.Reader, fn func(Record) error) error { return DecodeParallel(r, 3, fn) },
	"parallel, small chunks": func(r io.Reader, fn func(Record) error) error {
		return decodeParallel(r, 3, 64, fn)
	},
}

func checkRecords(t *testing.T, got []Record, want []rec) {
	t.Helper()
	if len(got) != len(want) {
		for _, r := range got {
			t.Logf("record %d line %d: %v %v", r.Index, r.Line, r.Outcome, r.Err)
		}
		t.Fatalf("got %d records, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.Index != w.Index || g.Line != w.Line || g.Outcome != w.Outcome {
			t.Errorf("record %d: got index %d line %d %v (%v), want index %d line %d %v",
				i, g.Index, g.Line, g.Outcome, g.Err, w.Index, w.Line, w.Outcome)
		}
		if w.Outcome == Rejected && !errors.Is(g.Err, w.Err) {
			t.Errorf("record %d: got error %v, want %v", i, g.Err, w.Err)
		}
		if w.Outcome != Rejected && g.Err != nil {
			t.Errorf("record %d: got error %v, want none", i, g.Err)
		}
		if (g.Outcome == Accepted) != (g.Event != nil) {
			t.Errorf("record %d: got %v with event %v", i, g.Outcome, g.Event)
		}
	}
}

// Every shared sample decodes as its README says.
func TestDecodeSamples(t *testing.T) {
	tests := []struct {
		file string
		want []rec
	}{
		{"attributes-eventbridge.json", []rec{{0, 1, Accepted, nil}}},
		{"attributes-bare-detail.json", []rec{{0, 1, Accepted, nil}}},
		{"customer-end-eventbridge.json", []rec{{0, 1, Accepted, nil}}},
		{"conversation.ndjson", []rec{{0, 1, Accepted, nil}, {1, 2, Accepted, nil}, {2, 3, Accepted, nil}, {3, 4, Accepted, nil}, {4, 5, Accepted, nil}}},
		// Decode does not open SQS messages: that is the Lambda's job.
		{"sqs-batch.json", []rec{{0, 1, Rejected, ErrNotEvent}}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := decodeAll(t, bytes.NewReader(readSample(t, tt.file)))
			if err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			checkRecords(t, got, tt.want)
		})
	}
}

// Replaying the sample conversation gives what its README promises.
func TestDecodeConversation(t *testing.T) {
	got, err := decodeAll(t, bytes.NewReader(readSample(t, "conversation.ndjson")))
	if err != nil {
		t.Fatal(err)
	}
	type occ struct {
		conv, flow, metric string
		time               time.Time
	}
	occs := map[string]occ{}
	malformed := map[string]string{}
	skipped, ended := 0, 0
	for _, r := range got {
		switch r.Outcome {
		case Skipped:
			skipped++
		case Accepted:
			if r.Event.Ended {
				ended++
				if r.Event.ConversationID != convID || len(r.Event.MetricNames) != 0 {
					t.Errorf("record %d: got end event %+v, want conversation %s without attributes", r.Index, r.Event, convID)
				}
				continue
			}
			os, bad := Extract(r.Event)
			for _, o := range os {
				occs[r.Event.ConversationID+"\x00"+o.Key] = occ{r.Event.ConversationID, o.Flow, o.Metric, o.Time}
			}
			for _, m := range bad {
				malformed[m.Name] = m.Flow
			}
		case Rejected:
			t.Errorf("record %d: got rejected %v", r.Index, r.Err)
		}
	}
	want := map[string]occ{
		convID + "\x00CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)":     {convID, "CustomerRouting", "Unknown", utc("2023-03-05T08:18:04.568Z")},
		convID + "\x00CustomerRoutingMetric_Transferred(2023-03-05T08:19:31.002Z)": {convID, "CustomerRouting", "Transferred", utc("2023-03-05T08:19:31.002Z")},
		convID + "\x00Billing MainMetric_PaymentTaken(2023-03-05T08:20:12.880Z)":   {convID, "Billing Main", "PaymentTaken", utc("2023-03-05T08:20:12.880Z")},
	}
	if !reflect.DeepEqual(occs, want) {
		t.Errorf("got occurrences %v, want %v", occs, want)
	}
	if len(malformed) != 1 || malformed["CustomerRoutingMetric_Oops(not-a-time)"] != "CustomerRouting" {
		t.Errorf("got malformed %v, want one of flow CustomerRouting", malformed)
	}
	if skipped != 0 || ended != 1 {
		t.Errorf("got %d skipped and %d end events, want 0 and 1", skipped, ended)
	}
}

func TestDecodeLayouts(t *testing.T) {
	ev := compact(t, "attributes-eventbridge.json")
	// end stands for a record of a topic flowmetrics skips.
	end := strings.ReplaceAll(compact(t, "customer-end-eventbridge.json"), ".customer.end", ".customer.start")
	pretty := strings.TrimSpace(string(readSample(t, "attributes-eventbridge.json")))
	prettyLines := strings.Count(pretty, "\n") + 1 // 28
	var indented bytes.Buffer
	json.Indent(&indented, []byte("["+ev+","+end+"]"), "", "  ")

	tests := []struct {
		name string
		in   string
		want []rec
	}{
		{"empty input", "", nil},
		{"only blank lines", "\n \r\n\t\n", nil},
		{"empty array", " [ ] \n", nil},
		{"one line without newline", ev, []rec{{0, 1, Accepted, nil}}},
		{"NDJSON", ev + "\n" + end + "\n" + ev + "\n", []rec{{0, 1, Accepted, nil}, {1, 2, Skipped, nil}, {2, 3, Accepted, nil}}},
		{"NDJSON with blank lines", "\n\n" + ev + "\n\n  \n" + end + "\n\n", []rec{{0, 3, Accepted, nil}, {1, 6, Skipped, nil}}},
		{"NDJSON with CRLF", ev + "\r\n" + end + "\r\n\r\n" + ev, []rec{{0, 1, Accepted, nil}, {1, 2, Skipped, nil}, {2, 4, Accepted, nil}}},
		{"NDJSON with a byte order mark", "\xef\xbb\xbf" + ev + "\n" + end, []rec{{0, 1, Accepted, nil}, {1, 2, Skipped, nil}}},
		{"NDJSON with a bad line in the middle", ev + "\n" + ev[:40] + "\n" + end + "\n", []rec{{0, 1, Accepted, nil}, {1, 2, Rejected, ErrNotJSON}, {2, 3, Skipped, nil}}},
		{"NDJSON with an unbalanced line", ev + "\n{\"detail\": {\n" + end + "\n", []rec{{0, 1, Accepted, nil}, {1, 2, Rejected, ErrNotJSON}, {2, 3, Skipped, nil}}},
		{"NDJSON with a pretty-printed value", ev + "\n{\n\"a\": 1}\n" + end, []rec{{0, 1, Accepted, nil}, {1, 2, Rejected, ErrNotJSON}, {2, 3, Rejected, ErrNotJSON}, {3, 4, Skipped, nil}}},
		{"NDJSON with two values on a line", ev + "\n{} {}\n" + end, []rec{{0, 1, Accepted, nil}, {1, 2, Rejected, ErrNotJSON}, {2, 3, Skipped, nil}}},
		{"NDJSON with bad records of every kind", ev + "\n[]\n{}\n" + `{"topicName":"` + attrTopic + `","eventBody":{"attributes":{}}}` + "\nnull\n" + ev,
			[]rec{{0, 1, Accepted, nil}, {1, 2, Rejected, ErrNotEvent}, {2, 3, Rejected, ErrNotEvent}, {3, 4, Rejected, ErrNoConversationID}, {4, 5, Rejected, ErrNotEvent}, {5, 6, Accepted, nil}}},
		{"NDJSON whose first line is cut in a string", ev[:40] + "\n" + end + "\n" + ev, []rec{{0, 1, Rejected, ErrNotJSON}, {1, 2, Skipped, nil}, {2, 3, Accepted, nil}}},
		{"NDJSON whose first line is cut after a comma", ev[:strings.Index(ev, `"id"`)] + "\n\n" + end + "\n" + ev, []rec{{0, 1, Rejected, ErrNotJSON}, {1, 3, Skipped, nil}, {2, 4, Accepted, nil}}},
		{"NDJSON whose first line is not JSON", "events:\n" + end + "\n" + ev, []rec{{0, 1, Rejected, ErrNotJSON}, {1, 2, Skipped, nil}, {2, 3, Accepted, nil}}},
		{"pretty-printed value", pretty + "\n", []rec{{0, 1, Accepted, nil}}},
		{"pretty-printed value with CRLF", strings.ReplaceAll(pretty, "\n", "\r\n") + "\r\n", []rec{{0, 1, Accepted, nil}}},
		{"pretty-printed values one after another", "\n" + pretty + "\n" + pretty + pretty, []rec{{0, 2, Accepted, nil}, {1, prettyLines + 2, Accepted, nil}, {2, 2*prettyLines + 1, Accepted, nil}}},
		{"compact values one after another", ev + end + "\n" + ev, []rec{{0, 1, Accepted, nil}, {1, 1, Skipped, nil}, {2, 2, Accepted, nil}}},
		{"pretty-printed value that is broken", "{\n  \"a\": 1\n  \"b\": 2\n}\n" + ev + "\n", []rec{{0, 1, Rejected, ErrNotJSON}}},
		{"pretty-printed value that is cut", pretty[:200], []rec{{0, 1, Rejected, ErrNotJSON}}},
		{"indented whole value after a broken one is not a record", "{\n \"a\": [\n  1x,\n  \"y\"\n ]\n}\n" + ev, []rec{{0, 1, Rejected, ErrNotJSON}}},
		{"value after a broken one is not guessed", pretty + "\n{\n \"a\": tru\n}\n" + pretty, []rec{{0, 1, Accepted, nil}, {1, prettyLines + 1, Rejected, ErrNotJSON}}},
		{"array", "[" + ev + "," + end + "," + ev + "]", []rec{{0, 1, Accepted, nil}, {1, 1, Skipped, nil}, {2, 1, Accepted, nil}}},
		{"pretty-printed array", indented.String(), []rec{{0, 2, Accepted, nil}, {1, 37, Skipped, nil}}},
		{"array with CRLF", "[\r\n" + ev + ",\r\n" + end + "\r\n]\r\n", []rec{{0, 2, Accepted, nil}, {1, 3, Skipped, nil}}},
		{"array with elements that are not objects", "[1, " + ev + ", \"x\", null, [], {}]", []rec{{0, 1, Rejected, ErrNotEvent}, {1, 1, Accepted, nil}, {2, 1, Rejected, ErrNotEvent}, {3, 1, Rejected, ErrNotEvent}, {4, 1, Rejected, ErrNotEvent}, {5, 1, Rejected, ErrNotEvent}}},
		{"array with a broken element", "[" + ev + ",\n{\"a\": }, " + ev + "]", []rec{{0, 1, Accepted, nil}, {1, 2, Rejected, ErrNotJSON}}},
		{"array without a comma", "[" + ev + "\n" + ev + "]", []rec{{0, 1, Accepted, nil}, {1, 2, Rejected, ErrNotJSON}}},
		// Not one array, so one line of NDJSON: rejected whole.
		{"array with a trailing comma", "[" + ev + ",]", []rec{{0, 1, Rejected, ErrNotJSON}}},
		{"array not closed", "[" + ev + ",\n" + ev + "\n", []rec{{0, 1, Accepted, nil}, {1, 2, Accepted, nil}, {2, 3, Rejected, ErrNotJSON}}},
		// A body is one array only if the whole body is one.
		{"array with data after it is a line of NDJSON", "[" + ev + "]\n" + ev, []rec{{0, 1, Rejected, ErrNotEvent}, {1, 2, Accepted, nil}}},
		{"array of numbers as a first line", "[1,2,3]\n" + ev + "\n" + ev + "\n", []rec{{0, 1, Rejected, ErrNotEvent}, {1, 2, Accepted, nil}, {2, 3, Accepted, nil}}},
		{"array as a first line, blank lines after it", "[" + ev + "]\n\n \r\n\n", []rec{{0, 1, Accepted, nil}}},
		{"array and more on its first line", "[1] " + ev + "\n" + ev, []rec{{0, 1, Rejected, ErrNotJSON}, {1, 2, Accepted, nil}}},
		{"broken array as a first line", "[1,,2]\n" + ev + "\n" + end, []rec{{0, 1, Rejected, ErrNotJSON}, {1, 2, Accepted, nil}, {2, 3, Skipped, nil}}},
		{"multi-line array followed by NDJSON lines", "[\n" + ev + "\n]\n" + ev + "\n" + end + "\n",
			[]rec{{0, 2, Accepted, nil}, {1, 4, Rejected, ErrNotJSON}, {2, 4, Accepted, nil}, {3, 5, Skipped, nil}}},
		{"multi-line array followed by junk", "[\n" + ev + "\n]\nx\n" + ev + "\n",
			[]rec{{0, 2, Accepted, nil}, {1, 4, Rejected, ErrNotJSON}}},
		{"multi-line array broken by NDJSON lines", "[" + ev + ",\n" + ev + "\n" + ev + "\n" + end + "\n",
			[]rec{{0, 1, Accepted, nil}, {1, 2, Accepted, nil}, {2, 3, Rejected, ErrNotJSON}, {3, 3, Accepted, nil}, {4, 4, Skipped, nil}}},
		{"array with a byte order mark", "\xef\xbb\xbf[" + ev + "]", []rec{{0, 1, Accepted, nil}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeAll(t, strings.NewReader(tt.in))
			if err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			checkRecords(t, got, tt.want)
			// Reading the input a byte at a time, or in odd chunks, must
			// not change a thing.
			for name, r := range map[string]io.Reader{
				"one byte":   iotest.OneByteReader(strings.NewReader(tt.in)),
				"half":       iotest.HalfReader(strings.NewReader(tt.in)),
				"data + EOF": iotest.DataErrReader(strings.NewReader(tt.in)),
			} {
				small, err := decodeAll(t, r)
				if err != nil {
					t.Fatalf("%s reads: got error %v, want nil", name, err)
				}
				if !sameRecords(small, got) {
					t.Errorf("%s reads: got different records", name)
				}
			}
			// Nor parsing the lines in parallel.
			for name, decode := range parallelDecoders {
				for reads, r := range map[string]io.Reader{
					"whole":    strings.NewReader(tt.in),
					"one byte": iotest.OneByteReader(strings.NewReader(tt.in)),
				} {
					par, err := decodeWith(decode, r)
					if err != nil {
						t.Fatalf("%s, %s reads: got error %v, want nil", name, reads, err)
					}
					if !sameRecords(par, got) {
						t.Errorf("%s, %s reads: got different records", name, reads)
					}
				}
			}
		})
	}
}

// sameRecords compares records, errors by message.
func sameRecords(a, b []Record) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if fmt.Sprint(x.Err) != fmt.Sprint(y.Err) {
			return false
		}
		x.Err, y.Err = nil, nil
		if !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}

// Syntax errors say where the offending byte is, in the whole input.
func TestDecodeErrorPosition(t *testing.T) {
	ev := compact(t, "attributes-eventbridge.json")
	tests := []struct {
		name, in string
		index    int
		want     string
	}{
		{"NDJSON line", ev + "\n" + `{"a": x}` + "\n" + ev, 1, `not JSON: invalid character 'x' looking for beginning of value (line 2, column 7)`},
		{"NDJSON line cut", ev + "\n" + `{"a": "x` + "\n", 1, `not JSON: unexpected end of input (line 2, column 9)`},
		{"first NDJSON line cut in a string", `{"a": "x` + "\n" + ev, 0, `not JSON: invalid character '\n' in string literal (line 1, column 9)`},
		{"multi-line value", "{\n  \"a\": 1\n  \"b\": 2\n}", 0, `not JSON: invalid character '"' after object key:value pair (line 3, column 3)`},
		{"array element", "[\n  {},\n  {\"a\" 1}\n]", 1, `not JSON: invalid character '1' after object key (line 3, column 8)`},
		{"after an array", "[{}] x", 0, `not JSON: invalid character 'x' after top-level value (line 1, column 6)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeAll(t, strings.NewReader(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) <= tt.index {
				t.Fatalf("got %d records, want more than %d", len(got), tt.index)
			}
			if msg := fmt.Sprint(got[tt.index].Err); msg != tt.want {
				t.Errorf("got error %q, want %q", msg, tt.want)
			}
		})
	}
}

// Records up to MaxRecordSize are read whatever their size; larger ones are
// rejected without disturbing their neighbours.
func TestDecodeLargeRecords(t *testing.T) {
	if testing.Short() {
		t.Skip("large inputs")
	}
	ev := compact(t, "attributes-eventbridge.json")
	big := func(size int) string {
		filler := `"AccountID":"0-000000"`
		if !strings.Contains(ev, filler) {
			t.Fatalf("sample lacks %s", filler)
		}
		return strings.Replace(ev, filler, filler+`,"BigMetric_`+strings.Repeat("x", size)+`(x)":""`, 1)
	}
	ten := big(10 << 20)
	huge := big(MaxRecordSize)

	decoders := map[string]func(io.Reader, func(Record) error) error{"Decode": Decode, "parallel": parallelDecoders["parallel"]}
	for name, decode := range decoders {
		t.Run("NDJSON/"+name, func(t *testing.T) {
			got, err := decodeWith(decode, strings.NewReader(ev+"\n"+ten+"\n"+huge+"\n"+ev+"\n"+huge))
			if err != nil {
				t.Fatal(err)
			}
			checkRecords(t, got, []rec{{0, 1, Accepted, nil}, {1, 2, Accepted, nil}, {2, 3, Rejected, ErrTooLarge}, {3, 4, Accepted, nil}, {4, 5, Rejected, ErrTooLarge}})
			if names := got[1].Event.MetricNames; len(names) != 2 || len(names[0]) != 10<<20+len("BigMetric_(x)") {
				t.Errorf("got names %.40q, want the sample's and one of %d bytes", names, 10<<20+len("BigMetric_(x)"))
			}
		})
		t.Run("first line too large/"+name, func(t *testing.T) {
			got, err := decodeWith(decode, strings.NewReader(huge+"\n"+ev+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			checkRecords(t, got, []rec{{0, 1, Rejected, ErrTooLarge}, {1, 2, Accepted, nil}})
		})
	}
	t.Run("array", func(t *testing.T) {
		got, err := decodeAll(t, strings.NewReader("["+ten+",\n"+huge+",\n"+ev+"]"))
		if err != nil {
			t.Fatal(err)
		}
		checkRecords(t, got, []rec{{0, 1, Accepted, nil}, {1, 2, Rejected, ErrTooLarge}})
	})
	t.Run("pretty-printed", func(t *testing.T) {
		var buf bytes.Buffer
		json.Indent(&buf, []byte(ten), "", "  ")
		got, err := decodeAll(t, iotest.HalfReader(&buf))
		if err != nil {
			t.Fatal(err)
		}
		checkRecords(t, got, []rec{{0, 1, Accepted, nil}})
	})
}

type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestDecodeReadError(t *testing.T) {
	ev := compact(t, "attributes-eventbridge.json")
	boom := errors.New("boom")
	for name, in := range map[string]string{
		"NDJSON":        ev + "\n" + ev[:50],
		"NDJSON start":  ev[:50],
		"array":         "[" + ev + "," + ev[:50],
		"pretty":        "{\n" + ev[1:50],
		"nothing":       "",
		"complete line": ev + "\n",
	} {
		for dname, decode := range map[string]func(io.Reader, func(Record) error) error{"Decode": Decode, "parallel": parallelDecoders["parallel"]} {
			t.Run(name+"/"+dname, func(t *testing.T) {
				got, err := decodeWith(decode, &failingReader{[]byte(in), boom})
				if !errors.Is(err, boom) {
					t.Errorf("got error %v, want %v", err, boom)
				}
				for _, r := range got {
					if r.Outcome != Accepted {
						t.Errorf("record %d: got %v %v before the read error, want only whole records", r.Index, r.Outcome, r.Err)
					}
				}
				if strings.HasPrefix(name, "NDJSON") && len(got) != strings.Count(in, "\n") {
					t.Errorf("got %d records, want the %d whole lines before the read error", len(got), strings.Count(in, "\n"))
				}
			})
		}
	}
}

func TestDecodeCallbackError(t *testing.T) {
	ev := compact(t, "attributes-eventbridge.json")
	stop := errors.New("stop")
	for name, in := range map[string]string{
		"NDJSON": ev + "\n" + ev + "\n" + ev,
		"array":  "[" + ev + "," + ev + "," + ev + "]",
		"pretty": string(readSample(t, "attributes-eventbridge.json")) + string(readSample(t, "attributes-eventbridge.json")),
	} {
		decoders := map[string]func(io.Reader, func(Record) error) error{"Decode": Decode}
		for dname, decode := range parallelDecoders {
			decoders[dname] = decode
		}
		for dname, decode := range decoders {
			t.Run(name+"/"+dname, func(t *testing.T) {
				calls := 0
				err := decode(strings.NewReader(in), func(Record) error {
					calls++
					if calls == 2 {
						return stop
					}
					return nil
				})
				if err != stop || calls != 2 {
					t.Errorf("got error %v after %d calls, want %v after 2", err, calls, stop)
				}
			})
		}
	}
}

func TestOutcomeString(t *testing.T) {
	for o, want := range map[Outcome]string{Accepted: "accepted", Skipped: "skipped", Rejected: "rejected", 7: "Outcome(7)"} {
		if got := o.String(); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}
