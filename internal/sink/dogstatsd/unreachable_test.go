package dogstatsd

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
)

// closedUDPPort returns a loopback address nothing listens on.
func closedUDPPort(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

// With nothing listening (no Lambda extension), every Send fails, even a
// batch of one datagram whose refusal only comes back after the write, so
// nothing is acknowledged that nobody received. Once an Agent listens, the
// same batch goes through.
func TestUDPNothingListening(t *testing.T) {
	addr := closedUDPPort(t)
	s, m := newSink(t, Config{Addr: addr}, naming.Config{})
	one := []flowmetrics.Point{pt("F", "M", 0, 1)}
	for i := 0; i < 3; i++ {
		err := s.Send(context.Background(), one)
		if err == nil || flowmetrics.IsPermanent(err) {
			t.Fatalf("send %d with nothing listening: got %v, want a retryable error", i, err)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("send %d: got %v, want connection refused", i, err)
		}
	}
	if got := testutil.ToFloat64(m.SinkFailures.WithLabelValues(Name, "write")); got != 3 {
		t.Errorf("failures write: got %v, want 3", got)
	}
	if got := s.Send(context.Background(), samplePoints()); got == nil {
		t.Error("a larger batch with nothing listening: got nil, want an error")
	}

	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	l := newListener(t, c, addr)
	if err := s.Send(context.Background(), one); err != nil {
		t.Fatalf("send once an Agent listens: %v", err)
	}
	if got := l.lines(t, 1); len(got) != 1 {
		t.Errorf("received %q, want one line", got)
	}
}
