package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	promclient "github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/netutil"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/dashboard"
	"github.com/flowmetrics/flowmetrics/internal/demo"
	"github.com/flowmetrics/flowmetrics/internal/diskguard"
	"github.com/flowmetrics/flowmetrics/internal/httpapi"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
	"github.com/flowmetrics/flowmetrics/internal/tlscert"
	"github.com/flowmetrics/flowmetrics/internal/wire"
)

const serveHelp = `Receives Genesys Cloud events over HTTP (an EventBridge API destination, or
anything that posts them), counts each flow metric attribute once per
conversation in the embedded store, and delivers the counts to the configured
sinks (Prometheus on /metrics by default). SIGTERM or Ctrl-C drains, flushes
and stops within http.shutdown_timeout. Below store.min_free_bytes of free
disk, ingest answers 503 (Retry-After) until space returns.`

const serveEndpoints = `Endpoints:
  POST /v1/events   events: an EventBridge envelope, a bare detail object, a JSON
                    array of them or NDJSON; 202 with {"accepted","skipped","rejected",
                    "occurrences","errors"} once durable; 400, 401, 413, 415,
                    503 (Retry-After while the disk is low)
  GET  /metrics     Prometheus: genesys_flow_metric_total{flow,metric} and the
                    pipeline's own flowmetrics_* metrics
  GET  /healthz     200 when serving; 503 with the reason while ingest is
                    refused for disk space or after the store failed
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
		// The demo's funnels and A/B test, unless the config has its own.
		cfg.Paths = demo.PathsConfig(cfg.Paths)
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

// serveTableWriteRate is the rate at which serve's embedded store writes
// each table while it keeps up (store.Options.TableWriteRate): a flush or
// compaction at full speed puts megabytes before the write-ahead log's
// next sync, which every acknowledgement waits for. Replay, which waits
// for no one, writes them at full speed.
const serveTableWriteRate = 32 << 20

// serveRecentHeaderBytes is the memory serve's embedded store takes to
// hold the headers its claims wrote lately (store.Options.RecentHeaderBytes):
// a request's claim is small and mostly of conversations claimed a few
// requests before, whose header it then reads from there instead of
// seeking it in Pebble. 4 MiB hold some 8,000 conversations of a few keys.
const serveRecentHeaderBytes = 4 << 20

// serveStoreTuning is what serve asks of its store beyond the config.
var serveStoreTuning = store.Options{TableWriteRate: serveTableWriteRate, RecentHeaderBytes: serveRecentHeaderBytes}

func serve(ctx context.Context, cfg config.Config, secret string, log *slog.Logger) error {
	return serveWith(ctx, cfg, secret, log, nil)
}

// serveWith is serve that, with demoOpts set, also posts demo traffic to
// its own POST /v1/events.
func serveWith(ctx context.Context, cfg config.Config, secret string, log *slog.Logger, demoOpts *demo.Options) error {
	m := telemetry.New()
	// The address first: a start that cannot listen (the port is taken,
	// the TLS files do not load) fails before anything is written to the
	// data directory.
	ln, err := listen(cfg.HTTP, log)
	if err != nil {
		return err
	}
	// Then the disk guard: on a disk that is already low it releases the
	// ballast, so the store has room to open. The demo's store holds
	// nothing worth a ballast.
	guard, err := newDiskGuard(cfg, demoOpts != nil, log)
	if err != nil {
		ln.Close()
		return err
	}
	st, err := openStore(cfg, log, serveStoreTuning)
	if err != nil {
		ln.Close()
		return err
	}
	defer limitServeMemory(cfg, st)()
	return serveStore(ctx, service{cfg: cfg, secret: secret, m: m, st: st, disk: guard, ln: ln, log: log, demo: demoOpts})
}

// service is what serve runs on and what it builds, step by step: the
// parts opened before it (the listener, the disk guard, the store), then
// the pipeline, the dashboard and the HTTP server.
type service struct {
	cfg    config.Config
	secret string
	m      *telemetry.Metrics
	st     flowmetrics.Store
	disk   *diskguard.Guard // nil: no disk guard
	ln     net.Listener     // nil: listen on cfg.HTTP.Listen
	log    *slog.Logger
	demo   *demo.Options // nil: no demo traffic

	p     *pipeline.Pipeline
	dash  *dashboard.Handler // nil: no dashboard
	sinks int
	srv   *http.Server
}

// serveStore is serveWith on an open store, which it closes: it serves
// until ctx ends or the store fails, then shuts down within
// http.shutdown_timeout.
func serveStore(ctx context.Context, s service) error {
	if s.ln == nil {
		var err error
		if s.ln, err = listen(s.cfg.HTTP, s.log); err != nil {
			s.st.Close()
			return err
		}
	}
	if err := s.startPipeline(ctx); err != nil {
		s.ln.Close()
		s.st.Close()
		return err
	}
	s.srv = s.httpServer()
	bgCtx, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	s.runBackground(bgCtx)

	served := make(chan error, 1)
	go func() { served <- s.srv.Serve(s.ln) }()
	s.log.Info("flowmetrics serving", "listen", s.ln.Addr().String(), "scheme", s.cfg.HTTP.Scheme(), "data_dir", s.cfg.DataDir, "store", s.cfg.Store.Type, "sinks", s.sinks, "auth", s.secret != "")
	demoCtx, stopDemo := context.WithCancel(context.Background())
	defer stopDemo()
	demoDone := s.startDemo(demoCtx)

	failed, failure := storeFailure(s.st)
	var err error
	select {
	case err = <-served:
	case <-ctx.Done():
	case <-failed:
		return storeFailed(s.srv, failure(), s.log)
	}
	stopDemo()
	<-demoDone
	return s.shutdown(err, stopBackground)
}

// startPipeline builds the sinks (and the dashboard, one more sink that
// also watches the others' sends), registers the pipeline's cursors and
// starts its drainers.
func (s *service) startPipeline(ctx context.Context) error {
	// With the store in its deps, /metrics never goes down across a
	// restart: the Prometheus sink counts what is pending at once.
	sinks, err := wire.Sinks(s.cfg.Sinks, sinkDeps(s.cfg, s.m, s.log, s.st))
	if err != nil {
		return usageError(err)
	}
	pcfg := s.cfg.Pipeline
	if pcfg.Guard, err = newGuard(ctx, s.cfg, s.st, s.log); err != nil {
		return err
	}
	withPaths(s.cfg, &pcfg)
	withoutCacheOverMemory(s.cfg, &pcfg)
	if s.cfg.HTTP.DashboardOn() {
		// The dashboard also hears of malformed attribute names.
		rec := dashboard.NewRecorder(nil)
		for _, sk := range sinks {
			rec.Watch(sk.Name())
		}
		sinks = append(sinks, rec)
		pcfg.OnMalformed = rec.Malformed
		pcfg.OnSend = rec.SinkSent
		rec.SetGenesysRegion(s.cfg.Paths.GenesysRegion)
		s.dash = dashboard.New(rec, s.m)
	}
	s.sinks = len(sinks)
	s.p = pipeline.New(s.st, sinks, pcfg, s.m, s.log)
	warnInterruptedReplay(ctx, s.st, s.log)
	if err := s.p.Register(ctx); err != nil {
		return err
	}
	s.p.Start()
	return nil
}

// warnInterruptedReplay logs, per sink of a replay that stopped before
// its end (killed, or the machine went down), how many of the points it
// counted it had not yet delivered to that sink. serve registers only its
// own sinks, which drops the replay's cursors: serve's own sinks still get
// those points (that is the backfill), but the replay's sinks never will,
// and running the replay again counts nothing again.
func warnInterruptedReplay(ctx context.Context, st flowmetrics.Store, log *slog.Logger) {
	l, ok := st.(flowmetrics.SinkLister)
	if !ok {
		return
	}
	for _, name := range l.Sinks() {
		if !strings.HasPrefix(name, replayCursorPrefix) {
			continue
		}
		if n, err := st.OutboxDepth(ctx, name); err == nil && n > 0 {
			log.Warn("a replay into this data directory stopped before its end: its sink never gets these points (run the same replay again before serve to deliver them; it counts nothing twice)",
				"sink", strings.TrimPrefix(name, replayCursorPrefix), "points", n)
		}
	}
}

// httpServer is POST /v1/events, /metrics, /healthz and the dashboard,
// with the disk guard refusing ingest while the disk is low.
func (s *service) httpServer() *http.Server {
	_, failure := storeFailure(s.st)
	opts := httpapi.Options{
		AuthHeader:   s.cfg.HTTP.AuthHeader,
		Secret:       s.secret,
		MaxBodyBytes: s.cfg.HTTP.MaxBodyBytes,
		// 0: httpapi's default, 4 × MaxBodyBytes.
		MaxBytesInFlight: s.cfg.HTTP.MaxBytesInFlight,
		AllowedHosts:     s.cfg.HTTP.ServedHosts(),
		Dashboard:        httpHandler(s.dash),
		DashboardAPI:     dashboard.APIPrefix,
		DashboardAssets:  dashboard.AssetsPrefix,
		ProtectReads:     s.cfg.HTTP.ReadsProtected(s.secret),
		Health: func(context.Context) error {
			if err := failure(); err != nil {
				return fmt.Errorf("store failed: %w", err)
			}
			if s.disk != nil {
				if err := s.disk.Check(); err != nil {
					return fmt.Errorf("ingest refused: %w", err)
				}
			}
			return nil
		},
	}
	if s.disk != nil {
		opts.Admit = s.disk.Admit
		registerDiskMetrics(s.m, s.disk)
	}
	srv := &http.Server{
		Handler:           httpapi.New(s.p, s.m, opts, s.log),
		ReadTimeout:       s.cfg.HTTP.ReadTimeout,
		ReadHeaderTimeout: min(s.cfg.HTTP.ReadTimeout, 10*time.Second),
		MaxHeaderBytes:    httpapi.MaxHeaderBytes,
		WriteTimeout:      s.cfg.HTTP.WriteTimeout,
		IdleTimeout:       s.cfg.HTTP.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	if s.dash != nil {
		srv.RegisterOnShutdown(s.dash.CloseStreams)
	}
	return srv
}

// runBackground starts what runs beside the requests until ctx ends: the
// sweep of expired conversations, the disk guard and the closing of paths.
func (s *service) runBackground(ctx context.Context) {
	if sw, ok := s.st.(flowmetrics.Sweeper); ok {
		go sweepEvery(ctx, sw, s.cfg.Store.SweepInterval, s.log)
	}
	if s.disk != nil {
		go s.disk.Run(ctx)
	}
	go s.p.ClosePathsEvery(ctx, time.Second)
}

// startDemo posts demo traffic to this server's own POST /v1/events until
// ctx ends, when asked to; the channel is closed once it has stopped.
func (s *service) startDemo(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	if s.demo == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		runDemoTraffic(ctx, *s.demo, demoTarget(s.ln.Addr(), s.cfg, s.secret), s.log)
	}()
	return done
}

// shutdown drains the requests, flushes the sinks and closes the store,
// all within http.shutdown_timeout: a sink that cannot flush or a request
// that cannot finish does not hold the exit. The last part of the budget
// is kept for closing the store. served is what the HTTP server's Serve
// returned, if it has.
func (s *service) shutdown(served error, stopBackground func()) error {
	failed, failure := storeFailure(s.st)
	timeout := s.cfg.HTTP.ShutdownTimeout
	s.log.Info("shutting down: draining requests and flushing sinks", "timeout", timeout)
	deadline := time.Now().Add(timeout)
	reserve := min(timeout/5, 2*time.Second)
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(-reserve))
	defer cancel()
	done := make(chan error, 1)
	go func() {
		var errs []error
		if served != nil && !errors.Is(served, http.ErrServerClosed) {
			errs = append(errs, served)
		}
		if err := s.srv.Shutdown(ctx); err != nil {
			s.srv.Close()
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
		stopBackground()
		if err := s.p.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("flush: %w", err))
		}
		if err := s.st.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close store: %w", err))
		}
		done <- errors.Join(errs...)
	}()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case err := <-done:
		s.log.Info("flowmetrics stopped")
		return err
	case <-failed:
		return storeFailed(s.srv, failure(), s.log)
	case <-timer.C:
		s.log.Error("shutdown did not finish within shutdown_timeout; exiting anyway (what was acknowledged stays in the outbox for the next start)", "timeout", timeout)
		return fmt.Errorf("shutdown: not finished within %v", timeout)
	}
}

// storeFailure returns the store's failure channel (nil, never ready, for a
// store that cannot fail that way) and its error.
func storeFailure(st any) (<-chan struct{}, func() error) {
	if f, ok := st.(flowmetrics.Failer); ok {
		return f.Done(), f.Err
	}
	return nil, func() error { return nil }
}

// orStoreFailure runs fn and returns its error, or the store's failure as
// soon as it happens: fn may then be parked inside the store for good.
func orStoreFailure(st any, fn func() error) error {
	failed, failure := storeFailure(st)
	if failed == nil {
		return fn()
	}
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-failed:
		return fmt.Errorf("store failed: %w", failure())
	}
}

// storeFailed ends serve after the store failed beyond repair: requests in
// flight are cut off unanswered (nothing of them was acknowledged, so their
// senders retry), nothing more is written, and the error reaches main, which
// exits non-zero so that a supervisor restarts the process on an intact
// write-ahead log.
func storeFailed(srv *http.Server, err error, log *slog.Logger) error {
	log.Error("the store failed and cannot go on; exiting without acknowledging anything more", "err", err)
	srv.Close()
	return fmt.Errorf("store failed: %w", err)
}

// listen listens on h.Listen; with h.TLS, its connections are TLS with the
// certificate from h.TLS's files, read again when they change.
func listen(h config.HTTP, log *slog.Logger) (net.Listener, error) {
	var certs *tlscert.Reloader
	if t := h.TLS; t != nil {
		var err error
		if certs, err = tlscert.New(t.CertFile, t.KeyFile, log); err != nil {
			return nil, usageError(fmt.Errorf("http.tls: %w", err))
		}
	}
	ln, err := net.Listen("tcp", h.Listen)
	if err != nil {
		return nil, err
	}
	// Each open connection holds buffers and up to a request header:
	// bounding their number bounds that memory.
	ln = netutil.LimitListener(ln, h.MaxConnections)
	if certs == nil {
		return ln, nil
	}
	return tls.NewListener(ln, certs.Config()), nil
}

// newDiskGuard watches the embedded store's filesystem; nil for the memory
// store, or where free space cannot be measured. noBallast keeps the
// watermark without an emergency ballast.
func newDiskGuard(cfg config.Config, noBallast bool, log *slog.Logger) (*diskguard.Guard, error) {
	if cfg.Store.Type != "embedded" {
		return nil, nil
	}
	ballast := cfg.Store.BallastBytes
	if noBallast {
		ballast = -1
	}
	g, err := diskguard.New(cfg.DataDir, diskguard.Options{MinFree: cfg.Store.MinFreeBytes, Ballast: ballast, Log: log})
	if errors.Is(err, diskguard.ErrUnsupported) {
		log.Warn("no disk guard on this platform: a full disk is not refused before it is reached", "err", err)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return g, nil
}

func registerDiskMetrics(m *telemetry.Metrics, g *diskguard.Guard) {
	m.Registry.MustRegister(
		promclient.NewGaugeFunc(promclient.GaugeOpts{Name: "flowmetrics_disk_free_bytes", Help: "Free space of the data directory's filesystem, as last measured."},
			func() float64 { return float64(g.Status().Avail) }),
		promclient.NewGaugeFunc(promclient.GaugeOpts{Name: "flowmetrics_disk_ingest_refused", Help: "1 while ingest is refused (503) because the disk is low."},
			func() float64 {
				if g.Status().Refusing {
					return 1
				}
				return 0
			}),
		promclient.NewCounterFunc(promclient.CounterOpts{Name: "flowmetrics_ingest_refused_total", Help: "Ingest requests answered 503 before reading them, by reason.", ConstLabels: promclient.Labels{"reason": "disk_low"}},
			func() float64 { return float64(g.Refusals()) }),
	)
}

func sweepEvery(ctx context.Context, sw flowmetrics.Sweeper, every time.Duration, log *slog.Logger) {
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
