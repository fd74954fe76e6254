package genesys

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"
	"unicode"
	"unicode/utf8"
)

// seedSamples adds every sample in examples/, whole and line by line.
func seedSamples(f *testing.F) {
	files, err := filepath.Glob(filepath.Join(examples, "*.json*"))
	if err != nil || len(files) == 0 {
		f.Fatalf("samples: %v (%d files)", err, len(files))
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		for _, line := range bytes.Split(b, []byte("\n")) {
			f.Add(line)
		}
	}
}

func FuzzParseAttribute(f *testing.F) {
	for _, s := range []string{
		"CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)",
		"Billing MainMetric_PaymentTaken(2023-03-05T08:20:12.880Z)",
		"FMetric_A(b)(2023-03-05T09:18:04.123456789+01:00)",
		"AMetric_BMetric_C(2023-03-05t08:18:04z)",
		"顧客Metric_不明(0000-01-01T00:00:00-00:00)",
		"FMetric_A(9999-12-31T23:59:59Z)",
		"CustomerRoutingMetric_Oops(not-a-time)",
		"FMetric_A(2024-02-30T08:18:04Z)",
		"Metric_(",
		"AccountID",
		"Billing\u202eMainMetric_Paid(2023-03-05T08:18:04Z)",
		"BillingMetric_Pa\u200bid(2023-03-05T08:18:04Z)",
		"\ufeffBillingMetric_Paid(2023-03-05T08:18:04Z)",
		"BillingMetric_Paid\u2066x\u2069(2023-03-05T08:18:04Z)",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		a, ok, err := ParseAttribute(name)
		switch {
		case ok && err != nil:
			t.Fatalf("got ok and error %v", err)
		case !ok && err == nil:
			i := strings.Index(name, marker)
			if i >= 0 && strings.Contains(name[i+len(marker):], "(") {
				t.Fatalf("got not a metric for a name of the metric shape")
			}
			return
		case err != nil:
			if !utf8.ValidString(a.Flow) {
				t.Errorf("got flow %q of a malformed name, want valid UTF-8", a.Flow)
			}
			return
		}
		if a.Flow == "" || a.Metric == "" || strings.Contains(a.Flow, marker) {
			t.Errorf("got flow %q metric %q", a.Flow, a.Metric)
		}
		// A counted name holds no invisible or control character, so no two
		// different keys can look the same.
		for _, r := range a.Flow + a.Metric {
			if unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp) {
				t.Errorf("got flow %q metric %q, holding %U: want it malformed", a.Flow, a.Metric, r)
			}
		}
		if a.Time.Location() != time.UTC {
			t.Errorf("got time in %v, want UTC", a.Time.Location())
		}
		again := a.Flow + marker + a.Metric + "(" + a.Time.Format(time.RFC3339Nano) + ")"
		b, ok, err := ParseAttribute(again)
		if !ok || err != nil {
			t.Fatalf("ParseAttribute(%q) (from %q): got ok=%v err=%v, want ok", again, name, ok, err)
		}
		if b.Flow != a.Flow || b.Metric != a.Metric || !b.Time.Equal(a.Time) {
			t.Errorf("round trip of %q: got %+v, want %+v", name, b, a)
		}
	})
}

// FuzzParseTime: the usual forms' quick reading (parseUsualTime) gives
// what the reading of any text gives, time and reason alike.
func FuzzParseTime(f *testing.F) {
	for _, s := range []string{
		"2023-03-05T08:18:04.568Z", "2023-03-05T08:18:04Z", "2024-02-29T23:59:59.999Z",
		"2023-02-29T08:18:04Z", "2023-04-31T08:18:04.000Z", "0000-01-01T00:00:00Z",
		"9999-12-31T23:59:59.999Z", "2023-13-05T08:18:04Z", "2023-00-05T08:18:04Z",
		"2023-03-00T08:18:04Z", "2023-03-05T24:18:04Z", "2023-03-05T08:60:04Z",
		"2023-03-05T08:18:60.000Z", "2023-03-05t08:18:04.568z", "2023-03-05T08:18:04.56Z",
		"2023-03-05T08:18:04.5a8Z", "2023-03-05 08:18:04Z", "2023-03-05T08:18:04.568+01:00",
		"2023/03/05T08:18:04Z", "2O23-03-05T08:18:04Z", "2023-03-05T08:18:04,568Z", "-023-03-05T08:18:04Z",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, gotErr := parseTime(s)
		want, wantErr := parseAnyTime(s)
		if !got.Equal(want) || got.Location() != want.Location() || gotErr != wantErr {
			t.Errorf("parseTime(%q): got %v %v, want %v %v", s, got, gotErr, want, wantErr)
		}
	})
}

// FuzzNameMemo: names extracted through a memo that has seen another name
// (and may remember its flow and metric, or the whole name) give what
// ExtractNames gives.
func FuzzNameMemo(f *testing.F) {
	for _, s := range [][2]string{
		{"FMetric_A(2023-03-05T08:18:04Z)", "FMetric_A(2023-03-05T08:18:04.568Z)"},
		{"FMetric_A(2023-03-05T08:18:04Z)", "FMetric_A(2023-03-05T08:18:04Z)"},
		{"FMetric_A(2023-03-05T08:18:04Z)", "FMetric_A(2023-02-29T08:18:04Z)"},
		{"FMetric_A(2023-03-05T08:18:04Z)", "FMetric_A(2023-03-05t08:18:04+01:00)"},
		{"FMetric_A(2023-03-05T08:18:04Z)", "FMetric_A(2023-03-05T08:18:04Z"},
		{"FMetric_A(2023-03-05T08:18:04Z)", "FMetric_A(2023-03-05T08:18:04\xffZ)"},
		{"FMetric_A(b)(2023-03-05T08:18:04Z)", "FMetric_A(b)(2023-03-05T08:18:05Z)"},
		{"ÉtéMetric_F(2023-03-05T08:18:04Z)", "ÉtéMetric_F(2023-03-05T08:18:04.000Z)"},
		{"FMetric_A(2023-03-05T08:18:04Z)", "GMetric_A(2023-03-05T08:18:04Z)"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, first, second string) {
		for _, batch := range []bool{false, true} {
			var memo NameMemo
			if batch {
				memo.Batch()
			}
			memo.Extract([]string{first})
			for _, names := range [][]string{{second}, {second, first}} {
				got, gotBad := memo.Extract(names)
				want, wantBad := ExtractNames(names)
				if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotBad, wantBad) {
					t.Fatalf("batch %v, after %q, %q: got %v %v, want %v %v", batch, first, names, got, gotBad, want, wantBad)
				}
			}
		}
	})
}

// FuzzDecode checks the invariants of Decode, whatever the input, and that
// reading it a byte at a time changes nothing.
func FuzzDecode(f *testing.F) {
	seedSamples(f)
	for _, s := range []string{
		"[1, {}, null]", "[{\"a\":1},\n{\"a\" 1}]", "{\n\"a\": 1\n\"b\": 2\n}", "x\n{}\n{}",
		"{\"a\": \"x\n{}\n", "\xef\xbb\xbf{}\r\n\r\n{}", "{}{}\n[]", "[] x", "1 2 3", "12",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got []Record
		err := Decode(bytes.NewReader(data), func(r Record) error {
			got = append(got, r)
			return nil
		})
		if err != nil {
			t.Fatalf("got error %v, want nil", err)
		}
		line := 1
		for i, r := range got {
			if r.Index != i {
				t.Errorf("record %d: got index %d", i, r.Index)
			}
			if r.Line < line {
				t.Errorf("record %d: got line %d after line %d", i, r.Line, line)
			}
			line = r.Line
			switch r.Outcome {
			case Accepted:
				if r.Event == nil || r.Event.ConversationID == "" || r.Err != nil {
					t.Fatalf("record %d: got accepted with event %+v, error %v", i, r.Event, r.Err)
				}
				// Only names that can be metric names, each once, in
				// byte order (which Extract relies on to skip its sort).
				for j, k := range r.Event.MetricNames {
					if !strings.Contains(k, marker) {
						t.Errorf("record %d: got name %q, want only names holding %q", i, k, marker)
					}
					if j > 0 && r.Event.MetricNames[j-1] >= k {
						t.Errorf("record %d: got names %q, want them sorted and each once", i, r.Event.MetricNames)
					}
				}
				occs, bad := Extract(r.Event)
				for _, o := range occs {
					if !utf8.ValidString(o.Key) || len(o.Flow) > MaxFlowLen || len(o.Metric) > MaxMetricLen {
						t.Errorf("record %d: got occurrence %q: want valid UTF-8 and names within the limits", i, o.Key)
					}
				}
				for _, m := range bad {
					if !utf8.ValidString(m.Flow) || len(m.Flow) > MaxFlowLen || len(m.Name) > MaxShownName {
						t.Errorf("record %d: got malformed %+v: want a valid UTF-8 flow within the limits", i, m)
					}
				}
			case Skipped:
				if r.Event != nil || r.Err != nil {
					t.Errorf("record %d: got skipped with event %+v, error %v", i, r.Event, r.Err)
				}
			case Rejected:
				if r.Event != nil || r.Err == nil {
					t.Errorf("record %d: got rejected with event %+v, error %v", i, r.Event, r.Err)
				}
			default:
				t.Errorf("record %d: got outcome %v", i, r.Outcome)
			}
		}
		if trimmed := bytes.TrimSpace(data); len(trimmed) > 0 && trimmed[0] == '{' &&
			len(data) <= MaxRecordSize && json.Valid(data) && len(got) != 1 {
			t.Errorf("got %d records from one JSON object, want 1", len(got))
		}
		var slow []Record
		Decode(iotest.OneByteReader(bytes.NewReader(data)), func(r Record) error {
			slow = append(slow, r)
			return nil
		})
		if !sameRecords(slow, got) {
			t.Errorf("got different records reading a byte at a time")
		}
		// Parsed in parallel, in chunks of a few lines: the same records.
		for _, r := range []io.Reader{bytes.NewReader(data), iotest.OneByteReader(bytes.NewReader(data))} {
			var par []Record
			if err := decodeParallel(r, 3, 16, func(r Record) error {
				par = append(par, r)
				return nil
			}); err != nil {
				t.Fatalf("decodeParallel: got error %v, want nil", err)
			}
			if !sameRecords(par, got) {
				t.Errorf("got different records parsing lines in parallel")
			}
		}
		// In place: the same records, which outlive the bytes they were
		// decoded from, and the bytes left as they were.
		body := bytes.Clone(data)
		var inPlace []Record
		if err := DecodeBytes(body, func(r Record) error {
			inPlace = append(inPlace, r)
			return nil
		}); err != nil {
			t.Fatalf("DecodeBytes: got error %v, want nil", err)
		}
		if !bytes.Equal(body, data) {
			t.Errorf("DecodeBytes changed its input")
		}
		for i := range body {
			body[i] = 'x'
		}
		if !sameRecords(inPlace, got) {
			t.Errorf("got different records decoding in place")
		}
	})
}

// FuzzDecodeValue holds DecodeValue to encoding/json: the same values are
// JSON, and a straightforward reading of the rules on encoding/json's
// result gives the same outcome and event.
func FuzzDecodeValue(f *testing.F) {
	seedSamples(f)
	for _, s := range []string{
		`{"topicName":"v2.detail.events.conversation.c.attributes","eventBody":{"conversationId":"c","attributes":{"a\ud83d\ude00":"\u00e9"}}}`,
		`{"detail-type":"v2.detail.events.conversation.{id}.attributes","detail":{"eventBody":{"conversationId":"c","eventTime":-12,"attributes":{}}},"detail-type":1}`,
		`{"detail":{"topicName":"v2.detail.events.conversation.c.attributes","eventBody":{"conversationId":"c","attributes":{"n":1}}}}`,
		`{"topicName":"v2.detail.events.conversation.c.attributes","eventBody":{"conversationId":"c","attributes":{"F\ud83d\ude00\u004detric_A(x)":"1","FMetric_A(x)":"","F\u004detric_A(x)":"2"}}}`,
		"[1e400, -0.5E+3, true, false, null]",
		"{\"topicName\":\"v2.detail.events.conversation.c.attributes\",\"eventBody\":{\"conversationId\":\"c\",\"attributes\":{\"FMetric_A\xff(2023-03-05T08:18:04Z)\":\"1\",\"FMetric_A\\udc00(2023-03-05T08:18:04Z)\":\"1\",\"FMetric_A\ufffd(2023-03-05T08:18:04Z)\":\"1\"}}}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rec := DecodeValue(data)
		want := reference(data)
		if rec.Outcome != want.Outcome {
			t.Fatalf("got %v (%v), want %v (%v)", rec.Outcome, rec.Err, want.Outcome, want.Err)
		}
		if rec.Outcome == Rejected && !errors.Is(rec.Err, want.Err) {
			t.Fatalf("got error %v, want %v", rec.Err, want.Err)
		}
		if rec.Outcome != Rejected && rec.Topic != want.Topic {
			t.Errorf("got topic %q, want %q", rec.Topic, want.Topic)
		}
		if rec.Event != nil && want.Event != nil && !validNames(rec.Event.MetricNames) {
			// encoding/json replaces what is not valid Unicode in a name,
			// so it may merge names the decoder keeps apart: compare the
			// rest, and each name as encoding/json would have read it.
			if len(rec.Event.MetricNames) < len(want.Event.MetricNames) {
				t.Errorf("got %d names, want at least encoding/json's %d", len(rec.Event.MetricNames), len(want.Event.MetricNames))
			}
			for _, k := range rec.Event.MetricNames {
				if jk, ok := asEncodingJSON(k); ok {
					if _, found := slices.BinarySearch(want.Event.MetricNames, jk); !found {
						t.Errorf("got name %q, which encoding/json reads as %q: not among its names", k, jk)
					}
				}
			}
			got, ref := *rec.Event, *want.Event
			got.MetricNames, ref.MetricNames = nil, nil
			if !reflect.DeepEqual(got, ref) {
				t.Errorf("got event %+v, want %+v", got, ref)
			}
			return
		}
		if !reflect.DeepEqual(rec.Event, want.Event) {
			t.Errorf("got event %+v, want %+v", rec.Event, want.Event)
		}
	})
}

func validNames(names []string) bool {
	for _, k := range names {
		if !utf8.ValidString(k) {
			return false
		}
	}
	return true
}

// asEncodingJSON returns the name encoding/json makes of a name the decoder
// kept as it was: each invalid byte becomes U+FFFD. ok is false when k holds
// what could be a surrogate in WTF-8 (0xED 0xA0-0xBF), which encoding/json
// reads as one U+FFFD when it came from an escape and three when raw.
func asEncodingJSON(k string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(k); {
		if k[i] == 0xed && i+1 < len(k) && k[i+1] >= 0xa0 && k[i+1] <= 0xbf {
			return "", false
		}
		r, size := utf8.DecodeRuneInString(k[i:])
		b.WriteRune(r)
		i += size
	}
	return b.String(), true
}

// reference applies the rules of Decode to what encoding/json makes of data.
func reference(data []byte) Record {
	if !json.Valid(data) {
		return reject(ErrNotJSON)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		panic(err) // json.Valid said it was
	}
	top, ok := v.(map[string]any)
	if !ok {
		return reject(ErrNotEvent)
	}
	d := top
	if x, has := top["detail"]; has {
		if d, ok = x.(map[string]any); !ok {
			return reject(ErrNotEvent)
		}
	} else {
		_, hasTopic := top["topicName"]
		_, hasBody := top["eventBody"]
		if !hasTopic || !hasBody {
			return reject(ErrNotEvent)
		}
	}
	var rec Record
	if x, has := d["topicName"]; has {
		if rec.Topic, ok = x.(string); !ok {
			return reject(ErrNotEvent)
		}
	} else if rec.Topic, ok = top["detail-type"].(string); !ok {
		return reject(ErrNotEvent)
	}
	if isEndTopic([]byte(rec.Topic)) {
		body, _ := d["eventBody"].(map[string]any)
		id, _ := body["conversationId"].(string)
		if id == "" {
			return reject(ErrNoConversationID)
		}
		rec.Outcome, rec.Event = Accepted, &Event{ConversationID: id, Ended: true}
		if n, ok := body["eventTime"].(json.Number); ok && len(strings.TrimPrefix(string(n), "-")) <= 18 {
			if ms, err := n.Int64(); err == nil {
				rec.Event.EventTime = time.UnixMilli(ms).UTC()
			}
		}
		return rec
	}
	if !isAttributesTopic([]byte(rec.Topic)) {
		rec.Outcome = Skipped
		return rec
	}
	body, ok := d["eventBody"].(map[string]any)
	if !ok {
		return reject(ErrNoConversationID)
	}
	ev := &Event{}
	if ev.ConversationID, ok = body["conversationId"].(string); !ok || ev.ConversationID == "" {
		return reject(ErrNoConversationID)
	}
	if body["attributes"] == nil {
		return reject(ErrNoAttributes)
	}
	attrs, ok := body["attributes"].(map[string]any)
	if !ok {
		return reject(ErrBadAttributes)
	}
	for k, v := range attrs {
		if _, ok := v.(string); !ok {
			return reject(ErrBadAttributes)
		}
		// The names the event hands on: those that can be metric names,
		// each once (a map keeps a repeated name once), in byte order.
		if strings.Contains(k, marker) {
			ev.MetricNames = append(ev.MetricNames, k)
		}
	}
	slices.Sort(ev.MetricNames)
	// The decoder counts members, duplicates included; a map cannot. The
	// two agree unless an input repeats names around the limit.
	if len(attrs) > MaxAttributes {
		return reject(ErrTooManyAttrs)
	}
	ev.ParticipantID, _ = body["participantId"].(string)
	if n, ok := body["eventTime"].(json.Number); ok && len(strings.TrimPrefix(string(n), "-")) <= 18 {
		if ms, err := n.Int64(); err == nil {
			ev.EventTime = time.UnixMilli(ms).UTC()
		}
	}
	rec.Outcome, rec.Event = Accepted, ev
	return rec
}

// FuzzParseName: a name parsed through a memo that has parsed another
// (and may remember its flow and metric) gives what ParseAttribute gives.
func FuzzParseName(f *testing.F) {
	for _, s := range [][2]string{
		{"FMetric_A(2023-03-05T08:18:04Z)", "FMetric_A(2023-03-05T08:18:04.568Z)"},
		{"FMetric_A(2023-03-05T08:18:04Z)", "FMetric_A(2023-02-29T08:18:04Z)"},
		{"FMetric_A(2023-03-05T08:18:04Z)", "FMetric_A(2023-03-05t08:18:04+01:00)"},
		{"FMetric_A(2023-03-05T08:18:04Z)", "FMetric_A(2023-03-05T08:18:04Z"},
		{"FMetric_A(b)(2023-03-05T08:18:04Z)", "FMetric_A(b)(2023-03-05T08:18:05Z)"},
		{"AMetric_B(2023-03-05T08:18:04Z)", "AMetric_B(xMetric_C)"},
		{"ÉtéMetric_F(2023-03-05T08:18:04Z)", "ÉtéMetric_F(2023-03-05T08:18:04.000Z)"},
		{"FMetric_A(2023-03-05T08:18:04Z)", "GMetric_A(2023-03-05T08:18:04Z)"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, first, second string) {
		var memo NameMemo
		for _, name := range []string{first, second, first} {
			got, gotOK := memo.ParseName(name)
			want, wantOK, _ := ParseAttribute(name)
			if !wantOK {
				want = Attribute{}
			}
			if gotOK != wantOK || got.Flow != want.Flow || got.Metric != want.Metric || !got.Time.Equal(want.Time) || got.Time.Location() != want.Time.Location() {
				t.Fatalf("after %q, %q: got %+v %v, want %+v %v", first, name, got, gotOK, want, wantOK)
			}
		}
	})
}
