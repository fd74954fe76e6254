// Command flowmetrics turns Genesys Cloud Architect flow metric attributes
// into exactly-once counts in the observability platform a team already uses.
//
//	flowmetrics serve  [flags]          HTTP ingest, embedded store, /metrics, the dashboard
//	flowmetrics replay [flags] FILE…    the same pipeline over archived events
//	flowmetrics demo   [flags]          post simulated contact-centre traffic to serve
//	flowmetrics boards [flags]          write ready-made Datadog and Grafana boards and alerts
//	flowmetrics health [flags]          ask a running serve's /healthz (for a container's HEALTHCHECK)
//	flowmetrics lambda                  the AWS Lambda entry point
//	flowmetrics version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
)

const usage = `flowmetrics: exact Genesys Cloud flow metrics.

Usage:
  flowmetrics serve  [flags]        run the HTTP ingest server, /metrics and the live dashboard
  flowmetrics serve --demo          the same, fed with simulated traffic: the first run
  flowmetrics replay [flags] FILE…  count archived events ("-" for stdin)
  flowmetrics demo   [flags]        post simulated contact-centre traffic to a running serve
  flowmetrics boards [flags]        write Datadog and Grafana dashboards and alerts for a config
  flowmetrics health [flags]        ask a running serve's /healthz: exit 0 when healthy
  flowmetrics lambda                run as an AWS Lambda function (EventBridge or SQS)
  flowmetrics version               print the version

"flowmetrics COMMAND -h" (or "flowmetrics help COMMAND") lists a command's flags.
`

// exitError carries the exit status of a failed command.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

// usageError is an error in flags or config: exit status 2.
func usageError(err error) error { return exitError{2, err} }

// errHelp is returned when -h was asked for: the help was printed, exit 0.
var errHelp = exitError{0, flag.ErrHelp}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			if ee.err != nil && ee.err != flag.ErrHelp {
				fmt.Fprintln(os.Stderr, "flowmetrics:", ee.err)
			}
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "flowmetrics:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 && inLambda() {
		args = []string{"lambda"}
	}
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError{2, nil}
	}
	switch args[0] {
	case "serve":
		return runServe(ctx, args[1:], stdout, stderr)
	case "replay":
		return runReplay(ctx, args[1:], stdin, stdout, stderr)
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr)
	case "boards":
		return runBoards(ctx, args[1:], stdout, stderr)
	case "health":
		return runHealth(ctx, args[1:], stdout, stderr)
	case "lambda":
		return runLambda(ctx, args[1:], stdout, stderr)
	case "version":
		fs := newFlagSet("version", "", "Prints the version: the module version after `go install …@version`, else the VCS revision it was built from.", "")
		fs.SetOutput(stderr)
		if err := parseFlags(fs, args[1:], stdout); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "flowmetrics", buildVersion(), runtime.Version())
		return nil
	case "help":
		if len(args) > 1 && args[1] != "help" {
			return run(ctx, []string{args[1], "-h"}, stdin, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return nil
	case "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usageError(fmt.Errorf("unknown command %q", args[0]))
}

// newFlagSet returns a command's flag set whose usage shows the synopsis,
// the description, every flag with its default, and extra (e.g. serve's
// endpoints).
func newFlagSet(name, synopsis, description, extra string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: %s\n\n%s\n", strings.TrimSpace("flowmetrics "+name+" "+synopsis), strings.TrimSpace(description))
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintf(w, "\nFlags:\n")
			fs.PrintDefaults()
		}
		if extra != "" {
			fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(extra))
		}
	}
	return fs
}

// parseFlags parses args. -h prints the usage to stdout and returns errHelp
// (exit 0); a bad flag prints the usage to stderr and returns a usage error
// (exit 2). Commands set fs's output to their stderr first.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	out := fs.Output()
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		fs.SetOutput(out)
		return errHelp
	case err != nil:
		fs.Usage()
		return usageError(err)
	}
	return nil
}

// version, when set with -ldflags "-X main.version=…", overrides the build
// info.
var version string

// buildVersion is the version from the build info: the module version after
// `go install github.com/flowmetrics/flowmetrics/cmd/flowmetrics@v1.2.3`
// (or the pseudo-version Go derives from the VCS when it builds in a
// checkout), else the VCS revision the binary was built from, else "devel".
func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return versionOf(bi)
}

func versionOf(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified == "true" {
		rev += "-dirty"
	}
	return "devel-" + rev
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError(fmt.Errorf("-log-level %q: %w", level, err))
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
