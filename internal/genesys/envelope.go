package genesys

import (
	"encoding/json"
	"strconv"
	"time"
)

// The topics an Envelope can carry.
const (
	TopicAttributes  = "attributes"
	TopicCustomerEnd = "customer.end"
)

// Envelope is one Genesys Cloud conversation event as the Amazon
// EventBridge integration delivers it: the EventBridge envelope around the
// Genesys detail, every field in the shape and order EventBridge delivers
// it. It is the one place events are written (the corpus and demo
// generators, and the tests of every way in), so each producer writes the
// shape Decode reads. Empty fields take placeholder values.
type Envelope struct {
	// Topic is TopicAttributes (the default) or TopicCustomerEnd.
	Topic        string
	Conversation string
	Participant  string
	// Time is when it happened: the event body's eventTime (ms), the
	// detail's timestamp and, to the second, the envelope's time. Zero
	// leaves the three out, as an event without them arrives.
	Time time.Time
	// Attributes are the participant's whole attribute map (attributes
	// events only): each event carries every attribute, changed or not.
	Attributes map[string]string

	// ID is EventBridge's event id (default: from the conversation, topic
	// and time); a redelivery keeps it.
	ID string
	// Source is the partner event source,
	// aws.partner/genesys.com/cloud/<org id>/<integration name>.
	Source          string
	Account, Region string
	// Communication is the id of the participant's communication
	// (attributes events), Session the customer's session (customer.end),
	// CorrelationID the detail's metadata. Default: from the conversation.
	Communication, Session, CorrelationID string
}

// DefaultSource is the partner event source an Envelope names by default.
const DefaultSource = "aws.partner/genesys.com/cloud/7d1d0f2a-org/flowmetrics"

// JSON returns the whole EventBridge event, on one line.
func (e Envelope) JSON() []byte {
	e = e.withDefaults()
	b, _ := json.Marshal(envelopeJSON{
		Version: "0", ID: e.ID, DetailType: "v2.detail.events.conversation.{id}." + e.Topic,
		Source: e.Source, Account: e.Account, Time: e.format(time.RFC3339),
		Region: e.Region, Resources: []string{}, Detail: e.detail(),
	})
	return b
}

// DetailJSON returns the event's detail alone: the bare shape that
// POST /v1/events and replay accept too.
func (e Envelope) DetailJSON() []byte {
	b, _ := json.Marshal(e.withDefaults().detail())
	return b
}

func (e Envelope) withDefaults() Envelope {
	if e.Topic == "" {
		e.Topic = TopicAttributes
	}
	e.Time = e.Time.UTC()
	short := e.Conversation[:min(8, len(e.Conversation))]
	for _, d := range []struct {
		f   *string
		def string
	}{
		{&e.ID, e.Conversation + "-" + e.Topic + "-" + strconv.FormatInt(e.Time.UnixNano(), 16)},
		{&e.Source, DefaultSource}, {&e.Account, "123456789012"}, {&e.Region, "eu-west-1"},
		{&e.Communication, "c-" + short}, {&e.Session, "s-" + short}, {&e.CorrelationID, short},
	} {
		if *d.f == "" {
			*d.f = d.def
		}
	}
	return e
}

// format writes Time in layout, to the second or millisecond the layout
// has; "" for a zero Time.
func (e Envelope) format(layout string) string {
	if e.Time.IsZero() {
		return ""
	}
	return e.Time.Format(layout)
}

func (e Envelope) detail() detailJSON {
	var eventTime *int64
	if !e.Time.IsZero() {
		ms := e.Time.UnixMilli()
		eventTime = &ms
	}
	var body any
	if e.Topic == TopicCustomerEnd {
		body = endBodyJSON{
			EventTime: eventTime, ConversationID: e.Conversation, ParticipantID: e.Participant,
			SessionID: e.Session, MediaType: "VOICE", Direction: "INBOUND", DisconnectType: "CLIENT",
		}
	} else {
		attrs := e.Attributes
		if attrs == nil {
			attrs = map[string]string{}
		}
		body = attributesBodyJSON{
			EventTime: eventTime, ConversationID: e.Conversation, ParticipantID: e.Participant,
			Attributes: attrs, ConversationExternalContactIDs: []string{}, ConversationExternalOrganizationIDs: []string{},
			Communications: []communicationJSON{{ID: e.Communication, MediaType: "VOICE"}},
		}
	}
	return detailJSON{
		TopicName: "v2.detail.events.conversation." + e.Conversation + "." + e.Topic, Version: "2",
		EventBody: body, Metadata: map[string]string{"CorrelationId": e.CorrelationID},
		Timestamp: e.format("2006-01-02T15:04:05.000Z"),
	}
}

// The fields in the order EventBridge delivers them.
type envelopeJSON struct {
	Version    string     `json:"version"`
	ID         string     `json:"id"`
	DetailType string     `json:"detail-type"`
	Source     string     `json:"source"`
	Account    string     `json:"account"`
	Time       string     `json:"time,omitempty"`
	Region     string     `json:"region"`
	Resources  []string   `json:"resources"`
	Detail     detailJSON `json:"detail"`
}

type detailJSON struct {
	TopicName string            `json:"topicName"`
	Version   string            `json:"version"`
	EventBody any               `json:"eventBody"`
	Metadata  map[string]string `json:"metadata"`
	Timestamp string            `json:"timestamp,omitempty"`
}

type attributesBodyJSON struct {
	EventTime                           *int64              `json:"eventTime,omitempty"`
	ConversationID                      string              `json:"conversationId"`
	ParticipantID                       string              `json:"participantId"`
	Attributes                          map[string]string   `json:"attributes"`
	ConversationExternalContactIDs      []string            `json:"conversationExternalContactIds"`
	ConversationExternalOrganizationIDs []string            `json:"conversationExternalOrganizationIds"`
	Communications                      []communicationJSON `json:"communications"`
}

type communicationJSON struct {
	ID        string `json:"id"`
	MediaType string `json:"mediaType"`
}

type endBodyJSON struct {
	EventTime      *int64 `json:"eventTime,omitempty"`
	ConversationID string `json:"conversationId"`
	ParticipantID  string `json:"participantId"`
	SessionID      string `json:"sessionId"`
	MediaType      string `json:"mediaType"`
	Direction      string `json:"direction"`
	DisconnectType string `json:"disconnectType"`
}
