package genesys

import (
	"reflect"
	"testing"
	"unsafe"

	"github.com/flowmetrics/flowmetrics"
)

func TestExtract(t *testing.T) {
	tests := []struct {
		name  string
		attrs map[string]string
		occs  []flowmetrics.Occurrence
		bad   []Malformed
	}{
		{name: "no attributes"},
		{name: "no metric attributes", attrs: map[string]string{"AccountID": "0-000000", "Language": "en-GB"}},
		{
			name: "mixed, sorted by key and name",
			attrs: map[string]string{
				"CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)": "1",
				"AccountID": "0-000000",
				"CustomerRoutingMetric_Transferred(2023-03-05T08:19:31.002Z)":    "",
				"Billing MainMetric_PaymentTaken(2023-03-05T09:20:12.880+01:00)": "x",
				"CustomerRoutingMetric_Oops(not-a-time)":                         "1",
				"Metric_NoFlow(2023-03-05T08:18:04Z)":                            "1",
			},
			occs: []flowmetrics.Occurrence{
				{Key: "Billing MainMetric_PaymentTaken(2023-03-05T09:20:12.880+01:00)", Flow: "Billing Main", Metric: "PaymentTaken", Time: utc("2023-03-05T08:20:12.880Z")},
				{Key: "CustomerRoutingMetric_Transferred(2023-03-05T08:19:31.002Z)", Flow: "CustomerRouting", Metric: "Transferred", Time: utc("2023-03-05T08:19:31.002Z")},
				{Key: "CustomerRoutingMetric_Unknown(2023-03-05T08:18:04.568Z)", Flow: "CustomerRouting", Metric: "Unknown", Time: utc("2023-03-05T08:18:04.568Z")},
			},
			bad: []Malformed{
				{Name: "CustomerRoutingMetric_Oops(not-a-time)", Flow: "CustomerRouting", Reason: errTimeLayout.Error()},
				{Name: "Metric_NoFlow(2023-03-05T08:18:04Z)", Flow: "", Reason: errEmptyFlow.Error()},
			},
		},
		{
			name:  "invalid UTF-8 flow is replaced",
			attrs: map[string]string{"F\xffMetric_A(2023-03-05T08:18:04Z)": ""},
			bad:   []Malformed{{Name: "F\xffMetric_A(2023-03-05T08:18:04Z)", Flow: "F\uFFFD", Reason: errInvalidUTF8.Error()}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			occs, bad := Extract(&Event{ConversationID: "c", Attributes: tt.attrs})
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
	for name, value := range rec.Event.Attributes {
		for _, s := range []string{occs[0].Key, occs[0].Flow, occs[0].Metric, bad[0].Name, bad[0].Flow} {
			if overlaps(s, name) || overlaps(s, value) {
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
