// Package dynalitetest starts dynalite, a DynamoDB implementation on
// Node.js, for tests that need a real DynamoDB API.
//
// The server is found through the environment variable FLOWMETRICS_DYNALITE
// (the path of dynalite's cli.js or of its bin link) or as "dynalite" on
// PATH. Without it, tests are skipped with a message saying how to install
// it, except when CI is set, where they fail: CI must run them.
package dynalitetest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
)

// EnvEndpoint, when set, names a dynalite (or other DynamoDB) endpoint that
// is already running; Start then uses it instead of starting one. Child
// processes of multi-process tests get it this way.
const EnvEndpoint = "FLOWMETRICS_DYNAMODB_ENDPOINT"

// Server is a running dynalite.
type Server struct {
	Endpoint string
	Client   *dynamodb.Client
}

// Command returns the command that runs dynalite, or "" when there is none.
func Command() []string {
	if p := os.Getenv("FLOWMETRICS_DYNALITE"); p != "" {
		if strings.HasSuffix(p, ".js") {
			return []string{"node", p}
		}
		return []string{p}
	}
	if p, err := exec.LookPath("dynalite"); err == nil {
		return []string{p}
	}
	return nil
}

// Start starts dynalite on a free loopback port for the test and stops it
// when the test ends. It skips the test when dynalite is missing, unless CI
// is set.
func Start(t testing.TB) *Server {
	t.Helper()
	if ep := os.Getenv(EnvEndpoint); ep != "" {
		return &Server{Endpoint: ep, Client: NewClient(ep)}
	}
	cmdline := Command()
	if cmdline == nil {
		msg := "dynalite not found: install it with `npm install --prefix /tmp/dynalite dynalite@4` and set FLOWMETRICS_DYNALITE=/tmp/dynalite/node_modules/dynalite/cli.js (or put dynalite on PATH)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return startLocal(t, "dynalite", cmdline, func(port int) []string {
		return []string{"--host", "127.0.0.1", "--port", strconv.Itoa(port),
			"--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"}
	}, 15*time.Second, 50*time.Millisecond)
}

// startLocal runs cmdline plus the arguments that put it on a free loopback
// port, logging to a file of the test's, until the test ends, and waits up
// to wait (trying every poll) for a DynamoDB API to answer there.
func startLocal(t testing.TB, name string, cmdline []string, portArgs func(port int) []string, wait, poll time.Duration) *Server {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cmdline[0], append(cmdline[1:], portArgs(port)...)...)
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s (%s): %v", name, strings.Join(cmdline, " "), err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	ep := "http://127.0.0.1:" + strconv.Itoa(port)
	client := NewClient(ep)
	deadline := time.Now().Add(wait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.ListTables(ctx, &dynamodb.ListTablesInput{})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logPath)
			t.Fatalf("%s did not answer on %s within %v: %v\n%s", name, ep, wait, err, out)
		}
		time.Sleep(poll)
	}
	return &Server{Endpoint: ep, Client: client}
}

// NewClient returns a DynamoDB client for a local endpoint, with static
// credentials and no retries beyond the SDK's standard ones.
func NewClient(endpoint string) *dynamodb.Client {
	return dynamodb.New(dynamodb.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
	})
}

var tables atomic.Int64

// CreateTable creates a fresh on-demand table with the store's schema and
// returns its name.
func (s *Server) CreateTable(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("flowmetrics-%d-%d", os.Getpid(), tables.Add(1))
	if err := CreateTable(context.Background(), s.Client, name); err != nil {
		t.Fatal(err)
	}
	return name
}

// CreateTable creates the store's table: partition key "id" (S), on demand,
// with the path index "paths" (partition "ps" S, sort "pb" N, keys only),
// and waits until it is active.
func CreateTable(ctx context.Context, c *dynamodb.Client, name string) error {
	_, err := c.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName: aws.String(name),
		AttributeDefinitions: []types.AttributeDefinition{
			{AttributeName: aws.String("id"), AttributeType: types.ScalarAttributeTypeS},
			{AttributeName: aws.String("ps"), AttributeType: types.ScalarAttributeTypeS},
			{AttributeName: aws.String("pb"), AttributeType: types.ScalarAttributeTypeN},
		},
		KeySchema:   []types.KeySchemaElement{{AttributeName: aws.String("id"), KeyType: types.KeyTypeHash}},
		BillingMode: types.BillingModePayPerRequest,
		// The path index (see dynamostore's package doc), as
		// deploy/aws/template.yaml declares it.
		GlobalSecondaryIndexes: []types.GlobalSecondaryIndex{{
			IndexName: aws.String("paths"),
			KeySchema: []types.KeySchemaElement{
				{AttributeName: aws.String("ps"), KeyType: types.KeyTypeHash},
				{AttributeName: aws.String("pb"), KeyType: types.KeyTypeRange},
			},
			Projection: &types.Projection{ProjectionType: types.ProjectionTypeKeysOnly},
		}},
	})
	if err != nil {
		return fmt.Errorf("create table %s: %w", name, err)
	}
	for i := 0; i < 200; i++ {
		out, err := c.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(name)})
		if err == nil && out.Table.TableStatus == types.TableStatusActive {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("table %s did not become active", name)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
