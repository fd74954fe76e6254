package dogstatsd

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

var t0 = time.Date(2026, 11, 20, 9, 31, 50, 0, time.UTC)

func clock() time.Time { return t0 }

// clearClientEnv removes the environment variables the DogStatsD client
// turns into tags or addresses, so the lines are exactly ours.
func clearClientEnv(t *testing.T) {
	for _, v := range []string{"DD_ENV", "DD_SERVICE", "DD_VERSION", "DD_ENTITY_ID", "DD_EXTERNAL_ENV",
		"DD_CARDINALITY", "DATADOG_CARDINALITY", "DD_AGENT_HOST", "DD_DOGSTATSD_PORT", "DD_DOGSTATSD_URL"} {
		t.Setenv(v, "")
	}
}

func pt(flow, metric string, ago time.Duration, count int64) flowmetrics.Point {
	w := 10 * time.Second
	return flowmetrics.Point{Flow: flow, Metric: metric, Bucket: flowmetrics.BucketStart(t0.Add(-ago), w), Width: w, Count: count}
}

func samplePoints() []flowmetrics.Point {
	return []flowmetrics.Point{
		pt("CustomerRouting", "Unknown", 50*time.Second, 2),
		pt("Billing Main", "PaymentTaken", 60*time.Second, 4),
		pt("CustomerRouting", "Unknown", 45*time.Second, 1),
		pt("CustomerRouting", "Unknown", 40*time.Second, 1),
		pt("Gestión Pagos", "Pago-OK,|x", 30*time.Second, 1),
	}
}

// listener receives datagrams on UDP or a unixgram socket, reading them as
// they come, as an Agent does (a full socket buffer makes writes fail).
type listener struct {
	conn net.PacketConn
	addr string // for Config.Addr
	got  chan string
}

func newListener(t *testing.T, c net.PacketConn, addr string) *listener {
	l := &listener{c, addr, make(chan string, 100000)}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			k, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			for _, line := range strings.Split(strings.TrimRight(string(buf[:k]), "\n"), "\n") {
				l.got <- line
			}
		}
	}()
	return l
}

func listenUDP(t *testing.T) *listener {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return newListener(t, c, c.LocalAddr().String())
}

// socketPath is short: Unix socket paths are limited to about 100 bytes.
func socketPath(t *testing.T) string {
	dir, err := os.MkdirTemp("", "dsd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "dsd.socket")
}

func listenUnix(t *testing.T, path string) *listener {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	return newListener(t, c, "unix://"+path)
}

// lines reads datagrams until it has n lines or a second passes with
// nothing more, and returns the lines sorted.
func (l *listener) lines(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for len(out) < n {
		select {
		case line := <-l.got:
			out = append(out, line)
			continue
		case <-time.After(time.Second):
		}
		break
	}
	// Anything beyond n that is already there is a fault too.
	for more := true; more; {
		select {
		case line := <-l.got:
			out = append(out, line)
		case <-time.After(50 * time.Millisecond):
			more = false
		}
	}
	sort.Strings(out)
	return out
}

func newSink(t *testing.T, cfg Config, ncfg naming.Config) (*Sink, *telemetry.Metrics) {
	t.Helper()
	clearClientEnv(t)
	if cfg.Now == nil {
		cfg.Now = clock
	}
	m := telemetry.New()
	s, err := New(cfg, sink.Deps{Namer: naming.New(ncfg), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s, m
}

func TestDatagrams(t *testing.T) {
	tests := []struct {
		name      string
		transport string
		naming    naming.Config
		golden    string
	}{
		{"udp default name", "udp", naming.Config{Tags: map[string]string{"env": "prod", "team": "CX"}}, "default.golden.txt"},
		{"unix socket default name", "unix", naming.Config{Tags: map[string]string{"env": "prod", "team": "CX"}}, "default.golden.txt"},
		{"udp name template", "udp", naming.Config{Template: "genesys.{flow}.{metric}"}, "template.golden.txt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l *listener
			if tt.transport == "udp" {
				l = listenUDP(t)
			} else {
				l = listenUnix(t, socketPath(t))
			}
			s, _ := newSink(t, Config{Addr: l.addr}, tt.naming)
			if err := s.Send(context.Background(), samplePoints()); err != nil {
				t.Fatalf("Send: got %v, want nil", err)
			}
			golden.Check(t, filepath.Join("testdata", tt.golden), []byte(strings.Join(l.lines(t, 4), "\n")+"\n"))
		})
	}
}

// TestLineShape checks one line field by field, independent of the golden
// files: name, value, |c, |#tags, |T.
func TestLineShape(t *testing.T) {
	l := listenUDP(t)
	s, _ := newSink(t, Config{Addr: l.addr}, naming.Config{Tags: map[string]string{"env": "prod"}})
	p := pt("CustomerRouting", "Unknown", 0, 3)
	if err := s.Send(context.Background(), []flowmetrics.Point{p}); err != nil {
		t.Fatal(err)
	}
	got := l.lines(t, 1)
	if len(got) != 1 {
		t.Fatalf("got %d lines, want 1: %q", len(got), got)
	}
	fields := strings.Split(got[0], "|")
	want := []string{"genesys.flow.metric:3", "c", "#flow:customerrouting,metric:unknown,env:prod", "T1795167110"}
	if strings.Join(fields, " ") != strings.Join(want, " ") {
		t.Errorf("got fields %q, want %q", fields, want)
	}
	if ts := p.Bucket.Unix(); ts != 1795167110 {
		t.Errorf("bucket start: got %d, want 1795167110", ts)
	}
}

// TestTotalsAcrossSends: |T points bypass Agent aggregation and Datadog keeps
// the last value per series and second, so the second batch must carry the
// bucket's running total.
func TestTotalsAcrossSends(t *testing.T) {
	l := listenUDP(t)
	s, _ := newSink(t, Config{Addr: l.addr}, naming.Config{})
	ctx := context.Background()
	if err := s.Send(ctx, []flowmetrics.Point{pt("F", "M", 20*time.Second, 2)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(ctx, []flowmetrics.Point{pt("F", "M", 20*time.Second, 3)}); err != nil {
		t.Fatal(err)
	}
	got := l.lines(t, 2)
	want := []string{
		"genesys.flow.metric:2|c|#flow:f,metric:m|T1795167090",
		"genesys.flow.metric:5|c|#flow:f,metric:m|T1795167090",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestLatePolicy(t *testing.T) {
	points := []flowmetrics.Point{pt("F", "Old", 2*time.Hour, 3), pt("F", "Fresh", 0, 1)}
	lo := t0.Add(-datadog.MaxAge + datadog.Margin).Unix()
	tests := []struct {
		policy datadog.LatePolicy
		want   []string
		reason string
	}{
		{datadog.Clamp, []string{
			"genesys.flow.metric:1|c|#flow:f,metric:fresh|T1795167110",
			"genesys.flow.metric:3|c|#flow:f,metric:old|T" + itoa(lo),
		}, datadog.ReasonClampedLate},
		{datadog.Drop, []string{
			"genesys.flow.metric:1|c|#flow:f,metric:fresh|T1795167110",
		}, datadog.ReasonDroppedLate},
	}
	for _, tt := range tests {
		t.Run(string(tt.policy), func(t *testing.T) {
			l := listenUDP(t)
			s, m := newSink(t, Config{Addr: l.addr, LatePolicy: tt.policy}, naming.Config{})
			if err := s.Send(context.Background(), points); err != nil {
				t.Fatal(err)
			}
			if got := l.lines(t, len(tt.want)); strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if got := testutil.ToFloat64(m.PointsAdjusted.WithLabelValues(Name, tt.reason)); got != 1 {
				t.Errorf("points_adjusted{%s}: got %v, want 1", tt.reason, got)
			}
		})
	}
}

// TestSocketDownThenUp: with no Agent on the socket Send fails (retryable)
// and counts it; once the Agent is up the same Send delivers the same
// totals, once.
func TestSocketDownThenUp(t *testing.T) {
	path := socketPath(t)
	s, m := newSink(t, Config{Addr: "unix://" + path, WriteTimeout: 50 * time.Millisecond}, naming.Config{})
	points := []flowmetrics.Point{pt("F", "M", 0, 2), pt("F", "M", -time.Second, 1)} // one bucket
	err := s.Send(context.Background(), points)
	if err == nil || flowmetrics.IsPermanent(err) {
		t.Fatalf("Send with no Agent: got %v, want a retryable error", err)
	}
	if got := testutil.ToFloat64(m.SinkFailures.WithLabelValues(Name, "write")); got != 1 {
		t.Errorf("failures write: got %v, want 1", got)
	}
	l := listenUnix(t, path)
	if err := s.Send(context.Background(), points); err != nil {
		t.Fatalf("Send once the Agent is up: got %v, want nil", err)
	}
	want := []string{"genesys.flow.metric:3|c|#flow:f,metric:m|T1795167110"}
	if got := l.lines(t, 2); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestManyPointsAllArrive: more samples than the client's queues hold
// between flushes, none dropped.
func TestManyPointsAllArrive(t *testing.T) {
	l := listenUnix(t, socketPath(t))
	s, _ := newSink(t, Config{Addr: l.addr}, naming.Config{})
	var points []flowmetrics.Point
	for i := 0; i < 3000; i++ {
		points = append(points, pt("F", itoa(int64(i)), 0, 1))
	}
	if err := s.Send(context.Background(), points); err != nil {
		t.Fatal(err)
	}
	if got := len(l.lines(t, len(points))); got != len(points) {
		t.Errorf("got %d lines, want %d", got, len(points))
	}
}

func TestCloseTwice(t *testing.T) {
	l := listenUDP(t)
	s, _ := newSink(t, Config{Addr: l.addr}, naming.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ {
		if err := s.Close(ctx); err != nil {
			t.Errorf("Close %d: got %v, want nil", i, err)
		}
	}
	if err := s.Send(ctx, []flowmetrics.Point{pt("F", "M", 0, 1)}); err == nil {
		t.Error("Send after Close: got nil, want an error")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"zero value", Config{}, false},
		{"udp", Config{Addr: "127.0.0.1:8125"}, false},
		{"udp hostname", Config{Addr: "datadog-agent:8125"}, false},
		{"udp scheme", Config{Addr: "udp://127.0.0.1:8125"}, false},
		{"unix socket", Config{Addr: "unix:///var/run/datadog/dsd.socket"}, false},
		{"unixgram socket", Config{Addr: "unixgram:///var/run/datadog/dsd.socket"}, false},
		{"relative socket path", Config{Addr: "unix://dsd.socket"}, true},
		{"no port", Config{Addr: "127.0.0.1"}, true},
		{"bad port", Config{Addr: "127.0.0.1:0"}, true},
		{"late policy", Config{LatePolicy: "keep"}, true},
		{"datagram size", Config{MaxDatagramBytes: 70000}, true},
		{"count to the Agent", Config{Mode: datadog.Count, Receiver: Agent}, false},
		{"count to the Lambda Extension", Config{Mode: datadog.Count, Receiver: LambdaExtension}, true},
		{"default mode (count) to the Lambda Extension", Config{Receiver: LambdaExtension}, true},
		{"distribution to the Lambda Extension", Config{Mode: datadog.Distribution, Receiver: LambdaExtension}, false},
		{"unknown receiver", Config{Receiver: "statsd"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err != nil) != tt.wantErr {
				t.Errorf("got %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestDefaultAddr(t *testing.T) {
	tests := []struct {
		name, addr, agentHost, want string
	}{
		{"default", "", "", DefaultAddr},
		{"configured", "unix:///x/dsd.socket", "agent", "unix:///x/dsd.socket"},
		{"udp scheme stripped", "udp://10.0.0.1:8125", "", "10.0.0.1:8125"},
		{"left to the client's environment", "", "agent", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearClientEnv(t)
			t.Setenv("DD_AGENT_HOST", tt.agentHost)
			if got := (Config{Addr: tt.addr}).addr(); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
