package lambda_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// fakeSQS is an SQS endpoint (the AWS JSON protocol the SDK speaks) that
// keeps the messages the function sends and counts the requests: it stands
// for the close queue, whose delivery the test plays itself.
type fakeSQS struct {
	mu       sync.Mutex
	requests int64
	bodies   []string
	delays   map[int32]int
	// onSend, when set, receives each message sent (outside the lock).
	onSend func(body string, delay int32)
}

func startFakeSQS(t *testing.T) (*fakeSQS, string) {
	q := &fakeSQS{delays: map[int32]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Amz-Target") != "AmazonSQS.SendMessageBatch" {
			http.Error(w, `{"__type":"InvalidAction"}`, http.StatusBadRequest)
			return
		}
		var in struct {
			Entries []struct {
				Id           string
				MessageBody  string
				DelaySeconds int32
			}
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, `{"__type":"MalformedInput"}`, http.StatusBadRequest)
			return
		}
		type ok struct{ Id, MessageId, MD5OfMessageBody string }
		var out struct {
			Successful []ok
			Failed     []struct{}
		}
		q.mu.Lock()
		q.requests++
		for _, e := range in.Entries {
			q.bodies = append(q.bodies, e.MessageBody)
			q.delays[e.DelaySeconds]++
			sum := md5.Sum([]byte(e.MessageBody))
			out.Successful = append(out.Successful, ok{e.Id, fmt.Sprint("m", len(q.bodies)), hex.EncodeToString(sum[:])})
		}
		onSend := q.onSend
		q.mu.Unlock()
		if onSend != nil {
			for _, e := range in.Entries {
				onSend(e.MessageBody, e.DelaySeconds)
			}
		}
		out.Failed = []struct{}{}
		w.Header().Set("Content-Type", "application/x-amz-json-1.0")
		json.NewEncoder(w).Encode(out)
	}))
	t.Cleanup(srv.Close)
	return q, srv.URL
}

// indexMeter wraps the metering proxy: around each UpdateItem it reads the
// item's path index key (ps, pb) directly from dynalite, before and after,
// and counts the writes the index "paths" takes as DynamoDB bills them (an
// entry added or removed: one; moved: two). dynalite does not report index
// capacity. It is exact for one instance at a time, as the cost run is.
type indexMeter struct {
	mu     sync.Mutex
	writes int64
	db     *dynamodb.Client
	next   http.Handler
}

func (m *indexMeter) key(ctx context.Context, table, id string) string {
	out, err := m.db.GetItem(ctx, &dynamodb.GetItemInput{
		TableName: aws.String(table), ConsistentRead: aws.Bool(true),
		Key:                  map[string]types.AttributeValue{"id": &types.AttributeValueMemberS{Value: id}},
		ProjectionExpression: aws.String("ps, pb"),
	})
	if err != nil || out.Item == nil {
		return ""
	}
	ps, ok1 := out.Item["ps"].(*types.AttributeValueMemberS)
	pb, ok2 := out.Item["pb"].(*types.AttributeValueMemberN)
	if !ok1 || !ok2 {
		return ""
	}
	return ps.Value + "/" + pb.Value
}

func (m *indexMeter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-Amz-Target") != "DynamoDB_20120810.UpdateItem" {
		m.next.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	var in struct {
		TableName string
		Key       struct {
			ID struct{ S string } `json:"id"`
		}
	}
	json.Unmarshal(body, &in)
	before := m.key(r.Context(), in.TableName, in.Key.ID.S)
	m.next.ServeHTTP(w, r)
	after := m.key(r.Context(), in.TableName, in.Key.ID.S)
	n := int64(0)
	switch {
	case before == after:
	case before == "" || after == "":
		n = 1
	default:
		n = 2
	}
	m.mu.Lock()
	m.writes += n
	m.mu.Unlock()
}

func endEnvelope(conv string) string {
	return string(genesys.Envelope{Topic: genesys.TopicCustomerEnd, Conversation: conv, Time: time.Now()}.JSON())
}
