package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/config"
)

const healthHelp = `Asks a running serve's GET /healthz and exits 0 if it answers 200, else 1
with the reason. For a container's HEALTHCHECK or a script: the image has no
curl. The URL comes from -url, else from the config's http.listen (an
unspecified address such as 0.0.0.0 is asked on loopback) and http.tls
(https; the certificate is not verified, as /healthz sends and receives no
secret).`

func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("health", "[flags]", healthHelp, "")
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "serve's YAML config file, for http.listen and http.tls")
	target := fs.String("url", "", "the /healthz URL, overriding the config (e.g. http://127.0.0.1:8080/healthz)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fmt.Errorf("health: unexpected arguments %q", fs.Args()))
	}
	u := *target
	if u == "" {
		cfg, err := config.Load(*configPath)
		if err != nil {
			return usageError(err)
		}
		if err := cfg.HTTP.Validate(); err != nil {
			return usageError(err)
		}
		u = healthURL(cfg.HTTP)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return usageError(fmt.Errorf("health: %w", err))
	}
	resp, err := selfClient(0).Do(req)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	reason := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health: %s answered %s: %s", u, resp.Status, reason)
	}
	fmt.Fprintln(stdout, "ok", u)
	return nil
}

// healthURL is serve's /healthz as seen from the same machine.
func healthURL(h config.HTTP) string {
	return h.Scheme() + "://" + onLoopback(h.Listen) + "/healthz"
}

// selfClient is for serve's own address on this machine: no proxy, and
// a certificate that is not checked, since it names the public host, not
// loopback, and nothing secret is at stake between the two.
func selfClient(timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	return &http.Client{Timeout: timeout, Transport: tr}
}
