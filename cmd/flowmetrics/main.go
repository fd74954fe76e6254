// Command flowmetrics turns Genesys Cloud Architect flow metric attributes
// into exactly-once counts in the observability platform a team already uses.
//
//	flowmetrics serve  [flags]          HTTP ingest, embedded store, /metrics
//	flowmetrics replay [flags] FILE…    the same pipeline over archived events
//	flowmetrics lambda                  the AWS Lambda entry point
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
	"syscall"
)

const usage = `flowmetrics: exact Genesys Cloud flow metrics.

Usage:
  flowmetrics serve  [flags]        run the HTTP ingest server (see -h)
  flowmetrics replay [flags] FILE…  count archived events ("-" for stdin)
  flowmetrics lambda                run as an AWS Lambda function (EventBridge or SQS)
  flowmetrics version
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
		return runServe(ctx, args[1:], stderr)
	case "replay":
		return runReplay(ctx, args[1:], stdin, stdout, stderr)
	case "lambda":
		return runLambda(ctx, args[1:], stderr)
	case "version":
		fmt.Fprintln(stdout, "flowmetrics", version)
		return nil
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return usageError(fmt.Errorf("unknown command %q", args[0]))
}

var version = "dev"

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError(fmt.Errorf("-log-level %q: %w", level, err))
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
