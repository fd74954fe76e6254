package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/term"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/genesys"
	"github.com/flowmetrics/flowmetrics/internal/pipeline"
	"github.com/flowmetrics/flowmetrics/internal/sink/jsonl"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
	"github.com/flowmetrics/flowmetrics/internal/wire"
)

// replayBatch is how many records one claim covers: large enough that the
// embedded store's one fsync per claim is amortised, small enough to bound
// memory.
const replayBatch = 2000

// replaySyncing is how many batches' claims may be syncing while the next
// batch is claimed: the fsync of the embedded store, which takes about as
// long as a batch's claim, overlaps the next claims instead of holding
// them up.
const replaySyncing = 1

// flushEvery bounds the occurrences held in the outbox before the sinks get
// them, so a huge replay does not grow memory without bound. Small enough
// that the embedded store deletes the delivered entries while they are
// still in its memtable (they then never reach a table): 20,000
// occurrences are about 2 MB of entries.
const flushEvery = 20_000

// maxPrinted bounds the rejected records named on stderr; the rest are
// counted in the summary.
const maxPrinted = 100

const replayHelp = `Counts archived events (files in any accepted shape; "-" reads stdin) with the
same pipeline as serve, by default into an in-memory store and JSON lines on
stdout, and ends with a summary line on stderr. Exit status: 0 nothing rejected,
1 some records rejected, 2 usage or config error.`

// replayFlags are replay's command line.
type replayFlags struct {
	configPath, dataDir, output, logLevel string
	bucket                                time.Duration
	progress                              bool
	files                                 []string
}

func runReplay(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	f, err := parseReplayFlags(args, stdout, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		return err
	}
	cfg, err := replayConfig(f)
	if err != nil {
		return usageError(err)
	}
	// Open every input first, so a typo fails before anything is counted.
	inputs, err := openInputs(f.files, stdin)
	if err != nil {
		return usageError(err)
	}
	defer closeInputs(inputs)

	m := telemetry.New()
	st, err := openStore(cfg, log, store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	defer limitMemory(cfg, st)()
	// A store failure that cannot be survived may park this goroutine
	// inside the store: the replay then ends with it, not a hang.
	return orStoreFailure(st, func() error {
		p, restore, err := startReplay(ctx, cfg, st, m, log)
		if err != nil {
			return err
		}
		r := &replayer{p: p, stderr: stderr, started: time.Now(), paths: newReplayCloser(p, st, cfg.Paths.IsEnabled(), cfg.Paths.WithDefaults().Grace)}
		if file, ok := stderr.(*os.File); ok && f.progress && term.IsTerminal(int(file.Fd())) {
			stopBar := r.showProgress(file, inputs)
			defer stopBar()
		}
		runErr := r.run(ctx, inputs)
		if runErr == nil {
			runErr = closeReplayPaths(ctx, p, cfg)
		}
		return r.finish(ctx, restore, runErr)
	})
}

func parseReplayFlags(args []string, stdout, stderr io.Writer) (replayFlags, error) {
	fs := newFlagSet("replay", "[flags] FILE…", replayHelp, "")
	fs.SetOutput(stderr)
	var f replayFlags
	fs.StringVar(&f.configPath, "config", "", "YAML config: its pipeline, naming and sinks sections are used (default: JSON lines to stdout)")
	fs.StringVar(&f.dataDir, "data-dir", "", "count against the embedded store in this directory (so a backfill does not recount what serve counted); default: an in-memory store")
	fs.StringVar(&f.output, "o", "", "write JSON lines to this file instead of stdout")
	fs.DurationVar(&f.bucket, "bucket", 0, "bucket width (default 10s, or the config's)")
	fs.BoolVar(&f.progress, "progress", true, "show a progress bar when stderr is a terminal")
	fs.StringVar(&f.logLevel, "log-level", "warn", "debug, info, warn or error")
	if err := parseFlags(fs, args, stdout); err != nil {
		return f, err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return f, usageError(errors.New("replay: no input files"))
	}
	f.files = fs.Args()
	return f, nil
}

// replayConfig is the config file as replay uses it: its own default
// sink, its store (memory, or the embedded one of -data-dir), validated.
func replayConfig(f replayFlags) (config.Config, error) {
	cfg, err := config.Load(f.configPath)
	if err != nil {
		return cfg, err
	}
	if f.bucket != 0 {
		cfg.Pipeline.Bucket = f.bucket
	}
	if f.configPath == "" || f.output != "" {
		// Replay's own default: JSON lines, nothing else.
		cfg.Sinks = config.Sinks{JSONL: &jsonl.Config{Path: f.output}}
		disabled := false
		cfg.Sinks.Prometheus.Enabled = &disabled
	}
	cfg.Store.Type = "memory"
	if f.dataDir != "" {
		cfg.Store.Type, cfg.DataDir = "embedded", f.dataDir
	}
	return cfg, cfg.Validate()
}

// startReplay builds the replay's sinks and pipeline on st, registers its
// cursors beside those the store already serves and restores its sinks'
// state; restore gives the store its own cursors back.
func startReplay(ctx context.Context, cfg config.Config, st flowmetrics.Store, m *telemetry.Metrics, log *slog.Logger) (p *pipeline.Pipeline, restore func() error, err error) {
	deps := sinkDeps(cfg, m, log, nil)
	// The replay's sinks and their state are gone when it ends (see
	// registerForReplay): the OTLP windows still open are sent then.
	deps.Ephemeral = true
	sinks, err := wire.Sinks(cfg.Sinks, deps)
	if err != nil {
		return nil, nil, usageError(err)
	}
	pcfg := cfg.Pipeline
	// The guard's admitted pairs are the store's: a replay into a serve
	// data directory shares serve's, so the two never pass the limit.
	if pcfg.Guard, err = newGuard(ctx, cfg, st, log); err != nil {
		for _, sk := range sinks {
			sk.Close(ctx)
		}
		return nil, nil, err
	}
	if cfg.Store.Type == "embedded" {
		// Own cursors, so serve's pending points for a sink of the same
		// kind are neither taken nor moved by the replay.
		pcfg.CursorPrefix = replayCursorPrefix
	}
	withPaths(cfg, &pcfg)
	withoutCacheOverMemory(cfg, &pcfg)
	p = pipeline.New(st, sinks, pcfg, m, log)
	if restore, err = registerForReplay(ctx, st, p.Cursors()); err != nil {
		p.Close(ctx)
		return nil, nil, err
	}
	if err := p.Restore(ctx); err != nil {
		p.Close(ctx)
		restore()
		return nil, nil, err
	}
	return p, restore, nil
}

// finish delivers what was counted, gives the store its cursors back,
// prints the summary and returns the replay's outcome: runErr, a failed
// delivery, or exit status 1 when records were rejected. A signal during
// the final flush stops it; after a signal during reading, the flush gets
// a short grace period.
func (r *replayer) finish(ctx context.Context, restore func() error, runErr error) error {
	closeCtx, cancelClose := ctx, context.CancelFunc(func() {})
	if ctx.Err() != nil {
		closeCtx, cancelClose = context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	}
	closeErr := r.p.Close(closeCtx)
	cancelClose()
	if err := restore(); err != nil && closeErr == nil {
		closeErr = err
	}
	r.summary()
	switch {
	case runErr != nil:
		return runErr
	case closeErr != nil:
		return fmt.Errorf("delivering: %w", closeErr)
	case r.total.Rejected > 0:
		return exitError{1, nil}
	}
	return nil
}

// closeReplayPaths closes, at the end of the input, the paths the input
// can no longer change: every conversation whose customer.end it read (the
// input is complete, so the grace period has nothing left to wait for),
// and, in the memory store, which ends with the replay, every other one as
// if its idle timeout had passed. In a serve data directory a conversation
// without its end stays open, for serve to close at its idle timeout. The
// points are delivered every replayCloseBatch conversations closed.
func closeReplayPaths(ctx context.Context, p *pipeline.Pipeline, cfg config.Config) error {
	if !cfg.Paths.IsEnabled() {
		return nil
	}
	d := cfg.Paths.WithDefaults()
	asOf := time.Now().Add(d.Grace)
	if cfg.Store.Type == "memory" {
		// Past every idle deadline: a step past the idle timeout after
		// the last request at most (flowmetrics.PathOptions.Step).
		o := cfg.Paths.Options()
		asOf = time.Now().Add(o.Idle + o.Step())
	}
	// Delivered batch by batch: a replay that closes every conversation
	// at its end would otherwise hold all their points at once (in the
	// memory store, and in the sinks' batches read from any store). Each
	// batch's delivery overlaps the next batch's close: at most two
	// batches of points are held.
	var fl flusher
	for {
		n, err := p.ClosePathsOnce(ctx, asOf, replayCloseBatch)
		if err != nil {
			fl.wait()
			return err
		}
		if n > 0 {
			if err := fl.start(ctx, p); err != nil {
				return fmt.Errorf("delivering: %w", err)
			}
		}
		if n < replayCloseBatch {
			if err := fl.wait(); err != nil {
				return fmt.Errorf("delivering: %w", err)
			}
			return nil
		}
	}
}

// replayCloseBatch is how many paths one synced close covers at the end of
// a replay, where every conversation may close at once: the more in one
// batch, the fewer fsyncs, and the closer together the headers the close
// reads (in key order: a step forward instead of a seek). Their points,
// a few MB, are delivered before the next batch.
const replayCloseBatch = 4096

// replayCursorPrefix is put before the names of a replay's sinks to make
// their cursors in an embedded store: a replay into a serve data directory
// then neither takes nor moves serve's pending points.
const replayCursorPrefix = "replay-"

// registerForReplay adds the replay's cursors to those the store already
// serves. With the embedded store of a serve data directory, serve's own
// sinks keep their cursors, so they also receive the replayed occurrences
// when serve next runs; the replay's cursors are removed again at the end.
func registerForReplay(ctx context.Context, st flowmetrics.Store, cursors []string) (restore func() error, err error) {
	var existing []string
	if l, ok := st.(flowmetrics.SinkLister); ok {
		existing = l.Sinks()
	}
	names := append(append([]string(nil), existing...), cursors...)
	if err := st.Register(ctx, names); err != nil {
		return nil, err
	}
	return func() error { return st.Register(context.WithoutCancel(ctx), existing) }, nil
}

type input struct {
	name string
	r    io.Reader
	c    io.Closer
	size int64
	read *atomic.Int64
}

func openInput(name string, stdin io.Reader) (input, error) {
	in := input{name: name, read: new(atomic.Int64)}
	if name == "-" {
		in.name, in.r = "stdin", stdin
		return in, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return in, err
	}
	if fi, err := f.Stat(); err == nil {
		in.size = fi.Size()
	}
	in.r, in.c = f, f
	return in, nil
}

// openInputs opens every input, or none.
func openInputs(names []string, stdin io.Reader) ([]input, error) {
	var inputs []input
	for _, name := range names {
		in, err := openInput(name, stdin)
		if err != nil {
			closeInputs(inputs)
			return nil, err
		}
		inputs = append(inputs, in)
	}
	return inputs, nil
}

func closeInputs(ins []input) {
	for _, in := range ins {
		if in.c != nil {
			in.c.Close()
		}
	}
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

type replayer struct {
	p       *pipeline.Pipeline
	paths   *replayCloser // nil: paths off
	stderr  io.Writer
	started time.Time
	total   pipeline.Result
	printed int
	pending int
}

func (r *replayer) run(ctx context.Context, inputs []input) error {
	for _, in := range inputs {
		if err := r.runOne(ctx, in); err != nil {
			return fmt.Errorf("replay %s: %w", in.name, err)
		}
	}
	return nil
}

// runOne decodes (parsing lines in parallel) and prepares (sorts out,
// extracts, checks against the known-key cache, admits flow/metric pairs)
// in one goroutine and commits
// in another, so the next batch is decoded and prepared while the store
// claims (and syncs) this one.
func (r *replayer) runOne(ctx context.Context, in input) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan decodedBatch, 2)
	decodeErr := make(chan error, 1)
	go func() {
		defer close(batches)
		send := func(b []genesys.Record) error {
			select {
			case batches <- decodedBatch{r.paths.summarize(b), r.p.Prepare(ctx, b)}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// A prepared batch holds none of its records: the slice is
		// reused.
		batch := make([]genesys.Record, 0, replayBatch)
		// The lines are parsed by as many goroutines as there are
		// processors; this one sees the records in input order.
		err := genesys.DecodeParallel(countingReader{in.r, in.read}, runtime.GOMAXPROCS(0), func(rec genesys.Record) error {
			batch = append(batch, rec)
			if len(batch) < replayBatch {
				return nil
			}
			err := send(batch)
			clear(batch)
			batch = batch[:0]
			return err
		})
		if err == nil && len(batch) > 0 {
			err = send(batch)
		}
		decodeErr <- err
	}()
	var ingestErr error
	var fl flusher
	fail := func(err error) {
		if ingestErr == nil {
			ingestErr = err
			cancel()
		}
	}
	// The claims overlap: a batch goes into the store (applied, where every
	// later claim and close sees it) while the syncs of up to
	// replaySyncing batches before it are under way, so the store's fsync
	// no longer holds this goroutine up. The closes due after a batch start
	// once it is durable, beside the claims of the batches after it, which
	// leave out their conversations (replayCloser): so the next batch is
	// taken before they start. They are waited for (applied, not
	// necessarily synced) only before the batch after those is claimed, so
	// they also overlap this goroutine's waits for syncs and batches.
	var syncing []*startedBatch // started, not yet finished, in order
	batch, more := <-batches
	for more {
		if ingestErr != nil {
			batch, more = <-batches
			continue // drain, so the decoder can stop
		}
		syncing = append(syncing, &startedBatch{paths: batch.paths, finish: r.p.StartCommit(ctx, batch.prepared)})
		// The store's log writer, woken by the claim, would wait for
		// this goroutine's processor (the others decode) until it
		// blocks: yielding it starts the batch's fsync now, beside what
		// follows, rather than once this goroutine waits for it.
		runtime.Gosched()
		var done *startedBatch
		if len(syncing) > replaySyncing {
			done, syncing = syncing[0], syncing[1:]
			if err := r.finished(ctx, in.name, done, &fl); err != nil {
				fail(err)
			}
		}
		batch, more = <-batches
		if ingestErr == nil && done != nil {
			// Beside the claims still syncing, and the next batch's.
			beside := make([]*batchPaths, 0, len(syncing)+1)
			for _, b := range syncing {
				beside = append(beside, b.paths)
			}
			if more {
				beside = append(beside, batch.paths)
			}
			// The closes started after the batch before must be
			// applied before the next batch is claimed: start waits.
			closed, err := r.paths.start(ctx, beside...)
			if err != nil {
				fail(err)
			}
			r.pending += closed
		}
	}
	for _, b := range syncing {
		if ingestErr != nil {
			b.finish() // must be called; the replay failed already
		} else if err := r.finished(ctx, in.name, b, &fl); err != nil {
			fail(err)
		}
	}
	if _, err := r.paths.wait(); err != nil {
		fail(err)
	}
	if err := fl.wait(); err != nil && ingestErr == nil {
		ingestErr = err
	}
	if ingestErr != nil {
		return ingestErr
	}
	return <-decodeErr
}

// startedBatch is a batch whose commit the replay started: its claim is
// applied, and finish waits until it is durable.
type startedBatch struct {
	paths  *batchPaths
	finish func() (pipeline.Result, error)
}

// finished waits until b is durable and reports it, then moves the
// replay's clock by b, and has the outbox delivered every flushEvery
// occurrences and paths closed.
func (r *replayer) finished(ctx context.Context, name string, b *startedBatch, fl *flusher) error {
	res, err := b.finish()
	if err != nil {
		return err
	}
	r.report(name, res)
	r.paths.claimed(b.paths)
	if r.pending += res.Occurrences; r.pending >= flushEvery {
		r.pending = 0
		return fl.start(ctx, r.p)
	}
	return nil
}

// flusher delivers the outbox to the sinks in a goroutine of its own, so
// the sinks' work overlaps the next claims instead of holding them up. At
// most one flush runs: start waits for the one before, so the outbox holds
// at most about twice flushEvery occurrences, and a sink that fails holds
// the replay back as a synchronous flush did.
type flusher struct {
	done chan error // the running flush's outcome; nil when none runs
}

// start waits for the running flush, if any, and starts another; it returns
// the error of the one it waited for.
func (f *flusher) start(ctx context.Context, p *pipeline.Pipeline) error {
	if err := f.wait(); err != nil {
		return err
	}
	f.done = make(chan error, 1)
	go func(done chan<- error) { done <- p.Flush(ctx) }(f.done)
	return nil
}

// wait waits for the running flush, if any, and returns its error.
func (f *flusher) wait() error {
	if f.done == nil {
		return nil
	}
	err := <-f.done
	f.done = nil
	return err
}

// report adds a batch's result and names its rejected records as
// file:line (or file[index] where lines are unknown).
func (r *replayer) report(name string, res pipeline.Result) {
	for _, e := range res.Errors {
		if r.printed >= maxPrinted {
			break
		}
		r.printed++
		if e.Line > 0 {
			fmt.Fprintf(r.stderr, "%s:%d: rejected: %s\n", name, e.Line, e.Error)
		} else {
			fmt.Fprintf(r.stderr, "%s[%d]: rejected: %s\n", name, e.Index, e.Error)
		}
	}
	res.Errors = nil
	r.total.Add(res)
}

func (r *replayer) summary() {
	t := r.total
	if t.Rejected > r.printed {
		fmt.Fprintf(r.stderr, "… %d more rejected records not shown\n", t.Rejected-r.printed)
	}
	el := time.Since(r.started)
	rate := float64(t.Read) / max(el.Seconds(), 1e-9)
	fmt.Fprintf(r.stderr, "replay: read %d, accepted %d, skipped %d, rejected %d, occurrences %d, malformed %d in %s (%.0f records/s)\n",
		t.Read, t.Accepted, t.Skipped, t.Rejected, t.Occurrences, t.Malformed, el.Round(time.Millisecond), rate)
}

// showProgress draws a bar of bytes read over the total size of the inputs,
// when that is known and large enough for a bar to help.
func (r *replayer) showProgress(w io.Writer, inputs []input) (stop func()) {
	var total int64
	for _, in := range inputs {
		if in.size == 0 {
			return func() {}
		}
		total += in.size
	}
	if total < 8<<20 {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			var read int64
			for _, in := range inputs {
				read += in.read.Load()
			}
			frac := float64(read) / float64(total)
			const width = 30
			n := int(frac * width)
			bar := make([]byte, width)
			for i := range bar {
				bar[i] = ' '
				if i < n {
					bar[i] = '='
				}
			}
			fmt.Fprintf(w, "\r[%s] %5.1f%% %d/%d MiB", bar, 100*frac, read>>20, total>>20)
			select {
			case <-done:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }
}
