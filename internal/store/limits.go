package store

import (
	"fmt"
	"sort"

	"github.com/flowmetrics/flowmetrics"
)

// Size is what one conversation's state holds: its keys and their total
// length in bytes.
type Size struct {
	Keys, Bytes int
}

// Plus returns the size after adding the keys of occs.
func (s Size) Plus(occs []flowmetrics.Occurrence) Size {
	for _, o := range occs {
		s.Keys++
		s.Bytes += len(o.Key)
	}
	return s
}

// Check reports, naming the conversation, when s is beyond
// flowmetrics.MaxConversationKeys or MaxConversationBytes.
func (s Size) Check(conv string) error {
	switch {
	case s.Keys > flowmetrics.MaxConversationKeys:
		return fmt.Errorf("conversation %q would hold %d metric attributes (max %d)", conv, s.Keys, flowmetrics.MaxConversationKeys)
	case s.Bytes > flowmetrics.MaxConversationBytes:
		return fmt.Errorf("conversation %q would hold %d bytes of metric attribute names (max %d)", conv, s.Bytes, flowmetrics.MaxConversationBytes)
	}
	return nil
}

// CheckID reports a conversation id longer than
// flowmetrics.MaxConversationID.
func CheckID(conv string) error {
	if len(conv) > flowmetrics.MaxConversationID {
		return fmt.Errorf("conversation id of %d bytes (max %d): %q…", len(conv), flowmetrics.MaxConversationID, conv[:32])
	}
	return nil
}

// Refusals collects the requests of one Claim call that can never succeed.
type Refusals struct {
	list []flowmetrics.Refusal
	seen map[int]bool
}

// Add records that request i is refused for reason (one of the
// flowmetrics.Refused… constants); a request is recorded once.
func (r *Refusals) Add(i int, reason string, err error) {
	if r.seen[i] {
		return
	}
	if r.seen == nil {
		r.seen = map[int]bool{}
	}
	r.seen[i] = true
	r.list = append(r.list, flowmetrics.Refusal{Request: i, Reason: reason, Err: err})
}

// Len returns how many requests are refused.
func (r *Refusals) Len() int { return len(r.list) }

// Has reports whether request i is refused.
func (r *Refusals) Has(i int) bool { return r.seen[i] }

// Err returns the *flowmetrics.RefusedError, or nil when nothing was
// refused.
func (r *Refusals) Err() error {
	if len(r.list) == 0 {
		return nil
	}
	sort.Slice(r.list, func(a, b int) bool { return r.list[a].Request < r.list[b].Request })
	return &flowmetrics.RefusedError{Refusals: r.list}
}
