package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/dashboard"
	"github.com/flowmetrics/flowmetrics/internal/httpapi"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink/prometheus"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

func runServe(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML config file (defaults for everything when omitted)")
	listen := fs.String("listen", "", "listen address, overriding http.listen")
	dataDir := fs.String("data-dir", "", "data directory, overriding data_dir")
	insecure := fs.Bool("insecure", false, "allow listening beyond loopback without a shared secret")
	checkConfig := fs.Bool("check-config", false, "validate the config and exit")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return usageError(err)
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
	// One check for both: -check-config refuses exactly what serve would.
	if err := cfg.Check(*insecure); err != nil {
		return usageError(err)
	}
	if *checkConfig {
		fmt.Fprintln(stderr, "config ok")
		return nil
	}
	return serve(ctx, cfg, cfg.HTTP.Secret(), log)
}

func serve(ctx context.Context, cfg config.Config, secret string, log *slog.Logger) error {
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

	select {
	case err = <-served:
	case <-ctx.Done():
	}
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
