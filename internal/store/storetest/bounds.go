package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
)

// refusals returns the reasons of err's RefusedError by request index.
func refusals(t *testing.T, err error) map[int]string {
	t.Helper()
	if err == nil {
		return nil
	}
	var re *flowmetrics.RefusedError
	if !errors.As(err, &re) {
		t.Fatalf("claim: %v, want only a *flowmetrics.RefusedError", err)
	}
	out := map[int]string{}
	for _, r := range re.Refusals {
		if r.Err == nil || !strings.Contains(r.Err.Error(), "conversation") {
			t.Errorf("refusal of request %d: %v does not name the conversation", r.Request, r.Err)
		}
		out[r.Request] = r.Reason
	}
	return out
}

// occs returns n occurrences with distinct keys; a long flow name makes
// them long (a 200-byte flow and metric give names of about 430 bytes).
func occs(flow string, from, n int) []flowmetrics.Occurrence {
	out := make([]flowmetrics.Occurrence, n)
	for i := range out {
		out[i] = Occ(flow, fmt.Sprintf("M%05d", from+i), t0)
		if len(flow) > 100 {
			out[i] = Occ(flow, fmt.Sprintf("%s%05d", flow[:194], from+i), t0)
		}
	}
	return out
}

// testConversationBounds: a conversation id longer than
// MaxConversationID, and new keys that would take a conversation past
// MaxConversationKeys or MaxConversationBytes, are refused (nothing of
// them claimed, the reason given), while the other requests of the same
// batch are claimed; what the conversation holds stays known.
func testConversationBounds(t *testing.T, h Harness) {
	ctx := context.Background()
	s := h.Open(t, store.Options{})
	// A registered sink: claims are then pending until delivered, which is
	// what a refused claim must not leave behind in a shared store.
	if err := s.Register(ctx, []string{"s"}); err != nil {
		t.Fatal(err)
	}
	a := Occ("F", "A", t0)

	longID := strings.Repeat("x", flowmetrics.MaxConversationID+1)
	got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req(longID, a), req("ok-1", a)})
	if r := refusals(t, err); r[0] != flowmetrics.RefusedIDTooLong || len(r) != 1 {
		t.Errorf("long id: refusals %v, want request 0 %s", r, flowmetrics.RefusedIDTooLong)
	}
	if !equalKeys(got, a) {
		t.Errorf("long id: claimed %q, want the other request's %q", keys(got), a.Key)
	}
	if got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req(strings.Repeat("y", flowmetrics.MaxConversationID), a)}); err != nil || len(got) != 1 {
		t.Errorf("id of exactly %d bytes: got %d new, err %v; want it claimed", flowmetrics.MaxConversationID, len(got), err)
	}

	// Fill one conversation to MaxConversationKeys, 100 keys a request.
	max := flowmetrics.MaxConversationKeys
	for from := 0; from < max; from += 100 {
		n := min(100, max-from)
		got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("full", occs("F", from, n)...)})
		if err != nil || len(got) != n {
			t.Fatalf("keys %d..%d: got %d new, err %v; want all new", from, from+n, len(got), err)
		}
	}
	more := occs("F", max, 2)
	got, err = s.Claim(ctx, []flowmetrics.ClaimRequest{
		req("ok-2", a),
		req("full", append(occs("F", 0, 3), more...)...),
		req("ok-3", a),
	})
	if r := refusals(t, err); r[1] != flowmetrics.RefusedConversation || len(r) != 1 {
		t.Errorf("past %d keys: refusals %v, want request 1 %s", max, r, flowmetrics.RefusedConversation)
	}
	if !equalKeys(got, a, a) {
		t.Errorf("past %d keys: claimed %q, want the two other requests' keys", max, keys(got))
	}
	// The conversation still holds exactly its keys: known ones are not
	// new, the refused ones were not kept and are refused again.
	if got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("full", occs("F", max-5, 5)...)}); err != nil || len(got) != 0 {
		t.Errorf("known keys of a full conversation: got %q, err %v; want nothing new, no error", keys(got), err)
	}
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("full", more[1])}); refusals(t, err)[0] != flowmetrics.RefusedConversation {
		t.Errorf("a refused key claimed again: err %v, want it refused again", err)
	}

	// A single request with more keys than a conversation may hold claims
	// nothing; the conversation takes a small one afterwards.
	got, err = s.Claim(ctx, []flowmetrics.ClaimRequest{req("flood", occs("F", 0, max+1)...)})
	if r := refusals(t, err); r[0] != flowmetrics.RefusedConversation || len(got) != 0 {
		t.Errorf("one request of %d keys: got %d new, refusals %v; want it refused", max+1, len(got), r)
	}
	if got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("flood", occs("F", 0, 1)...)}); err != nil || len(got) != 1 {
		t.Errorf("after a refused flood: got %d new, err %v; want the key claimed", len(got), err)
	}

	// Bytes: names of about 440 bytes reach MaxConversationBytes before
	// MaxConversationKeys.
	long := strings.Repeat("L", 200)
	per := len(occs(long, 0, 1)[0].Key)
	fit := flowmetrics.MaxConversationBytes / per
	if fit >= max {
		t.Fatalf("names of %d bytes: %d fit, not fewer than the key bound %d", per, fit, max)
	}
	for from := 0; from < fit; from += 100 {
		n := min(100, fit-from)
		if got, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("big", occs(long, from, n)...)}); err != nil || len(got) != n {
			t.Fatalf("long keys %d..%d: got %d new, err %v", from, from+n, len(got), err)
		}
	}
	if _, err := s.Claim(ctx, []flowmetrics.ClaimRequest{req("big", occs(long, fit, 1)...)}); refusals(t, err)[0] != flowmetrics.RefusedConversation {
		t.Errorf("past %d bytes: err %v, want %s", flowmetrics.MaxConversationBytes, err, flowmetrics.RefusedConversation)
	}

	// Refused claims are not in the outbox.
	n := 0
	for _, e := range readAll(t, s, 0) {
		for _, o := range e.Occurrences {
			if strings.HasPrefix(o.Key, "FMetric_M") && o.Time.Equal(t0) {
				n++
			}
		}
	}
	if want := max + 1; n != want {
		t.Errorf("outbox holds %d of the bounded conversations' keys, want %d (full + flood)", n, want)
	}
}
