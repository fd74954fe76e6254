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
// When it comes from the decoder, ParticipantID and MetricNames share one
// backing allocation per event (with Record.Topic). Keeping any one of them
// keeps them all; use strings.Clone for what must outlive the event.
// ConversationID has its own allocation, because stores keep it for days.
// Extract already returns copies.
type Event struct {
	ConversationID string
	ParticipantID  string
	// EventTime is eventBody.eventTime, in UTC; zero when absent or not an
	// integer number of milliseconds.
	EventTime time.Time
	// MetricNames holds the names of the participant's Participant Data
	// attributes (changed or not: Genesys sends them all) that contain
	// "Metric_", the only ones that can be metric attributes (see
	// ParseAttribute); nothing else of the attributes is kept, and no
	// value. The decoder gives each name once, in byte order, as a JSON
	// object that repeats a name has it once; Extract takes any order and
	// repetition. Names keep their bytes: invalid UTF-8 is not replaced.
	MetricNames []string
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
// Key, and its malformed metric attributes, sorted by Name. A name repeated
// in ev.MetricNames counts once; names without the metric shape are left out
// of both. Sorting makes the output independent of the order of the input,
// so a replay gives the same claims in the same order every time.
//
// The returned strings do not share memory with ev, since occurrences end up
// in stores and caches that would otherwise keep each event's strings alive.
// The occurrences of one call share one allocation among themselves.
func Extract(ev *Event) ([]flowmetrics.Occurrence, []Malformed) {
	return ExtractNames(ev.MetricNames)
}

// ExtractNames is Extract of an event whose metric names are names: some
// of an event's MetricNames (those a caller does not know yet), in any
// order.
func ExtractNames(names []string) ([]flowmetrics.Occurrence, []Malformed) {
	return extractNames(names, nil)
}

// NameMemo extracts the occurrences of the events of one batch, and
// remembers each well-formed name it parsed with its occurrence. An event
// carries every metric attribute its participant has set so far, so the
// events of a batch (replay's thousands) repeat one another's names: a name
// seen before costs a map lookup, not a parse and a copy. Occurrences of
// different events may then share their strings.
//
// It also remembers, from batch to batch, the name of each well-formed
// name it parsed: the flow, "Metric_" and the metric, everything before
// the time's "(". Names are few (a flow metric is a series in every sink,
// which the cardinality guard bounds) and their times many: a name whose
// name is remembered has only its time parsed, and its occurrence's Flow
// and Metric are the memo's one copy of them, shared with every other
// occurrence of that pair. Its Key is still its own copy.
//
// The zero value is ready. A NameMemo is for one goroutine; Reset empties it
// for the next batch.
//
// The occurrences of the events of a batch are cut from a few large
// slices rather than allocated an event at a time; each event's has its
// own capacity, so appending to one never reaches another's.
//
// A batch whose events share few names (a shuffled archive's seldom share
// a conversation) would pay a map lookup and insert per name for nothing:
// once memoTrial names were looked up and fewer than one in memoFew found,
// the memo stops looking names up and remembering them until Reset, and
// the next memoRest large batches do not look them up at all. (A
// name not found costs about what one found saves, since its flow and
// metric are remembered anyway: half must be found. A time-ordered
// archive's batches find about two thirds in their first memoTrial names
// and three quarters in all; a shuffled one's, a few in a hundred.)
// Remembering whole names at all is for large batches: a batch is taken
// as a small one (a serve request's few events seldom repeat one another)
// until Batch says otherwise.
type NameMemo struct {
	seen map[string]flowmetrics.Occurrence
	room []flowmetrics.Occurrence // the slice occurrences are cut from
	// Names looked up in seen since Reset, and found there.
	looked, found int
	// large: the batch is a large one (Batch), whose occurrences are cut
	// from room; lookup: its whole names are looked up and remembered in
	// seen. rest is how many large batches are left that do not look
	// them up, after one that found too few.
	large, lookup bool
	rest          int
	// pairs holds the flow and metric of each remembered name (a copy of
	// the name, which they are cut from), across batches; pairBytes is
	// what they hold, bounded by memoPairBytes.
	pairs     map[string]memoPair
	pairBytes int
	// recent holds pairs found last, each in a place chosen by its
	// name's length and a few of its bytes (pairPlace): a name of a
	// pair there costs a comparison with it, not a hash and a map
	// lookup. A batch's names are of a few dozen pairs.
	recent [128]memoPair
}

// memoPair is a remembered name (flow, "Metric_", metric) and its pair,
// which are cut from it.
type memoPair struct {
	name string
	pr   flowmetrics.Pair
}

const (
	memoTrial = 1024
	memoFew   = 2
	memoRest  = 7
	// memoPairBytes bounds what a NameMemo's names hold (a name costs its
	// bytes and memoPairCost), so that a flood of distinct names cannot
	// grow it: past the bound, it forgets them all and starts again.
	memoPairBytes = 256 << 10
	memoPairCost  = 64
)

// useful reports whether the memo still looks names up.
func (m *NameMemo) useful() bool {
	return m.lookup && (m.looked < memoTrial || m.found*memoFew >= m.looked)
}

// memoRoom is how many occurrences a NameMemo allocates room for at once.
const memoRoom = 1024

// Batch tells the memo that the events until Reset are a large batch,
// which repeat one another's names (replay's thousands): it remembers
// their whole names, and cuts their occurrences from a few large slices.
func (m *NameMemo) Batch() {
	m.large = true
	if m.rest > 0 {
		m.rest--
		return
	}
	m.lookup = true
}

// Extract is ExtractNames, with the names the memo has seen taken from it.
func (m *NameMemo) Extract(names []string) ([]flowmetrics.Occurrence, []Malformed) {
	if m.seen == nil {
		m.seen = make(map[string]flowmetrics.Occurrence)
		m.pairs = make(map[string]memoPair)
	}
	return extractNames(names, m)
}

// ParseName is ParseAttribute for a caller that needs only a well-formed
// name's parts (a.Flow and a.Metric may then be the memo's copies, shared
// by every name of their pair, not substrings of name). A name whose flow
// and metric the memo remembers has only its time parsed, as in Extract;
// any other is parsed whole, and its parts are remembered when it is
// well-formed.
func (m *NameMemo) ParseName(name string) (a Attribute, ok bool) {
	if m.pairs == nil {
		m.pairs = make(map[string]memoPair)
	}
	if open := lastOpen(name); open > 0 && name[len(name)-1] == ')' {
		if pr, ok := m.pair(name[:open]); ok {
			if t, err := parseTime(name[open+1 : len(name)-1]); err == nil {
				return Attribute{Flow: pr.Flow, Metric: pr.Metric, Time: t}, true
			}
		}
	}
	a, ok, _ = ParseAttribute(name)
	if !ok {
		return Attribute{}, false
	}
	pr := m.remember(a)
	a.Flow, a.Metric = pr.Flow, pr.Metric
	return a, true
}

// Reset forgets every whole name, keeping the memo's map, and the batch
// is a small one again; the names of pairs stay, and whether the batch
// found too few whole names. The slice occurrences
// were cut from is left to them: a batch's occurrences outlive its
// preparing.
func (m *NameMemo) Reset() {
	if m.lookup && !m.useful() {
		m.rest = memoRest
	}
	clear(m.seen)
	m.room = nil
	m.looked, m.found = 0, 0
	m.large, m.lookup = false, false
}

// remember keeps the flow and metric of a, the parts of a well-formed
// name, under its name (flow, "Metric_", metric), and returns the
// memo's copies of them.
func (m *NameMemo) remember(a Attribute) flowmetrics.Pair {
	n := len(a.Flow) + len(marker) + len(a.Metric)
	if m.pairBytes+n+memoPairCost > memoPairBytes {
		clear(m.pairs)
		m.recent = [len(m.recent)]memoPair{}
		m.pairBytes = 0
	}
	name := a.Flow + marker + a.Metric
	p := flowmetrics.Pair{Flow: name[:len(a.Flow)], Metric: name[len(a.Flow)+len(marker):]}
	m.pairs[name] = memoPair{name, p}
	m.pairBytes += n + memoPairCost
	return p
}

// pair returns the pair of a remembered name (everything of a metric
// name before the time's "("), first from recent, else from pairs, then
// kept in recent.
func (m *NameMemo) pair(name string) (flowmetrics.Pair, bool) {
	r := &m.recent[pairPlace(name)]
	if r.name == name && name != "" {
		return r.pr, true
	}
	mp, ok := m.pairs[name]
	if ok {
		*r = mp
	}
	return mp.pr, ok
}

// pairPlace is the place in NameMemo.recent of a name: mixed from its
// length and its first, middle and last bytes, which tell apart most
// names of different flows or metrics.
func pairPlace(name string) int {
	h := uint64(len(name))
	if len(name) > 0 {
		h |= uint64(name[0])<<16 | uint64(name[len(name)/2])<<24 | uint64(name[len(name)-1])<<32
		if len(name) > 1 {
			h |= uint64(name[len(name)-2]) << 40
		}
	}
	return int(h * 0x9e3779b97f4a7c15 >> 57) // 128 places
}

// cut returns an empty slice with room for n occurrences.
func (m *NameMemo) cut(n int) []flowmetrics.Occurrence {
	if m == nil || !m.large || n > memoRoom/4 {
		return make([]flowmetrics.Occurrence, 0, n)
	}
	if cap(m.room)-len(m.room) < n {
		m.room = make([]flowmetrics.Occurrence, 0, memoRoom)
	}
	l := len(m.room)
	return m.room[l : l : l+n]
}

// keep takes occs, cut(n) and filled, out of the room, and returns them
// with no room to grow into the next event's.
func (m *NameMemo) keep(occs []flowmetrics.Occurrence, n int) []flowmetrics.Occurrence {
	if m != nil && m.large && n <= memoRoom/4 {
		m.room = m.room[:len(m.room)+len(occs)]
	}
	return occs[:len(occs):len(occs)]
}

// extractNames is ExtractNames; with m not nil, a name m has seen is not
// parsed again, the well-formed names parsed are added to it, and the
// occurrences are cut from its room.
func extractNames(names []string, m *NameMemo) ([]flowmetrics.Occurrence, []Malformed) {
	if !sortedUnique(names) {
		// Not from the decoder, which gives them sorted: a copy, so the
		// caller's slice stays as it was.
		names = slices.Compact(slices.Sorted(slices.Values(names)))
	}
	var seen map[string]flowmetrics.Occurrence
	if m != nil && m.useful() {
		seen = m.seen
		m.looked += len(names)
	}
	var occs []flowmetrics.Occurrence
	size := 0
	// The places in occs of the occurrences parsed here (not seen), whose
	// strings still point into names.
	var parsedBuf [16]int
	parsed := parsedBuf[:0]
	var bad []Malformed
	for _, name := range names {
		if o, ok := seen[name]; ok {
			m.found++
			if occs == nil {
				occs = m.cut(len(names))
			}
			occs = append(occs, o)
			continue
		}
		// A name whose pair the memo remembers, well-formed if its time
		// is: the rules before the time's are the name's (its bytes
		// before the last "("), and a time that parses is printable
		// ASCII, so ParseAttribute would find the same.
		if open := lastOpen(name); m != nil && open > 0 && name[len(name)-1] == ')' {
			if pr, ok := m.pair(name[:open]); ok {
				if t, err := parseTime(name[open+1 : len(name)-1]); err == nil {
					if occs == nil {
						occs = m.cut(len(names))
					}
					parsed = append(parsed, len(occs))
					occs = append(occs, flowmetrics.Occurrence{Key: name, Flow: pr.Flow, Metric: pr.Metric, Time: t})
					size += len(name)
					continue
				}
			}
		}
		a, ok, err := ParseAttribute(name)
		switch {
		case ok:
			if occs == nil {
				occs = m.cut(len(names))
			}
			if m != nil {
				pr := m.remember(a)
				a.Flow, a.Metric = pr.Flow, pr.Metric
			}
			// Key (and, without a memo, Flow and Metric) point into
			// names until copied below.
			parsed = append(parsed, len(occs))
			occs = append(occs, flowmetrics.Occurrence{Key: name, Flow: a.Flow, Metric: a.Metric, Time: a.Time})
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
	// Cutting can change the order of two long names that share their
	// first MaxShownName bytes.
	slices.SortStableFunc(bad, func(x, y Malformed) int { return strings.Compare(x.Name, y.Name) })
	if len(occs) == 0 {
		return nil, bad
	}
	if len(parsed) == 0 {
		return m.keep(occs, len(names)), bad
	}

	// One copy of every key parsed; without a memo, Flow and Metric are
	// substrings of the key, so slice the copy at the same places.
	var sb strings.Builder
	sb.Grow(size)
	for _, i := range parsed {
		sb.WriteString(occs[i].Key)
	}
	all := sb.String()
	for _, i := range parsed {
		o := &occs[i]
		key := all[:len(o.Key)]
		all = all[len(o.Key):]
		o.Key = key
		if m == nil {
			metric := len(o.Flow) + len(marker)
			o.Flow, o.Metric = key[:len(o.Flow)], key[metric:metric+len(o.Metric)]
		}
		if seen != nil {
			seen[key] = *o
		}
	}
	return m.keep(occs, len(names)), bad
}

// lastOpen is strings.LastIndexByte(name, '('), which reads a byte at a
// time from the end: it looks first where the "(" before a time of the
// two usual forms and the closing ")" would be, and checks that no "("
// follows it.
func lastOpen(name string) int {
	for _, w := range [2]int{len("(2006-01-02T15:04:05.000Z)"), len("(2006-01-02T15:04:05Z)")} {
		if i := len(name) - w; i >= 0 && name[i] == '(' && strings.IndexByte(name[i+1:], '(') < 0 {
			return i
		}
	}
	return strings.LastIndexByte(name, '(')
}

// sortedUnique reports whether names are in strictly increasing order.
func sortedUnique(names []string) bool {
	for i := 1; i < len(names); i++ {
		if names[i-1] >= names[i] {
			return false
		}
	}
	return true
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
