package tlscert_test

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/tlscert"
	"github.com/flowmetrics/flowmetrics/internal/tlscert/tlscerttest"
)

// served is the certificate a TLS handshake on loopback gets from r.
func served(t *testing.T, r *tlscert.Reloader) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", r.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

func TestReloadsChangedFiles(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	a, b, c := tlscerttest.SelfSigned(t, "first"), tlscerttest.SelfSigned(t, "second"), tlscerttest.SelfSigned(t, "third")
	t0 := time.Now().Add(-time.Hour)
	tlscerttest.Write(t, certFile, a.Cert, t0)
	tlscerttest.Write(t, keyFile, a.Key, t0)
	r, err := tlscert.New(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := served(t, r); got != "first" {
		t.Fatalf("got %q, want first", got)
	}

	// Unchanged files: the same certificate.
	if got := served(t, r); got != "first" {
		t.Fatalf("unchanged files: got %q, want first", got)
	}

	// A rotation caught half-way: the new certificate beside the old key
	// does not load, and the previous pair goes on serving.
	tlscerttest.Write(t, certFile, b.Cert, t0.Add(time.Minute))
	if got := served(t, r); got != "first" {
		t.Fatalf("mismatched pair: got %q, want first still", got)
	}
	if r.Failures() != 1 {
		t.Errorf("failures: got %d, want 1", r.Failures())
	}
	// Asked again with the files unchanged, it does not try again.
	served(t, r)
	if r.Failures() != 1 {
		t.Errorf("failures after a second handshake: got %d, want still 1", r.Failures())
	}

	// The key follows: the new pair is served, without a restart.
	tlscerttest.Write(t, keyFile, b.Key, t0.Add(time.Minute))
	if got := served(t, r); got != "second" {
		t.Fatalf("rotated pair: got %q, want second", got)
	}

	// The files gone for a moment (a Secret volume swapping its link):
	// the pair in use stays.
	os.Remove(certFile)
	if got := served(t, r); got != "second" {
		t.Fatalf("certificate file missing: got %q, want second", got)
	}
	tlscerttest.Write(t, certFile, c.Cert, t0.Add(2*time.Minute))
	tlscerttest.Write(t, keyFile, c.Key, t0.Add(2*time.Minute))
	if got := served(t, r); got != "third" {
		t.Fatalf("after the files came back: got %q, want third", got)
	}
}

func TestNewRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	a, b := tlscerttest.SelfSigned(t, "a"), tlscerttest.SelfSigned(t, "b")
	for _, tc := range []struct {
		name      string
		cert, key []byte
	}{
		{"missing files", nil, nil},
		{"key of another certificate", a.Cert, b.Key},
		{"not PEM", []byte("not a certificate"), a.Key},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certFile, keyFile := filepath.Join(dir, tc.name+".crt"), filepath.Join(dir, tc.name+".key")
			if tc.cert != nil {
				tlscerttest.Write(t, certFile, tc.cert, time.Now())
				tlscerttest.Write(t, keyFile, tc.key, time.Now())
			}
			if _, err := tlscert.New(certFile, keyFile, nil); err == nil {
				t.Fatal("got no error")
			}
		})
	}
}
