package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/flowmetrics/flowmetrics/internal/lambdafn"
)

// inLambda reports whether the process was started by the AWS Lambda
// runtime. A provided.al2023 function runs its "bootstrap" without
// arguments, so main treats "no arguments inside Lambda" as "lambda".
func inLambda() bool { return os.Getenv("AWS_LAMBDA_RUNTIME_API") != "" }

// runLambda serves Lambda invocations (EventBridge events or SQS batches)
// with the DynamoDB store; its configuration comes from the environment (see
// internal/lambdafn and deploy/aws/README.md).
func runLambda(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("lambda", "", `Serves AWS Lambda invocations (EventBridge events or SQS batches) with the
DynamoDB store. It runs inside AWS Lambda only, where the binary starts it by
itself; it is configured by FLOWMETRICS_* environment variables, listed in
deploy/aws/README.md. It has no flags.`, "")
	fs.SetOutput(stderr)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return usageError(fmt.Errorf("lambda: unexpected argument %q", fs.Arg(0)))
	}
	if !inLambda() {
		return usageError(fmt.Errorf("lambda: AWS_LAMBDA_RUNTIME_API is not set: this command runs inside AWS Lambda"))
	}
	return lambdafn.Run(ctx, os.Getenv, stderr)
}
