package genesys

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// Outcome is what became of one input record.
type Outcome int

const (
	// Accepted: an attributes or customer.end event; Record.Event holds it.
	Accepted Outcome = iota
	// Skipped: an event of another topic. Not an error; only counted.
	Skipped
	// Rejected: the record can never be used; Record.Err says why.
	Rejected
)

func (o Outcome) String() string {
	switch o {
	case Accepted:
		return "accepted"
	case Skipped:
		return "skipped"
	case Rejected:
		return "rejected"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Record is one input record and what became of it.
type Record struct {
	// Index is the 0-based ordinal of the record in the input.
	Index int
	// Line is the 1-based line where the record starts; 0 if unknown.
	Line    int
	Outcome Outcome
	// Event is set when Accepted.
	Event *Event
	// Topic is the event's topic when known. For an accepted record it
	// shares the event's allocation (see Event).
	Topic string
	// Err is set when Rejected. It wraps one of the Err… values below, so
	// callers can count rejections by reason with errors.Is.
	Err error
}

// The reasons a record is rejected. Record.Err wraps one of them, often with
// details after a colon.
var (
	ErrNotJSON          = errors.New("not JSON")
	ErrNotEvent         = errors.New("not an EventBridge event or detail object")
	ErrNoConversationID = errors.New("event without conversationId")
	ErrNoAttributes     = errors.New("attributes missing")
	ErrBadAttributes    = errors.New("attributes is not an object of strings")
	ErrTooLarge         = errors.New("record too large")
	ErrTooManyAttrs     = errors.New("too many attributes")
)

// MaxAttributes is the most attributes one event may carry; an event with
// more is rejected with ErrTooManyAttrs. Genesys participants carry tens of
// attributes; the bound keeps the work and memory one event can cost in
// proportion to what a real one needs.
const MaxAttributes = 10_000

// MaxRecordSize is the largest record Decode reads; a larger one is rejected
// with ErrTooLarge. It bounds the memory a single bad line can take.
const MaxRecordSize = 16 << 20

const (
	topicPrefix = "v2.detail.events.conversation."
	topicSuffix = ".attributes"
	endSuffix   = ".customer.end"
)

// isEndTopic reports whether topic is that of the customer.end events that
// close a conversation's path (v2.detail.events.conversation.{id}.customer.end).
func isEndTopic(topic []byte) bool {
	return len(topic) > len(topicPrefix)+len(endSuffix) &&
		string(topic[:len(topicPrefix)]) == topicPrefix &&
		string(topic[len(topic)-len(endSuffix):]) == endSuffix
}

// isAttributesTopic reports whether topic is that of AttributeUpdateEvents.
// It also matches the envelope's detail-type, whose id is literally "{id}".
func isAttributesTopic(topic []byte) bool {
	return len(topic) > len(topicPrefix)+len(topicSuffix) &&
		string(topic[:len(topicPrefix)]) == topicPrefix &&
		string(topic[len(topic)-len(topicSuffix):]) == topicSuffix
}

// kind names the JSON type of the value starting with c, for error messages.
func kind(c byte) string {
	switch c {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// body is what the parser keeps of an eventBody.
type body struct {
	conv, part     strRef
	convKind       byte // first byte of conversationId's value; 0 when absent
	partOK         bool
	eventTimeMs    int64
	eventTimeOK    bool
	attrsKind      byte // first byte of attributes' value; 0 when absent
	attrBadKind    byte // first byte of the first attribute value that is not a string
	attrBadKey     strRef
	attrLo, attrHi int // refs of the candidate metric names in parser.attrs
	attrCount      int // members of attributes, duplicates included
}

// detail is what the parser keeps of an object that may be an envelope's
// detail or a bare detail. The same reader serves the envelope itself, which
// may turn out to be a bare detail.
type detail struct {
	topic, detailType strRef
	topicKind         byte // 0 when absent
	detailTypeOK      bool
	bodyKind          byte // 0 when absent
	body              body
	// detailKind is the first byte of the "detail" member's value; it is
	// only read at the top level.
	detailKind byte
}

// object reads the members of the object at p.pos (its '{') into d. When top
// is true it also reads a "detail" object into inner.
func (p *parser) object(d *detail, top bool, inner *detail) bool {
	if !p.enter() {
		return false
	}
	p.pos++
	for first := true; ; first = false {
		key, end, ok := p.member(first)
		if !ok {
			return false
		}
		if end {
			return true
		}
		c, ok := p.peek()
		if !ok {
			return false
		}
		switch string(p.keyBytes(key)) {
		case "topicName":
			d.topicKind = c
			if c == '"' {
				d.topic, ok = p.scanString()
				if !ok {
					return false
				}
				continue
			}
		case "eventBody":
			d.bodyKind = c
			if c == '{' {
				d.body = body{}
				if !p.eventBody(&d.body) {
					return false
				}
				continue
			}
		case "detail-type":
			if top {
				d.detailTypeOK = c == '"'
				if d.detailTypeOK {
					if d.detailType, ok = p.scanString(); !ok {
						return false
					}
					continue
				}
			}
		case "detail":
			if top {
				d.detailKind = c
				if c == '{' {
					*inner = detail{}
					if !p.object(inner, false, nil) {
						return false
					}
					continue
				}
			}
		}
		if !p.skipValue() {
			return false
		}
	}
}

func (p *parser) eventBody(b *body) bool {
	if !p.enter() {
		return false
	}
	p.pos++
	for first := true; ; first = false {
		key, end, ok := p.member(first)
		if !ok {
			return false
		}
		if end {
			return true
		}
		c, ok := p.peek()
		if !ok {
			return false
		}
		switch string(p.keyBytes(key)) {
		case "conversationId":
			b.convKind = c
			if c == '"' {
				if b.conv, ok = p.scanString(); !ok {
					return false
				}
				continue
			}
		case "participantId":
			b.partOK = c == '"'
			if b.partOK {
				if b.part, ok = p.scanString(); !ok {
					return false
				}
				continue
			}
		case "eventTime":
			if c == '-' || isDigit(c) {
				start := p.pos
				if !p.scanNumber() {
					return false
				}
				b.eventTimeMs, b.eventTimeOK = parseInt(p.data[start:p.pos])
				continue
			}
			b.eventTimeOK = false
		case "attributes":
			b.attrsKind = c
			b.attrBadKind = 0
			if c == '{' {
				if !p.attributes(b) {
					return false
				}
				continue
			}
		}
		if !p.skipValue() {
			return false
		}
	}
}

func (p *parser) attributes(b *body) bool {
	if !p.enter() {
		return false
	}
	p.pos++
	b.attrLo, b.attrCount = len(p.attrs), 0
	for first := true; ; first = false {
		key, end, ok := p.member(first)
		if !ok {
			return false
		}
		if end {
			b.attrHi = len(p.attrs)
			return true
		}
		c, ok := p.peek()
		if !ok {
			return false
		}
		b.attrCount++
		if c == '"' {
			if _, ok := p.scanString(); !ok {
				return false
			}
			// Only a name holding the marker can be a metric attribute
			// (see ParseAttribute); an escaped one is looked at once
			// unescaped. Past the limit the event is rejected: validate
			// the rest, but keep nothing of it.
			if b.attrCount <= MaxAttributes && (key.flags&strEscaped != 0 || bytes.Contains(p.data[key.start:key.end], markerBytes)) {
				p.attrs = append(p.attrs, key)
			}
			continue
		}
		if b.attrBadKind == 0 {
			b.attrBadKind, b.attrBadKey = c, key
		}
		if !p.skipValue() {
			return false
		}
	}
}

// parseInt parses a JSON number that is an integer fitting in an int64.
func parseInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		// 18 digits always fit; longer ones are not plausible milliseconds.
		return 0, false
	}
	var n int64
	for _, c := range b {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}

// value reads one JSON value at p.pos and returns the record it makes. ok is
// false when the value is not JSON or incomplete (see parser); the record
// is then meaningless.
func (p *parser) value() (rec Record, ok bool) {
	c, ok := p.peek()
	if !ok {
		return rec, false
	}
	if c != '{' {
		if !p.skipValue() {
			return rec, false
		}
		// A number could go on in the next chunk of input.
		if p.pos == len(p.data) && !p.final && (c == '-' || isDigit(c)) {
			return rec, p.eof()
		}
		return reject(fmt.Errorf("%w: got %s", ErrNotEvent, kind(c))), true
	}
	var top, inner detail
	if !p.object(&top, true, &inner) {
		return rec, false
	}
	return p.build(&top, &inner), true
}

func reject(err error) Record { return Record{Outcome: Rejected, Err: err} }

// build makes the record of a parsed object.
func (p *parser) build(top, inner *detail) Record {
	d := top
	switch {
	case top.detailKind == '{':
		d = inner
	case top.detailKind != 0:
		return reject(fmt.Errorf("%w: detail is %s", ErrNotEvent, kind(top.detailKind)))
	case top.topicKind == 0 || top.bodyKind == 0:
		return reject(ErrNotEvent)
	}
	var topic strRef
	switch {
	case d.topicKind == '"':
		topic = d.topic
	case d.topicKind != 0:
		return reject(fmt.Errorf("%w: topicName is %s", ErrNotEvent, kind(d.topicKind)))
	case top.detailTypeOK:
		// An envelope whose detail lacks topicName: its detail-type names
		// the same topic, with "{id}" for the conversation.
		topic = top.detailType
	default:
		return reject(fmt.Errorf("%w: no topicName", ErrNotEvent))
	}
	var rec Record
	name := p.unquoted(topic)
	if isEndTopic(name) {
		return p.endEvent(d, string(name))
	}
	if !isAttributesTopic(name) {
		rec.Outcome, rec.Topic = Skipped, string(name)
		return rec
	}
	rec.Outcome = Rejected
	b := &d.body
	switch {
	case d.bodyKind == 0:
		rec.Err = fmt.Errorf("%w: no eventBody", ErrNoConversationID)
	case d.bodyKind != '{':
		rec.Err = fmt.Errorf("%w: eventBody is %s", ErrNoConversationID, kind(d.bodyKind))
	case b.convKind == 0:
		rec.Err = ErrNoConversationID
	case b.convKind != '"':
		rec.Err = fmt.Errorf("%w: conversationId is %s", ErrNoConversationID, kind(b.convKind))
	case b.conv.start == b.conv.end:
		rec.Err = fmt.Errorf("%w: conversationId is empty", ErrNoConversationID)
	case b.attrsKind == 0 || b.attrsKind == 'n':
		// An attributes event always carries every attribute of the
		// participant, so none at all means a producer or forwarder is not
		// sending what we think: say so rather than count nothing quietly.
		rec.Err = ErrNoAttributes
	case b.attrsKind != '{':
		rec.Err = fmt.Errorf("%w: got %s", ErrBadAttributes, kind(b.attrsKind))
	case b.attrBadKind != 0:
		rec.Err = fmt.Errorf("%w: %q is %s", ErrBadAttributes, truncate(p.str(b.attrBadKey), 100), kind(b.attrBadKind))
	case b.attrCount > MaxAttributes:
		rec.Err = fmt.Errorf("%w: %d, more than %d", ErrTooManyAttrs, b.attrCount, MaxAttributes)
	}
	if rec.Err != nil {
		rec.Topic = p.str(topic)
		return rec
	}
	rec.Outcome = Accepted
	rec.Event, rec.Topic = p.event(topic, b)
	return rec
}

// endEvent makes the record of a customer.end event: only its conversation
// id and time matter.
func (p *parser) endEvent(d *detail, topic string) Record {
	rec := Record{Outcome: Rejected, Topic: topic}
	b := &d.body
	switch {
	case d.bodyKind != '{':
		rec.Err = fmt.Errorf("%w: customer.end event without an eventBody object", ErrNoConversationID)
	case b.convKind != '"' || b.conv.start == b.conv.end:
		rec.Err = fmt.Errorf("%w: customer.end event", ErrNoConversationID)
	default:
		rec.Outcome = Accepted
		rec.Event = &Event{ConversationID: p.str(b.conv), Ended: true}
		if b.eventTimeOK {
			rec.Event.EventTime = time.UnixMilli(b.eventTimeMs).UTC()
		}
	}
	return rec
}

// event builds the Event of an accepted record, and returns its topic. The
// topic, the participant id and the metric names go into one string: an
// event is built per record at a high rate, and its strings live and die
// together. Names are sorted and a repeated one kept once, as a map keyed by
// name would keep it, so Extract needs neither a map nor a sort.
func (p *parser) event(topic strRef, b *body) (*Event, string) {
	ev := &Event{ConversationID: p.str(b.conv)}
	if b.eventTimeOK {
		ev.EventTime = time.UnixMilli(b.eventTimeMs).UTC()
	}
	arena := p.arena[:0]
	// ends[i] is where the i-th string ends in arena: the topic, the
	// participant id, then the names.
	var endsBuf [32]int
	ends := endsBuf[:0]
	arena = p.appendStr(arena, topic)
	ends = append(ends, len(arena))
	if b.partOK {
		arena = p.appendStr(arena, b.part)
	}
	ends = append(ends, len(arena))
	for _, r := range p.attrs[b.attrLo:b.attrHi] {
		start := len(arena)
		arena = p.appendKey(arena, r)
		if r.flags&strEscaped != 0 && !bytes.Contains(arena[start:], markerBytes) {
			arena = arena[:start]
			continue
		}
		ends = append(ends, len(arena))
	}
	p.arena = arena
	s := string(arena)
	ev.ParticipantID = s[ends[0]:ends[1]]
	if n := len(ends) - 2; n > 0 {
		names := make([]string, n)
		for i := range names {
			names[i] = s[ends[i+1]:ends[i+2]]
		}
		slices.Sort(names)
		ev.MetricNames = slices.Clip(slices.Compact(names))
	}
	return ev, s[:ends[0]]
}

// truncate shortens s to at most n bytes, on a rune boundary, for messages.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// DecodeValue decodes one JSON value that is an EventBridge envelope or a
// bare detail object (topicName and eventBody). The record's Index and Line
// are zero. Syntax errors name the byte offset in data.
func DecodeValue(data []byte) Record {
	var p parser
	p.reset(data, true)
	rec, ok := p.value()
	if ok {
		p.skipWS()
		if p.pos < len(data) {
			ok = p.fail(p.pos, "invalid character "+describe(data[p.pos])+" after top-level value")
		}
	}
	if !ok {
		return reject(fmt.Errorf("%w: %s at offset %d", ErrNotJSON, p.errMsg, p.errOff))
	}
	return rec
}
