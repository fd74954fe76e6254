package statsd

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/memstore"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// daemon is a real UDP listener on 127.0.0.1 that adds up the counters it
// receives and keeps every timer value (for its percentiles), as a StatsD
// daemon does within a flush interval. It can be stopped and started again
// on the same port.
type daemon struct {
	t    *testing.T
	port int

	mu       sync.Mutex
	sums     map[string]int64
	timers   map[string][]float64
	received int // datagrams
	conn     *net.UDPConn
	done     chan struct{}
}

func (d *daemon) start() {
	d.t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: d.port})
	if err != nil {
		d.t.Fatalf("start the daemon on port %d: %v", d.port, err)
	}
	d.port = c.LocalAddr().(*net.UDPAddr).Port
	d.conn, d.done = c, make(chan struct{})
	go func() {
		defer close(d.done)
		buf := make([]byte, 70000)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return // closed, or drained after stop
			}
			d.mu.Lock()
			d.received++
			for _, l := range strings.Split(string(buf[:n]), "\n") {
				name, rest, _ := strings.Cut(l, ":")
				v, typ, _ := strings.Cut(rest, "|")
				if typ, _, _ = strings.Cut(typ, "|"); typ == "ms" {
					ms, err := strconv.ParseFloat(v, 64)
					if err != nil {
						d.t.Errorf("daemon: bad timer %q", l)
					}
					if d.timers == nil {
						d.timers = map[string][]float64{}
					}
					d.timers[name] = append(d.timers[name], ms)
					continue
				}
				k, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					d.t.Errorf("daemon: bad line %q", l)
				}
				d.sums[name] += k
			}
			d.mu.Unlock()
		}
	}()
}

// stop stops the daemon without losing what reached it: the socket is first
// connected to another peer, so the kernel refuses new datagrams from the
// sink with ICMP "port unreachable" exactly as for a closed port, then the
// datagrams already queued are read, then the socket is closed. (A daemon
// that is killed loses its queue and its unflushed counters: that window is
// the daemon's, not the sink's.)
func (d *daemon) stop() {
	d.t.Helper()
	raw, err := d.conn.SyscallConn()
	if err != nil {
		d.t.Fatal(err)
	}
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cerr = syscall.Connect(int(fd), &syscall.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 2}})
	}); err != nil || cerr != nil {
		d.t.Fatalf("stop the daemon: %v %v", err, cerr)
	}
	d.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	<-d.done
	d.conn.Close()
}

func (d *daemon) snapshot() (map[string]int64, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]int64, len(d.sums))
	for k, v := range d.sums {
		out[k] = v
	}
	return out, d.received
}

// TestDaemonDownAndBack runs the pipeline into a real UDP daemon on
// 127.0.0.1 that is stopped for 1.5 s and started again while occurrences
// keep coming: what the daemon adds up, per series, equals what was
// counted. The refusals are counted, the batches retried.
func TestDaemonDownAndBack(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 4 s")
	}
	d := &daemon{t: t, sums: map[string]int64{}}
	d.start()
	m := telemetry.New()
	s, err := New(Config{Addr: fmt.Sprintf("127.0.0.1:%d", d.port)}, sink.Deps{Namer: naming.New(naming.Config{}), Metrics: m, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	p := pipeline.New(memstore.New(store.Options{}), []flowmetrics.Sink{s}, pipeline.Config{FlushInterval: 20 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond}, m, quiet)
	if err := p.Register(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.Start()

	want := map[string]int64{}
	var total int64
	var mu sync.Mutex
	stopFeed := make(chan struct{})
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		for i := 0; ; i++ {
			select {
			case <-stopFeed:
				return
			case <-time.After(5 * time.Millisecond):
			}
			var recs []genesys.Record
			var occ []string
			for j := 0; j < 4; j++ {
				n := i*4 + j
				at := t0.Add(time.Duration(n) * time.Second)
				flow, metric := fmt.Sprintf("Flow%d", n%3), fmt.Sprintf("M%d", n%5)
				names := []string{genesys.AttributeName(flow, metric, at)}
				rec := genesys.Record{Outcome: genesys.Accepted, Event: &genesys.Event{ConversationID: fmt.Sprintf("conv-%d", n), MetricNames: names}}
				recs = append(recs, rec, rec) // delivered twice, counted once
				occ = append(occ, "genesys.flow.metric."+flow+"."+metric)
			}
			res, err := p.Ingest(context.Background(), recs)
			if err != nil || res.Occurrences != len(occ) {
				t.Errorf("ingest: got %d occurrences, err %v; want %d", res.Occurrences, err, len(occ))
				return
			}
			mu.Lock()
			for _, k := range occ {
				want[k]++
				total++
			}
			mu.Unlock()
		}
	}()

	time.Sleep(time.Second)
	d.stop()
	_, before := d.snapshot()
	time.Sleep(1500 * time.Millisecond)
	refusedDuringOutage := testutil.ToFloat64(m.SinkFailures.WithLabelValues(Name, "refused"))
	d.start()
	time.Sleep(time.Second)
	close(stopFeed)
	<-fed

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Close(ctx); err != nil {
		t.Fatalf("close the pipeline: %v", err)
	}
	d.stop()
	got, datagrams := d.snapshot()

	var sum int64
	for _, v := range got {
		sum += v
	}
	t.Logf("%d occurrences counted, %d added up by the daemon in %d datagrams (%d before the outage); %v refusals during the 1.5 s outage, %v batches retried",
		total, sum, datagrams, before, refusedDuringOutage, testutil.ToFloat64(m.SinkBatchRetries.WithLabelValues(Name)))
	if sum != total {
		t.Errorf("daemon added up %d, want the %d occurrences counted (%+d)", sum, total, sum-total)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("series %s: got %d, want %d", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d series, want %d", len(got), len(want))
	}
	if refusedDuringOutage < 1 {
		t.Errorf("refusals counted during the outage: got %v, want at least 1", refusedDuringOutage)
	}
	if n := testutil.ToFloat64(m.SinkBatchFailures.WithLabelValues(Name, "error")); n < 1 {
		t.Errorf("failed batches counted: got %v, want at least 1", n)
	}
	if n := testutil.ToFloat64(m.SinkFailures.WithLabelValues(Name, "late_refusal")); n != 0 {
		t.Errorf("late refusals: got %v, want 0 on loopback", n)
	}
}
