package genesys

import (
	"bufio"
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"testing"
	"time"
)

// An Envelope is the shape EventBridge delivers: built with the values of
// the repository's sample conversation, it equals the sample's events
// field for field.
func TestEnvelopeIsTheSample(t *testing.T) {
	f, err := os.Open("../../examples/conversation.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines = append(lines, append([]byte(nil), sc.Bytes()...))
	}
	if len(lines) != 5 {
		t.Fatalf("examples/conversation.ndjson: got %d lines, want 5", len(lines))
	}
	var first map[string]any
	json.Unmarshal(lines[0], &first)
	attrs := map[string]string{}
	for k, v := range first["detail"].(map[string]any)["eventBody"].(map[string]any)["attributes"].(map[string]any) {
		attrs[k] = v.(string)
	}
	const (
		conv   = "12341234-1234-1234-1234-123456789012"
		part   = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
		source = "aws.partner/genesys.com/cloud/8c1f0f2a-1111-4c2b-9e55-0a0b0c0d0e0f/flow-metrics"
	)
	for _, tt := range []struct {
		name string
		line []byte
		e    Envelope
	}{
		{"attributes", lines[0], Envelope{
			Conversation: conv, Participant: part, Time: time.UnixMilli(1678004285012), Attributes: attrs,
			ID: "5b0a4c6e-2f1d-4d7a-9c3e-6a1f0e2d3c4b", Source: source, Region: "eu-west-2",
			Communication: "3c2b1a09-8f7e-4d6c-5b4a-39281706f5e4", CorrelationID: "0d1c2b3a-4958-4675-8493-a2b1c0d9e8f7",
		}},
		{"customer.end", lines[4], Envelope{
			Topic: TopicCustomerEnd, Conversation: conv, Participant: part, Time: time.UnixMilli(1678004500127),
			ID: "7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918", Source: source, Region: "eu-west-2",
			Session: "3c2b1a09-8f7e-4d6c-5b4a-39281706f5e4", CorrelationID: "1e2d3c4b-5a69-4788-9a0b-c1d2e3f4a5b6-archival",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got, want any
			if err := json.Unmarshal(tt.e.JSON(), &got); err != nil {
				t.Fatal(err)
			}
			json.Unmarshal(tt.line, &want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got\n%s\nwant\n%s", tt.e.JSON(), tt.line)
			}
			var detail any
			json.Unmarshal(tt.e.DetailJSON(), &detail)
			if !reflect.DeepEqual(detail, want.(map[string]any)["detail"]) {
				t.Errorf("detail alone: got %s", tt.e.DetailJSON())
			}
		})
	}
}

// What an Envelope says, Decode reads back, whole or as a bare detail.
func TestEnvelopeDecodes(t *testing.T) {
	at := time.Date(2026, 11, 20, 9, 31, 48, 900e6, time.UTC)
	name := AttributeName("Main IVR", "Entered", at)
	attrs := Envelope{Conversation: "c-1", Participant: "p-1", Time: at, Attributes: map[string]string{name: "1", "Language": "en-GB"}}
	end := Envelope{Topic: TopicCustomerEnd, Conversation: "c-1", Participant: "p-1", Time: at}
	for _, b := range [][]byte{attrs.JSON(), attrs.DetailJSON()} {
		rec := DecodeValue(b)
		if rec.Outcome != Accepted || rec.Event.Ended || rec.Event.ConversationID != "c-1" || rec.Event.ParticipantID != "p-1" ||
			!rec.Event.EventTime.Equal(at) || !slices.Equal(rec.Event.MetricNames, []string{name}) {
			t.Errorf("%s: got %v %+v", b, rec.Outcome, rec.Event)
		}
	}
	for _, b := range [][]byte{end.JSON(), end.DetailJSON()} {
		if rec := DecodeValue(b); rec.Outcome != Accepted || !rec.Event.Ended || rec.Event.ConversationID != "c-1" || !rec.Event.EventTime.Equal(at) {
			t.Errorf("%s: got %v %+v, want an end of c-1", b, rec.Outcome, rec.Event)
		}
	}
}
