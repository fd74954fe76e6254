// Package tlscert serves a certificate and key from files and picks up a
// new pair without a restart: certbot, cert-manager or a Kubernetes Secret
// replace the files, and the next TLS handshake uses them.
package tlscert

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Reloader holds the pair last loaded from CertFile and KeyFile. Its
// GetCertificate looks at both files' modification time and size at each
// handshake (two stat calls) and loads them again when either changed. A
// pair that does not load (a rotation caught half-way: a new certificate
// beside the old key) leaves the previous one in use, and the next
// handshake tries again, so a rotation in progress never breaks serving.
type Reloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu       sync.Mutex
	cert     *tls.Certificate
	stamp    stamp  // the files as they were when cert was loaded
	failed   stamp  // the files as they were at the last failed load
	failures uint64 // loads that failed
}

// stamp is what says a file changed: its modification time and size, for
// the certificate and the key.
type stamp struct {
	certMod, keyMod   time.Time
	certSize, keySize int64
}

// New loads the pair once: an error here is a configuration error (missing
// file, a key that does not match the certificate). log may be nil.
func New(certFile, keyFile string, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, log: log}
	st, err := r.stat()
	if err != nil {
		return nil, err
	}
	if err := r.load(st); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Reloader) stat() (stamp, error) {
	c, err := os.Stat(r.certFile)
	if err != nil {
		return stamp{}, fmt.Errorf("tls certificate: %w", err)
	}
	k, err := os.Stat(r.keyFile)
	if err != nil {
		return stamp{}, fmt.Errorf("tls key: %w", err)
	}
	return stamp{certMod: c.ModTime(), keyMod: k.ModTime(), certSize: c.Size(), keySize: k.Size()}, nil
}

// load reads the pair; r.mu is held or r is not shared yet.
func (r *Reloader) load(st stamp) error {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("tls certificate %s, key %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.stamp = &cert, st
	return nil
}

// GetCertificate is for tls.Config.GetCertificate.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.stat()
	if err != nil || st == r.stamp || st == r.failed {
		// A file missing for a moment (replaced by rename) or unchanged
		// since the last try: the pair in use stays.
		return r.cert, nil
	}
	if err := r.load(st); err != nil {
		r.failed = st
		r.failures++
		r.log.Error("tls: the changed certificate files do not load; still serving the previous certificate", "err", err)
		return r.cert, nil
	}
	r.failed = stamp{}
	r.log.Info("tls: certificate reloaded", "cert_file", r.certFile, "not_after", notAfter(r.cert))
	return r.cert, nil
}

// Failures is how many times changed files failed to load.
func (r *Reloader) Failures() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failures
}

// Config is a server tls.Config serving r's certificate, TLS 1.2 at least,
// HTTP/2 or HTTP/1.1 (net/http serves HTTP/2 on a listener of *tls.Conn
// that offers h2).
func (r *Reloader) Config() *tls.Config {
	return &tls.Config{GetCertificate: r.GetCertificate, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
}

func notAfter(c *tls.Certificate) time.Time {
	if c.Leaf == nil {
		return time.Time{}
	}
	return c.Leaf.NotAfter
}
