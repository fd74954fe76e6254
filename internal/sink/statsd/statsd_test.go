package statsd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var t0 = time.Date(2026, 11, 20, 9, 31, 40, 0, time.UTC)

func pt(flow, metric string, n int64) flowmetrics.Point {
	return flowmetrics.Point{Flow: flow, Metric: metric, Bucket: t0, Width: 10 * time.Second, Count: n}
}

// samplePoints are the flows of the sample events, with the awkward names
// the flow contract allows (spaces, dots, dashes, non-ASCII).
var samplePoints = []flowmetrics.Point{
	pt("CustomerRouting", "Unknown", 3),
	pt("Customer Routing", "Transfer.To-Agent", 1),
	pt("Kundenzufriedenheit", "Größe", 2),
	pt("IVR:main|x@y", "a\nb", 1),
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"minimal", Config{Addr: "127.0.0.1:8125"}, ""},
		{"hostname", Config{Addr: "statsd.local:8125", TagStyle: "dogstatsd", MaxDatagram: 8932}, ""},
		{"no addr", Config{}, "addr: required"},
		{"no port", Config{Addr: "127.0.0.1"}, `addr "127.0.0.1"`},
		{"bad port", Config{Addr: "127.0.0.1:99999"}, "bad port"},
		{"no host", Config{Addr: ":8125"}, "host required"},
		{"tiny datagram", Config{Addr: "127.0.0.1:8125", MaxDatagram: 10}, "max_datagram"},
		{"huge datagram", Config{Addr: "127.0.0.1:8125", MaxDatagram: 70000}, "max_datagram"},
		{"bad style", Config{Addr: "127.0.0.1:8125", TagStyle: "influx"}, "tag_style"},
		{"bad prefix", Config{Addr: "127.0.0.1:8125", Prefix: "a:b"}, "prefix"},
		{"confirm wait", Config{Addr: "127.0.0.1:8125", ConfirmWait: 50 * time.Millisecond}, ""},
		{"confirm wait too short", Config{Addr: "127.0.0.1:8125", ConfirmWait: time.Microsecond}, "confirm_wait"},
		{"confirm wait too long", Config{Addr: "127.0.0.1:8125", ConfirmWait: 2 * time.Second}, "confirm_wait"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("got %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestGolden renders the sample points in each style; the golden files show
// what a daemon receives.
func TestGolden(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		naming naming.Config
	}{
		{"none", Config{}, naming.Config{Tags: map[string]string{"env": "prod"}}},
		{"none_prefix", Config{Prefix: "prod."}, naming.Config{}},
		{"none_template", Config{}, naming.Config{Template: "genesys.{flow}.{metric}"}},
		{"graphite", Config{TagStyle: TagStyleGraphite}, naming.Config{Tags: map[string]string{"env": "prod", "team": "cx ops"}}},
		{"dogstatsd", Config{TagStyle: TagStyleDogStatsD}, naming.Config{Tags: map[string]string{"env": "prod"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Addr = "127.0.0.1:8125"
			s, err := New(tt.cfg, sink.Deps{Namer: naming.New(tt.naming), Metrics: telemetry.New(), Log: quiet})
			if err != nil {
				t.Fatal(err)
			}
			var got strings.Builder
			for _, d := range s.Datagrams(samplePoints) {
				got.Write(d)
				got.WriteString("\n--\n")
			}
			golden.Check(t, filepath.Join("testdata", tt.name+".golden"), []byte(got.String()))
		})
	}
}

func TestSanitize(t *testing.T) {
	tests := []struct{ in, name, segment string }{
		{"genesys.flow.metric", "genesys.flow.metric", "genesys_flow_metric"},
		{"Customer Routing", "Customer_Routing", "Customer_Routing"},
		{"Größe", "Grosse", "Grosse"},
		{"Øresund", "Oresund", "Oresund"},
		{"Café-Flow", "Cafe-Flow", "Cafe-Flow"},
		{"a:b|c@d\ne;f=g#h,i/j", "a_b_c_d_e_f_g_h_i_j", "a_b_c_d_e_f_g_h_i_j"},
		{"", "_", "_"},
		{"日本", "__", "__"},
	}
	for _, tt := range tests {
		if got := sanitizeName(tt.in); got != tt.name {
			t.Errorf("sanitizeName(%q): got %q, want %q", tt.in, got, tt.name)
		}
		if got := sanitizeSegment(tt.in); got != tt.segment {
			t.Errorf("sanitizeSegment(%q): got %q, want %q", tt.in, got, tt.segment)
		}
	}
}

// listen starts a UDP listener on 127.0.0.1 and returns its address and a
// function that reads the datagrams that arrived within a short time.
func listen(t *testing.T) (string, func(n int) []string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no UDP on 127.0.0.1: %v", err)
	}
	t.Cleanup(func() { pc.Close() })
	read := func(n int) []string {
		var got []string
		buf := make([]byte, 70000)
		for len(got) < n {
			pc.SetReadDeadline(time.Now().Add(2 * time.Second))
			k, _, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("read datagram %d of %d: %v", len(got)+1, n, err)
			}
			got = append(got, string(buf[:k]))
		}
		// Nothing more should come.
		pc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if k, _, err := pc.ReadFrom(buf); err == nil {
			t.Errorf("got an extra datagram %q, want %d", buf[:k], n)
		}
		return got
	}
	return pc.LocalAddr().String(), read
}

func TestSendUDP(t *testing.T) {
	addr, read := listen(t)
	s, err := New(Config{Addr: addr}, sink.Deps{Namer: naming.New(naming.Config{}), Metrics: telemetry.New(), Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	pts := append(samplePoints, pt("CustomerRouting", "Unknown", 2), pt("Zero", "Count", 0))
	if err := s.Send(context.Background(), pts); err != nil {
		t.Fatalf("Send: got %v, want nil", err)
	}
	got := read(1)
	want := "genesys.flow.metric.CustomerRouting.Unknown:5|c\n" +
		"genesys.flow.metric.Customer_Routing.Transfer_To-Agent:1|c\n" +
		"genesys.flow.metric.Kundenzufriedenheit.Grosse:2|c\n" +
		"genesys.flow.metric.IVR_main_x_y.a_b:1|c"
	if got[0] != want {
		t.Errorf("got datagram\n%s\nwant\n%s", got[0], want)
	}
	if got := testutil.ToFloat64(s.m.PointsAdjusted.WithLabelValues(Name, "non_positive_count")); got != 1 {
		t.Errorf("got %v points adjusted, want 1", got)
	}
}

// TestSizeSplit checks that datagrams stay under the limit, that lines are
// never split across datagrams, and that every line arrives once.
func TestSizeSplit(t *testing.T) {
	tests := []struct {
		name     string
		max      int
		points   int
		wantDgms int
	}{
		// Each line is "genesys.flow.metric.FlowNN.M:1|c" = 32 bytes.
		{"one fits", 64, 1, 1},
		{"two fit exactly", 65, 2, 1}, // 32 + 1 + 32
		{"two need two", 64, 2, 2},
		{"default limit", DefaultMaxDatagram, 100, 3}, // 43 lines of 33 bytes per datagram
		{"line over limit goes alone", 64, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, read := listen(t)
			s, err := New(Config{Addr: addr, MaxDatagram: tt.max}, sink.Deps{Namer: naming.New(naming.Config{}), Metrics: telemetry.New(), Log: quiet})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(context.Background())
			var pts []flowmetrics.Point
			want := map[string]bool{}
			for i := 0; i < tt.points; i++ {
				p := pt("Flow"+twoDigits(i), "M", 1)
				pts = append(pts, p)
				want["genesys.flow.metric.Flow"+twoDigits(i)+".M:1|c"] = true
			}
			if tt.points == 0 {
				long := strings.Repeat("x", 100)
				pts = append(pts, pt(long, "M", 1))
				want["genesys.flow.metric."+long+".M:1|c"] = true
			}
			if err := s.Send(context.Background(), pts); err != nil {
				t.Fatalf("Send: got %v, want nil", err)
			}
			got := read(tt.wantDgms)
			seen := map[string]bool{}
			for _, d := range got {
				lines := strings.Split(d, "\n")
				if len(d) > tt.max && len(lines) > 1 {
					t.Errorf("got a %d-byte datagram of %d lines, want at most %d bytes", len(d), len(lines), tt.max)
				}
				for _, l := range lines {
					if !want[l] || seen[l] {
						t.Errorf("got line %q, unexpected or repeated", l)
					}
					seen[l] = true
				}
			}
			if len(seen) != len(want) {
				t.Errorf("got %d lines, want %d", len(seen), len(want))
			}
		})
	}
}

func twoDigits(i int) string { return string([]byte{'0' + byte(i/10), '0' + byte(i%10)}) }

// refusingConn stands for a daemon that takes budget datagrams and then
// dies: the next datagram is lost and the ICMP refusal shows on the read
// that confirms it.
type refusingConn struct {
	budget *int
	got    *[]string
	refuse bool
}

func (c *refusingConn) Write(b []byte) (int, error) {
	if *c.budget <= 0 {
		c.refuse = true
		return len(b), nil
	}
	*c.budget--
	*c.got = append(*c.got, string(b))
	return len(b), nil
}

func (c *refusingConn) Read([]byte) (int, error) {
	if c.refuse {
		c.refuse = false
		return 0, syscall.ECONNREFUSED
	}
	return 0, os.ErrDeadlineExceeded
}

func (*refusingConn) SetReadDeadline(time.Time) error { return nil }
func (*refusingConn) Close() error                    { return nil }

// TestResume checks that a batch failing half-way is not counted twice when
// the pipeline sends it again.
func TestResume(t *testing.T) {
	s, err := New(Config{Addr: "127.0.0.1:9", MaxDatagram: 64}, sink.Deps{Namer: naming.New(naming.Config{}), Metrics: telemetry.New(), Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	budget := 2
	s.dial = func() (conn, error) { return &refusingConn{budget: &budget, got: &got}, nil }
	pts := []flowmetrics.Point{pt("Flow00", "M", 1), pt("Flow01", "M", 1), pt("Flow02", "M", 1), pt("Flow03", "M", 1)}
	if err := s.Send(context.Background(), pts); err == nil {
		t.Fatal("Send: got nil, want an error after two datagrams")
	}
	if len(got) != 2 {
		t.Fatalf("got %d datagrams before the failure, want 2", len(got))
	}
	if n := testutil.ToFloat64(s.m.SinkFailures.WithLabelValues(Name, "refused")); n != 1 {
		t.Errorf("refusals counted: got %v, want 1", n)
	}
	budget = 100
	if err := s.Send(context.Background(), pts); err != nil {
		t.Fatalf("retry: got %v, want nil", err)
	}
	want := []string{
		"genesys.flow.metric.Flow00.M:1|c", "genesys.flow.metric.Flow01.M:1|c",
		"genesys.flow.metric.Flow02.M:1|c", "genesys.flow.metric.Flow03.M:1|c",
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("got %q, want %q", got, want)
	}
	// Sent again after success: a new batch, sent whole.
	if err := s.Send(context.Background(), pts); err != nil {
		t.Fatal(err)
	}
	if len(got) != 8 {
		t.Errorf("got %d datagrams, want 8", len(got))
	}
}

// TestDeadDaemonFailsBatch sends to a port of 127.0.0.1 where nothing
// listens: the kernel's ICMP refusal fails the send, every time, and is
// counted; nothing is reported delivered.
func TestDeadDaemonFailsBatch(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Skipf("no UDP on 127.0.0.1: %v", err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	s, err := New(Config{Addr: addr}, sink.Deps{Namer: naming.New(naming.Config{}), Metrics: telemetry.New(), Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	for i := 0; i < 3; i++ {
		err := s.Send(context.Background(), samplePoints)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("send %d to a dead daemon: got %v, want connection refused", i+1, err)
		}
	}
	if n := testutil.ToFloat64(s.m.SinkFailures.WithLabelValues(Name, "refused")); n != 3 {
		t.Errorf("refusals counted: got %v, want 3", n)
	}
}

func TestCloseTwice(t *testing.T) {
	addr, _ := listen(t)
	s, err := New(Config{Addr: addr}, sink.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), samplePoints[:1]); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("Close #%d: got %v, want nil", i+1, err)
		}
	}
	if err := s.Send(context.Background(), samplePoints[:1]); err == nil {
		t.Error("Send after Close: got nil, want error")
	}
	if got := s.Name(); got != "statsd" {
		t.Errorf("Name: got %q, want statsd", got)
	}
}
