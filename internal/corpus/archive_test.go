package corpus

import (
	"bytes"
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/genesys"
)

// TestArchiveShape decodes an archive with the project's decoder and checks
// what the benchmarks rely on: every event is accepted, the distinct keys
// per conversation are the stated occurrences, about 0.55 of them per
// event, some names are malformed, time order is kept, and the shuffled
// archive holds the same events in another order.
func TestArchiveShape(t *testing.T) {
	o := ArchiveOptions{Conversations: 2000, Seed: 7}
	var ordered, shuffled bytes.Buffer
	st, err := WriteArchive(&ordered, o)
	if err != nil {
		t.Fatal(err)
	}
	o.Shuffle = true
	st2, err := WriteArchive(&shuffled, o)
	if err != nil {
		t.Fatal(err)
	}
	if st != st2 {
		t.Errorf("shuffled stats %+v, want those of the ordered archive %+v", st2, st)
	}
	if st.Bytes != int64(ordered.Len()) {
		t.Errorf("got Bytes %d, want %d written", st.Bytes, ordered.Len())
	}
	perEvent := float64(st.Occurrences) / float64(st.Events)
	if perEvent < 0.5 || perEvent > 0.6 {
		t.Errorf("got %.3f new occurrences per event, want ≈ 0.55", perEvent)
	}
	if perConv := float64(st.Events) / float64(o.Conversations); perConv < 5 || perConv > 6 {
		t.Errorf("got %.2f events per conversation, want ≈ 5.45", perConv)
	}

	keys := map[string]map[string]bool{}
	var last time.Time
	malformed := 0
	var lines []string
	err = genesys.Decode(bytes.NewReader(ordered.Bytes()), func(r genesys.Record) error {
		if r.Outcome != genesys.Accepted {
			t.Fatalf("record %d: got %v (%v), want accepted", r.Index, r.Outcome, r.Err)
		}
		if r.Event.EventTime.Before(last) && r.Index > 0 {
			// Duplicates are delivered later than their event time, so
			// only the first delivery of each step is ordered; a repeat
			// is at most a minute behind.
			if last.Sub(r.Event.EventTime) > time.Minute {
				t.Fatalf("record %d: event time %v more than a minute before %v", r.Index, r.Event.EventTime, last)
			}
		} else {
			last = r.Event.EventTime
		}
		occs, bad := genesys.Extract(r.Event)
		malformed += min(len(bad), 1)
		m := keys[r.Event.ConversationID]
		if m == nil {
			m = map[string]bool{}
			keys[r.Event.ConversationID] = m
		}
		for _, oc := range occs {
			m[oc.Key] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	distinct := 0
	for _, m := range keys {
		distinct += len(m)
	}
	if distinct != st.Occurrences || len(keys) != o.Conversations {
		t.Errorf("decoded %d occurrences over %d conversations, want %d over %d", distinct, len(keys), st.Occurrences, o.Conversations)
	}
	if malformed != st.MalformedEvents || malformed == 0 {
		t.Errorf("got %d events with a malformed name, want %d (> 0)", malformed, st.MalformedEvents)
	}
	lines = strings.SplitAfter(ordered.String(), "\n")
	other := strings.SplitAfter(shuffled.String(), "\n")
	if slices.Equal(lines, other) {
		t.Error("shuffled archive is in the same order")
	}
	slices.Sort(lines)
	slices.Sort(other)
	if !slices.Equal(lines, other) {
		t.Error("shuffled archive does not hold the same events")
	}
}

// The archive writes its envelopes by hand, for speed at millions of
// events; they must be the shape genesys.Envelope writes, field for field.
func TestArchiveEnvelopeIsTheEnvelope(t *testing.T) {
	var b bytes.Buffer
	if _, err := WriteArchive(&b, ArchiveOptions{Conversations: 20, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	for i, line := range bytes.Split(bytes.TrimSpace(b.Bytes()), []byte("\n"))[:10] {
		var got map[string]any
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		d := got["detail"].(map[string]any)
		body := d["eventBody"].(map[string]any)
		attrs := map[string]string{}
		for k, v := range body["attributes"].(map[string]any) {
			attrs[k] = v.(string)
		}
		ts, _ := time.Parse(time.RFC3339Nano, d["timestamp"].(string))
		e := genesys.Envelope{
			Conversation: body["conversationId"].(string), Participant: body["participantId"].(string),
			Time: ts, Attributes: attrs, ID: got["id"].(string),
			Communication: body["communications"].([]any)[0].(map[string]any)["id"].(string),
			CorrelationID: d["metadata"].(map[string]any)["CorrelationId"].(string),
		}
		var want map[string]any
		json.Unmarshal(e.JSON(), &want)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("event %d:\ngot  %s\nwant %s", i, line, e.JSON())
		}
	}
}
