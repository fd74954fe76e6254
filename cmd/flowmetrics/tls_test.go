package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/tlscert/tlscerttest"
)

// TestServeTLSReloadsCertificate runs serve with http.tls on loopback: the
// ingest path and /metrics answer over HTTPS only, a replaced certificate
// and key are served from the next connection on by the same process, and
// `flowmetrics health` finds the server from the same config.
func TestServeTLSReloadsCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	first, second := tlscerttest.SelfSigned(t, "first"), tlscerttest.SelfSigned(t, "second")
	t0 := time.Now().Add(-time.Hour)
	tlscerttest.Write(t, certFile, first.Cert, t0)
	tlscerttest.Write(t, keyFile, first.Key, t0)
	addr := freeAddr(t)
	cfgFile := filepath.Join(dir, "flowmetrics.yaml")
	cfg := fmt.Sprintf("data_dir: %s\nhttp:\n  listen: %s\n  tls:\n    cert_file: %s\n    key_file: %s\npipeline:\n  flush_interval: 100ms\n",
		filepath.Join(dir, "data"), addr, certFile, keyFile)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	roots := x509.NewCertPool()
	roots.AddCert(first.Leaf)
	roots.AddCert(second.Leaf)
	// A new connection for every request, so each one sees the
	// certificate served at that moment.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		DisableKeepAlives: true,
	}}
	base := "https://" + addr

	stderr := &syncWriter{w: &bytes.Buffer{}}
	cmd := exec.Command(binary, "serve", "-config", cfgFile)
	cmd.Env = append(os.Environ(), "FLOWMETRICS_SECRET=tls-test-secret")
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	logOf := func() string {
		stderr.mu.Lock()
		defer stderr.mu.Unlock()
		return stderr.w.(*bytes.Buffer).String()
	}
	var up bool
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && !up; time.Sleep(50 * time.Millisecond) {
		if resp, err := client.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			up = resp.StatusCode == 200
		}
	}
	if !up {
		t.Fatalf("serve did not answer https://%s/healthz:\n%s", addr, logOf())
	}

	peer := func() string {
		t.Helper()
		resp, err := client.Get(base + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].Subject.CommonName
	}
	if got := peer(); got != "first" {
		t.Fatalf("served certificate: got %q, want first", got)
	}

	// Plain HTTP on the same port is not served.
	if resp, err := http.Post("http://"+addr+"/v1/events", "application/json", strings.NewReader("{}")); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP: got %s, want 400 (an HTTP request to an HTTPS server)", resp.Status)
		}
	}

	at := time.Now().UTC().Truncate(time.Second).Add(-time.Minute)
	ev := genesys.Envelope{Conversation: "c-tls", Participant: "p-1", Time: at, Attributes: map[string]string{"TLSFlowMetric_Secured(" + at.Format(time.RFC3339) + ")": "x"}}.DetailJSON()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/events", bytes.NewReader(ev))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Flowmetrics-Secret", "tls-test-secret")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(body), `"occurrences":1`) {
		t.Fatalf("POST /v1/events over HTTPS: got %s %s, want 202 with one occurrence", resp.Status, body)
	}

	// The certificate is replaced: the next connection gets the new one,
	// from the same process.
	tlscerttest.Write(t, certFile, second.Cert, t0.Add(time.Minute))
	tlscerttest.Write(t, keyFile, second.Key, t0.Add(time.Minute))
	if got := peer(); got != "second" {
		t.Fatalf("after replacing the files: got %q, want second", got)
	}
	if cmd.ProcessState != nil {
		t.Fatal("serve exited")
	}
	if !strings.Contains(logOf(), "certificate reloaded") {
		t.Errorf("log does not say the certificate was reloaded:\n%s", logOf())
	}

	// The count made over HTTPS is on /metrics, read with the secret.
	want := `genesys_flow_metric_total{flow="TLSFlow",metric="Secured"} 1`
	var metrics string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		req, _ := http.NewRequest(http.MethodGet, base+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer tls-test-secret")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if metrics = string(b); strings.Contains(metrics, want) {
			break
		}
	}
	if !strings.Contains(metrics, want) {
		t.Errorf("/metrics over HTTPS lacks %s", want)
	}

	// health reads the same config: https on the listen address.
	out, err := exec.Command(binary, "health", "-config", cfgFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok "+base+"/healthz") {
		t.Errorf("flowmetrics health -config: %v, %s", err, out)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("serve after SIGTERM: %v\n%s", err, logOf())
	}
}

func TestServeRefusesTLSFilesThatDoNotLoad(t *testing.T) {
	dir := t.TempDir()
	a, b := tlscerttest.SelfSigned(t, "a"), tlscerttest.SelfSigned(t, "b")
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	tlscerttest.Write(t, certFile, a.Cert, time.Now())
	tlscerttest.Write(t, keyFile, b.Key, time.Now())
	cfgFile := filepath.Join(dir, "flowmetrics.yaml")
	cfg := fmt.Sprintf("data_dir: %s\nhttp:\n  listen: %s\n  tls:\n    cert_file: %s\n    key_file: %s\n", filepath.Join(dir, "data"), freeAddr(t), certFile, keyFile)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "serve", "-config", cfgFile)
	done := make(chan struct{})
	time.AfterFunc(30*time.Second, func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
		}
	})
	out, err := cmd.CombinedOutput()
	close(done)
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "http.tls") {
		t.Errorf("got exit %d, %s; want 2 and an http.tls error", code, out)
	}
}

func TestHealth(t *testing.T) {
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "ingest refused: free disk below store.min_free_bytes", http.StatusServiceUnavailable)
	}))
	defer refusing.Close()
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "ok\n")
	}))
	defer healthy.Close()
	for _, tc := range []struct {
		name, url string
		code      int
		says      string
	}{
		{"healthy", healthy.URL + "/healthz", 0, "ok " + healthy.URL + "/healthz"},
		{"503 with the reason", refusing.URL + "/healthz", 1, "free disk below"},
		{"nothing listening", "http://" + freeAddr(t) + "/healthz", 1, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(binary, "health", "-url", tc.url, "-timeout", "5s").CombinedOutput()
			if code := exitCode(err); code != tc.code || !strings.Contains(string(out), tc.says) {
				t.Errorf("got exit %d, %q; want %d and %q", code, out, tc.code, tc.says)
			}
		})
	}
}

func TestHealthURL(t *testing.T) {
	for _, tc := range []struct {
		listen string
		tls    bool
		want   string
	}{
		{"127.0.0.1:8080", false, "http://127.0.0.1:8080/healthz"},
		{"0.0.0.0:8443", true, "https://127.0.0.1:8443/healthz"},
		{"[::]:9000", false, "http://[::1]:9000/healthz"},
		{":8080", false, "http://127.0.0.1:8080/healthz"},
		{"localhost:8080", false, "http://localhost:8080/healthz"},
	} {
		h := config.Default().HTTP
		h.Listen = tc.listen
		if tc.tls {
			h.TLS = &config.TLS{CertFile: "c", KeyFile: "k"}
		}
		if got := healthURL(h); got != tc.want {
			t.Errorf("%s (tls %v): got %s, want %s", tc.listen, tc.tls, got, tc.want)
		}
	}
}

// exitCode is a finished command's exit status (0 for no error).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
