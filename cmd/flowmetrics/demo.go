package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/demo"
)

// demoBackfill is how far back the demo starts, so charts are not empty:
// just under Datadog's one-hour limit on point age, so a Datadog sink takes
// the backfilled points as they are.
const demoBackfill = 55 * time.Minute

// demoTick is how often the demo posts what became due.
const demoTick = 250 * time.Millisecond

const demoHelp = `Posts simulated Genesys Cloud traffic to a running serve, through its real
ingest path (POST /v1/events, with the shared secret when one is set):
five flows and a bot (CustomerRouting, Billing Main, Bot.Intent-Router,
Callback Offer with an A/B test, Après Vente) with a daily rhythm, a payment
incident every -incident-every that makes Billing Main/PaymentFailed spike,
a malformed attribute name in Après Vente, duplicate and late deliveries.
Attribute times are now (late deliveries carry older ones). It first
backfills the last -backfill, so the charts are not empty. With the same
-seed a restart posts the same conversations for the time the runs share
(same ids, same attribute names), so the target counts none of them twice.

"flowmetrics serve --demo" does the same inside serve.`

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "[flags]", demoHelp, "")
	fs.SetOutput(stderr)
	target := fs.String("url", "http://127.0.0.1:8080", "base URL of serve")
	configPath := fs.String("config", "", "serve's YAML config, for http.auth_header and http.secret_env (the secret is read from that environment variable)")
	seed := fs.Uint64("seed", 1, "random seed: the same seed gives the same conversations at the same times, so a restart's backfill counts nothing twice (0: a new one from the clock)")
	rate := fs.Float64("rate", 2, "conversations a second at the daily peak")
	every := fs.Duration("incident-every", demo.DefaultIncidentEvery, "period of the payment incident")
	length := fs.Duration("incident-length", demo.DefaultIncidentLength, "length of each incident")
	split := fs.Float64("split-a", 0.5, "share of Callback Offer callers in variant A")
	dups := fs.Float64("duplicates", 0.05, "share of events delivered twice")
	late := fs.Float64("late", 0.03, "share of events delivered 30s to 3m late")
	backfill := fs.Duration("backfill", demoBackfill, "post the simulated traffic of this much past first (0: none)")
	runFor := fs.Duration("for", 0, "stop after this long (0: until interrupted)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fmt.Errorf("demo: unexpected arguments %q", fs.Args()))
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	u, err := url.Parse(*target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageError(fmt.Errorf("demo: -url %q: want http://host:port", *target))
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return usageError(err)
	}
	if *rate <= 0 || *split <= 0 || *split >= 1 || *dups < 0 || *late < 0 || *every <= 0 || *length <= 0 || *backfill < 0 {
		return usageError(errors.New("demo: -rate, -incident-every and -incident-length must be positive, -split-a between 0 and 1, the rest not negative"))
	}
	if *runFor > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *runFor)
		defer cancel()
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano())
	}
	opts := demo.Options{Seed: *seed, Rate: *rate, IncidentEvery: *every, IncidentLength: *length,
		SplitA: *split, DuplicateRate: *dups, LateRate: *late}
	t := demo.Target{URL: strings.TrimSuffix(u.String(), "/") + "/v1/events", Header: cfg.HTTP.AuthHeader, Secret: cfg.HTTP.Secret()}
	log.Info("demo: posting simulated traffic", "url", t.URL, "backfill", *backfill)
	tot, err := demo.RunFrom(ctx, opts, time.Now().Add(-*backfill), t, demoTick, time.Now, log)
	fmt.Fprintf(stderr, "demo: posted %d events in %d requests: %d occurrences, %d rejected\n", tot.Events, tot.Requests, tot.Occurrences, tot.Rejected)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// runDemoTraffic is serve --demo's traffic: it posts to serve's own
// listener until ctx is done.
func runDemoTraffic(ctx context.Context, opts demo.Options, t demo.Target, log *slog.Logger) {
	// The default seed each start: a restart's backfill posts the
	// conversations already counted again, with the same ids, and the
	// claims count them once.
	log.Info("demo: posting simulated traffic to this server", "url", t.URL, "backfill", demoBackfill)
	if _, err := demo.RunFrom(ctx, opts, time.Now().Add(-demoBackfill), t, demoTick, time.Now, log); err != nil {
		log.Error("demo traffic stopped", "err", err)
	}
}

// demoTarget is serve's own POST /v1/events on the address it listens on
// (loopback when it listens on every interface).
func demoTarget(addr net.Addr, cfg config.Config, secret string) demo.Target {
	t := demo.Target{
		URL:    cfg.HTTP.Scheme() + "://" + onLoopback(addr.String()) + "/v1/events",
		Header: cfg.HTTP.AuthHeader,
		Secret: secret,
	}
	if cfg.HTTP.TLS != nil {
		t.Client = selfClient(30 * time.Second)
	}
	return t
}

// onLoopback is a listen address as this machine reaches it: an unspecified
// host (0.0.0.0, ::, none) becomes loopback.
func onLoopback(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		host, port = "127.0.0.1", "8080"
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}
