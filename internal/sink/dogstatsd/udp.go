package dogstatsd

import (
	"fmt"
	"net"

	"github.com/DataDog/datadog-go/v5/statsd"
)

// newClient is statsd.New, except that for UDP the client writes through a
// udpConn the sink can ask for refusals; udp is nil otherwise.
func newClient(addr string, opts ...statsd.Option) (c *statsd.Client, udp *udpConn, err error) {
	if !isUDP(addr) {
		c, err = statsd.New(addr, opts...)
		return c, nil, err
	}
	if udp, err = dialUDP(addr); err != nil {
		return nil, nil, err
	}
	if c, err = statsd.NewWithWriter(udp, opts...); err != nil {
		udp.Close()
		return nil, nil, err
	}
	return c, udp, nil
}

// udpConn is the client's UDP transport: a connected socket, so that an
// Agent that is not listening shows up as an error rather than as silence.
//
// On a connected UDP socket the kernel turns the ICMP "port unreachable"
// that answers a datagram into a pending socket error. datadog-go v5 dials a
// connected socket too, but a pending error only surfaces on its next
// write: the last datagram of a batch (all of a small one) could go to
// nobody and Send still return nil, so the batch would be acknowledged and
// its keys marked delivered with nothing received. Send therefore reads the
// pending error (SO_ERROR) after each flush. To a loopback address (the
// Datadog Lambda Extension, a local Agent) the ICMP answer is generated
// during the write itself, so the check is exact there; to a remote Agent
// it sees only answers that arrived by then.
type udpConn struct {
	c *net.UDPConn
}

func dialUDP(addr string) (*udpConn, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		return nil, err
	}
	return &udpConn{c}, nil
}

func (u *udpConn) Write(b []byte) (int, error) { return u.c.Write(b) }
func (u *udpConn) Close() error                { return u.c.Close() }

// pendingError returns and clears the socket's pending error, e.g.
// "connection refused" for a datagram nobody received.
func (u *udpConn) pendingError() error {
	if u == nil {
		return nil
	}
	rc, err := u.c.SyscallConn()
	if err != nil {
		return err
	}
	var soErr error
	if err := rc.Control(func(fd uintptr) { soErr = socketError(fd) }); err != nil {
		return err
	}
	if soErr != nil {
		return fmt.Errorf("write udp %s: %w", u.c.RemoteAddr(), soErr)
	}
	return nil
}
