package genesys

import (
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/flowmetrics/flowmetrics"
)

// Event is the part of an AttributeUpdateEvent that flowmetrics needs.
//
// When it comes from the decoder, ParticipantID and the keys and values of
// Attributes share one backing allocation per event (one allocation instead
// of forty for a typical event). Keeping any one of them keeps them all; use
// strings.Clone for what must outlive the event. ConversationID has its own
// allocation, because stores keep it for days. Extract already returns
// copies.
type Event struct {
	ConversationID string
	ParticipantID  string
	// EventTime is eventBody.eventTime, in UTC; zero when absent or not an
	// integer number of milliseconds.
	EventTime time.Time
	// Attributes holds every Participant Data attribute of the participant,
	// changed or not, as Genesys sends them.
	Attributes map[string]string
	// Ended: a customer.end event (the customer left the conversation),
	// which closes the conversation's path; it has no attributes.
	Ended bool
}

// Malformed is a metric-shaped attribute name that breaks a rule.
type Malformed struct {
	// Name is the attribute name, cut to MaxShownName bytes.
	Name string
	// Flow is the text before the first "Metric_", cut to MaxFlowLen
	// bytes and made valid UTF-8; it may be empty.
	Flow string
	// Reason says which rule the name breaks, in lower case.
	Reason string
	// Err is the rule's error; errors.Is(Err, ErrNameTooLong) tells a name
	// refused for its length.
	Err error
}

// MaxShownName bounds Malformed.Name, so a flood of huge bad names cannot
// make whoever lists them (logs, the dashboard) hold megabytes each.
const MaxShownName = 512

// Extract returns the well-formed metric occurrences of the event, sorted by
// Key, and its malformed metric attributes, sorted by Name. Attributes
// without the metric shape are left out of both. Sorting makes the output
// independent of map order, so a replay gives the same claims in the same
// order every time.
//
// The returned strings do not share memory with ev, since occurrences end up
// in stores and caches that would otherwise keep each event's attributes
// alive. The occurrences of one call share one allocation among themselves.
func Extract(ev *Event) ([]flowmetrics.Occurrence, []Malformed) {
	type found struct {
		name string
		a    Attribute
	}
	var buf [16]found
	good := buf[:0]
	size := 0
	var bad []Malformed
	for name := range ev.Attributes {
		a, ok, err := ParseAttribute(name)
		switch {
		case ok:
			good = append(good, found{name, a})
			size += len(name)
		case err != nil:
			m := Malformed{Name: strings.Clone(cut(name, MaxShownName)), Reason: err.Error(), Err: err}
			if strings.HasPrefix(name, a.Flow) {
				m.Flow = m.Name[:len(a.Flow)]
			} else {
				// Invalid UTF-8 was replaced: a.Flow is already a new string.
				m.Flow = a.Flow
			}
			bad = append(bad, m)
		}
	}
	slices.SortFunc(bad, func(x, y Malformed) int { return strings.Compare(x.Name, y.Name) })
	if len(good) == 0 {
		return nil, bad
	}

	var sb strings.Builder
	sb.Grow(size)
	for _, f := range good {
		sb.WriteString(f.name)
	}
	all := sb.String()
	occs := make([]flowmetrics.Occurrence, len(good))
	for i, f := range good {
		key := all[:len(f.name)]
		all = all[len(f.name):]
		// Flow and Metric are substrings of the name, so slice the copy at
		// the same places.
		metric := len(f.a.Flow) + len(marker)
		occs[i] = flowmetrics.Occurrence{
			Key:    key,
			Flow:   key[:len(f.a.Flow)],
			Metric: key[metric : metric+len(f.a.Metric)],
			Time:   f.a.Time,
		}
	}
	slices.SortFunc(occs, func(x, y flowmetrics.Occurrence) int { return strings.Compare(x.Key, y.Key) })
	return occs, bad
}

// cut shortens s to at most n bytes, on a rune boundary when s is UTF-8.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for i := n; i > n-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i]
		}
	}
	return s[:n]
}
