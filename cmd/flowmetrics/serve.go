package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/dashboard"
	"github.com/flowmetrics/flowmetrics/internal/demo"
	"github.com/flowmetrics/flowmetrics/internal/httpapi"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink/prometheus"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

const serveHelp = `Receives Genesys Cloud events over HTTP (an EventBridge API destination, or
anything that posts them), counts each flow metric attribute once per
conversation in the embedded store, and delivers the counts to the configured
sinks (Prometheus on /metrics by default). SIGTERM or Ctrl-C drains, flushes
and stops.`

const serveEndpoints = `Endpoints:
  POST /v1/events   events: an EventBridge envelope, a bare detail object, a JSON
                    array of them or NDJSON; 202 with {"accepted","skipped","rejected",
                    "occurrences","errors"} once durable; 400, 401, 413, 503
  GET  /metrics     Prometheus: genesys_flow_metric_total{flow,metric} and the
                    pipeline's own flowmetrics_* metrics
  GET  /healthz     200 when serving
  GET  /            the live dashboard (http.dashboard: false turns it off)
  GET  /api/v1/…    its JSON: series?range=15m|1h|6h|24h, flows, malformed,
                    health; stream (server-sent change events)

Sinks deliver new counts after pipeline.flush_interval (1s by default).
The shared secret is read from $FLOWMETRICS_SECRET (http.secret_env) and sent
by clients in the X-Flowmetrics-Secret header (http.auth_header), or as
Authorization: Bearer or a Basic auth password. With a secret, /metrics and
the dashboard need it too (http.protect_reads); /healthz never does.`

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", "[flags]", serveHelp, serveEndpoints)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML config file (none: every setting at its default)")
	listen := fs.String("listen", "", "listen address, overriding http.listen (default 127.0.0.1:8080)")
	dataDir := fs.String("data-dir", "", "data directory, overriding data_dir (default ./data)")
	insecure := fs.Bool("insecure", false, "allow listening beyond loopback without a shared secret")
	checkConfig := fs.Bool("check-config", false, "validate the config (no network) and exit: 0 valid, 2 invalid")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	demoOn := fs.Bool("demo", false, "also post simulated traffic to this server (see flowmetrics demo -h); the store is then <data_dir>/demo, apart from real counts")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError(fmt.Errorf("serve: unexpected arguments %q", fs.Args()))
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return usageError(err)
	}
	if *listen != "" {
		cfg.HTTP.Listen = *listen
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	if *demoOn {
		// Simulated counts never mix with real ones in the same store.
		cfg.DataDir = filepath.Join(cfg.DataDir, "demo")
	}
	// One check for both: -check-config refuses exactly what serve would.
	if err := cfg.Check(*insecure); err != nil {
		return usageError(err)
	}
	if *checkConfig {
		fmt.Fprintln(stderr, "config ok")
		return nil
	}
	if *demoOn {
		return serveWith(ctx, cfg, cfg.HTTP.Secret(), log, &demo.Options{})
	}
	return serve(ctx, cfg, cfg.HTTP.Secret(), log)
}

func serve(ctx context.Context, cfg config.Config, secret string, log *slog.Logger) error {
	return serveWith(ctx, cfg, secret, log, nil)
}

// serveWith is serve that, with demoOpts set, also posts demo traffic to
// its own POST /v1/events.
func serveWith(ctx context.Context, cfg config.Config, secret string, log *slog.Logger, demoOpts *demo.Options) error {
	m := telemetry.New()
	st, err := openStore(cfg, log)
	if err != nil {
		return err
	}
	defer st.Close()
	sinks, err := buildSinks(cfg, m, log)
	if err != nil {
		return usageError(err)
	}
	for _, s := range sinks {
		if ps, ok := s.(*prometheus.Sink); ok {
			ps.ResumeFrom(st) // /metrics never goes down across a restart
		}
	}
	pcfg := cfg.Pipeline
	pcfg.Guard = newGuard(cfg, log)
	var dash *dashboard.Handler
	if cfg.HTTP.DashboardOn() {
		// The dashboard is one more sink; it also watches the others'
		// sends and hears of malformed attribute names.
		rec := dashboard.NewRecorder(nil)
		for i, s := range sinks {
			sinks[i] = rec.Watch(s)
		}
		sinks = append(sinks, rec)
		pcfg.OnMalformed = rec.Malformed
		dash = dashboard.New(rec, m)
	}
	p := pipeline.New(st, sinks, pcfg, m, log)
	if err := p.Register(ctx); err != nil {
		return err
	}
	p.Start()

	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		p.Close(context.Background())
		return err
	}
	srv := &http.Server{
		Handler: httpapi.New(p, m, httpapi.Options{
			AuthHeader:   cfg.HTTP.AuthHeader,
			Secret:       secret,
			MaxBodyBytes: cfg.HTTP.MaxBodyBytes,
			Dashboard:    httpHandler(dash),
			DashboardAPI: dashboard.APIPrefix,
			ProtectReads: cfg.HTTP.ReadsProtected(secret),
		}, log),
		ReadTimeout:       cfg.HTTP.ReadTimeout,
		ReadHeaderTimeout: min(cfg.HTTP.ReadTimeout, 10*time.Second),
		WriteTimeout:      cfg.HTTP.WriteTimeout,
		IdleTimeout:       cfg.HTTP.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if dash != nil {
		srv.RegisterOnShutdown(dash.CloseStreams)
	}
	sweepCtx, stopSweep := context.WithCancel(context.Background())
	defer stopSweep()
	if sw, ok := st.(sweeper); ok {
		go sweepEvery(sweepCtx, sw, cfg.Store.SweepInterval, log)
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("flowmetrics serving", "listen", ln.Addr().String(), "data_dir", cfg.DataDir, "store", cfg.Store.Type, "sinks", len(sinks), "auth", secret != "")
	demoCtx, stopDemo := context.WithCancel(context.Background())
	defer stopDemo()
	demoDone := make(chan struct{})
	if demoOpts != nil {
		go func() {
			defer close(demoDone)
			runDemoTraffic(demoCtx, *demoOpts, demoTarget(ln.Addr(), cfg, secret), log)
		}()
	} else {
		close(demoDone)
	}

	select {
	case err = <-served:
	case <-ctx.Done():
	}
	stopDemo()
	<-demoDone
	log.Info("shutting down: draining requests and flushing sinks", "timeout", cfg.HTTP.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.HTTP.ShutdownTimeout)
	defer cancel()
	var errs []error
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, err)
	}
	if err := srv.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
	}
	stopSweep()
	if err := p.Close(sctx); err != nil {
		errs = append(errs, fmt.Errorf("flush: %w", err))
	}
	if err := st.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close store: %w", err))
	}
	log.Info("flowmetrics stopped")
	return errors.Join(errs...)
}

func sweepEvery(ctx context.Context, sw sweeper, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, err := sw.Sweep(ctx)
			if err != nil && ctx.Err() == nil {
				log.Error("sweeping expired conversations", "err", err)
			} else if n > 0 {
				log.Info("swept expired conversations", "removed", n)
			}
		}
	}
}

// httpHandler keeps a nil *dashboard.Handler a nil http.Handler.
func httpHandler(d *dashboard.Handler) http.Handler {
	if d == nil {
		return nil
	}
	return d
}
