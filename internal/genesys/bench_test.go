package genesys

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// benchEvents returns n realistic attributes events as NDJSON: EventBridge
// envelopes with 20 attributes each, three of them metric attributes, as a
// busy contact centre's flows would set them.
func benchEvents(n int) []byte {
	var buf bytes.Buffer
	start := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	for i := range n {
		conv := fmt.Sprintf("%08x-1234-4234-9234-%012x", i/4, i)
		t := start.Add(time.Duration(i) * 37 * time.Millisecond)
		ts := func(d time.Duration) string { return t.Add(-d).Format("2006-01-02T15:04:05.000Z") }
		fmt.Fprintf(&buf, `{"version":"0","id":"5b0a4c6e-2f1d-4d7a-9c3e-%012x","detail-type":"v2.detail.events.conversation.{id}.attributes",`+
			`"source":"aws.partner/genesys.com/cloud/8c1f0f2a-1111-4c2b-9e55-0a0b0c0d0e0f/flow-metrics","account":"123456789012",`+
			`"time":"%s","region":"eu-west-2","resources":[],"detail":{"topicName":"v2.detail.events.conversation.%s.attributes","version":"2",`+
			`"eventBody":{"eventTime":%d,"conversationId":"%s","participantId":"9f8e7d6c-5b4a-4392-8170-%012x","attributes":{`+
			`"CustomerRoutingMetric_Unknown(%s)":"1","AccountID":"0-%06d","CustomerName":"Jane Q. Customer","Language":"en-GB",`+
			`"Queue":"Billing - Tier 1","Skill":"Payments","IVR_Path":"Main>Billing>Payments>Agent","LastMenu":"Billing Payments",`+
			`"CallbackNumber":"+441632960%03d","Priority":"5","VIP":"false","Segment":"Consumer","Context.Id":"ctx-%d",`+
			`"Screenpop.URL":"https://crm.example.com/accounts/0-%06d?view=billing&source=genesys","ANI":"tel:+441632960%03d",`+
			`"DNIS":"tel:+448000000000","Intent":"PayBill","BotSessionId":"b1c2d3e4-%012x",`+
			`"CustomerRoutingMetric_Transferred(%s)":"1","Billing MainMetric_PaymentTaken(%s)":""},`+
			`"conversationExternalContactIds":[],"conversationExternalOrganizationIds":[],`+
			`"communications":[{"id":"3c2b1a09-8f7e-4d6c-5b4a-39281706f5e4","mediaType":"VOICE"}]},`+
			`"metadata":{"CorrelationId":"0d1c2b3a-4958-4675-8493-a2b1c0d9e8f7"},"timestamp":"%s"}}`+"\n",
			i, t.Format(time.RFC3339), conv, t.UnixMilli(), conv, i,
			ts(3*time.Minute), i, i%1000, i, i, i%1000, i,
			ts(90*time.Second), ts(time.Second), t.Format("2006-01-02T15:04:05.000Z"))
	}
	return buf.Bytes()
}

const benchN = 1000

// reportPerEvent reports events/s and allocations per event; one op is
// benchN events.
func reportPerEvent(b *testing.B, run func()) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		run()
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	events := float64(b.N) * benchN
	b.ReportMetric(events/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/events, "ns/event")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/events, "allocs/event")
}

func BenchmarkDecode(b *testing.B) {
	data := benchEvents(benchN)
	b.SetBytes(int64(len(data)))
	reportPerEvent(b, func() {
		n := 0
		Decode(bytes.NewReader(data), func(r Record) error {
			if r.Outcome == Accepted {
				n++
			}
			return nil
		})
		if n != benchN {
			b.Fatalf("got %d accepted, want %d", n, benchN)
		}
	})
}

// BenchmarkDecodeExtract is this package's share of the pipeline: read,
// decode and extract the occurrences.
func BenchmarkDecodeExtract(b *testing.B) {
	data := benchEvents(benchN)
	b.SetBytes(int64(len(data)))
	reportPerEvent(b, func() {
		n := 0
		Decode(bytes.NewReader(data), func(r Record) error {
			occs, _ := Extract(r.Event)
			n += len(occs)
			return nil
		})
		if n != 3*benchN {
			b.Fatalf("got %d occurrences, want %d", n, 3*benchN)
		}
	})
}

// BenchmarkEncodingJSON is the baseline the hand-written reader is measured
// against: encoding/json into minimal structs, one line at a time.
func BenchmarkEncodingJSON(b *testing.B) {
	type envelope struct {
		Detail struct {
			TopicName string `json:"topicName"`
			EventBody struct {
				EventTime      int64             `json:"eventTime"`
				ConversationID string            `json:"conversationId"`
				ParticipantID  string            `json:"participantId"`
				Attributes     map[string]string `json:"attributes"`
			} `json:"eventBody"`
		} `json:"detail"`
	}
	data := benchEvents(benchN)
	b.SetBytes(int64(len(data)))
	reportPerEvent(b, func() {
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, MaxRecordSize)
		for sc.Scan() {
			var e envelope
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkParseAttribute(b *testing.B) {
	for _, bm := range []struct{ name, attr string }{
		{"metric", "CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)"},
		{"metric with offset", "Billing MainMetric_PaymentTaken(2023-03-05T09:20:12.8800000+01:00)"},
		{"ordinary", "Screenpop.URL"},
		{"malformed", "CustomerRoutingMetric_Oops(not-a-time)"},
	} {
		b.Run(bm.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ParseAttribute(bm.attr)
			}
		})
	}
}

// BenchmarkDecodeParallel is BenchmarkDecode with the lines parsed by
// GOMAXPROCS goroutines, as replay decodes.
func BenchmarkDecodeParallel(b *testing.B) {
	data := benchEvents(benchN)
	b.SetBytes(int64(len(data)))
	reportPerEvent(b, func() {
		n := 0
		DecodeParallel(bytes.NewReader(data), runtime.GOMAXPROCS(0), func(r Record) error {
			if r.Outcome == Accepted {
				n++
			}
			return nil
		})
		if n != benchN {
			b.Fatalf("got %d accepted, want %d", n, benchN)
		}
	})
}
