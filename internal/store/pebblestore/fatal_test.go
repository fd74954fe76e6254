package pebblestore_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/store"
	"github.com/flowmetrics/flowmetrics/internal/store/pebblestore"
)

func claimReq(conv string) []flowmetrics.ClaimRequest {
	at := time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC)
	return []flowmetrics.ClaimRequest{{ConversationID: conv, Occurrences: []flowmetrics.Occurrence{
		{Key: "FMetric_M(" + at.Format(time.RFC3339) + ")", Flow: "F", Metric: "M", Time: at},
	}}}
}

// TestWriteAheadLogFailureFailsTheStore: when the write-ahead log cannot be
// written (a full disk), Pebble calls Fatalf or panics. The store must not
// panic in the caller nor acknowledge the claim; it reports the failure on
// Done/Err, and every later call fails at once instead of hanging on
// Pebble's locked commit pipeline.
func TestWriteAheadLogFailureFailsTheStore(t *testing.T) {
	for name, op := range map[string]errorfs.OpKind{"write": errorfs.OpFileWrite, "sync": errorfs.OpFileSync} {
		t.Run(name, func(t *testing.T) {
			var on atomic.Bool
			inj := errorfs.InjectorFunc(func(o errorfs.Op) error {
				if on.Load() && strings.HasSuffix(o.Path, ".log") && (o.Kind == op || op == errorfs.OpFileSync && o.Kind == errorfs.OpFileSyncData) {
					return fmt.Errorf("write %s: %w", o.Path, syscall.ENOSPC)
				}
				return nil
			})
			s, err := pebblestore.OpenFS(t.TempDir(), errorfs.Wrap(vfs.Default, inj), store.Options{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if err := s.Register(ctx, []string{"a"}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Claim(ctx, claimReq("before")); err != nil {
				t.Fatal(err)
			}
			on.Store(true)
			claimed := make(chan error, 1)
			go func() {
				_, err := s.Claim(ctx, claimReq("during"))
				claimed <- err
			}()
			select {
			case <-s.Done():
			case err := <-claimed:
				t.Fatalf("claim returned %v before the store reported its failure", err)
			case <-time.After(10 * time.Second):
				t.Fatal("the store did not report the failure")
			}
			if err := s.Err(); err == nil || !strings.Contains(err.Error(), "no space left on device") {
				t.Errorf("got Err() = %v, want the write-ahead-log error", err)
			}
			t.Logf("failure reported: %v", s.Err())
			// The failed claim either never returns (parked in Fatalf, the
			// process exits) or returns an error: never success.
			select {
			case err := <-claimed:
				if err == nil {
					t.Error("the failed claim was acknowledged")
				}
			case <-time.After(200 * time.Millisecond):
			}
			calls := map[string]func() error{
				"Claim":      func() error { _, err := s.Claim(ctx, claimReq("after")); return err },
				"Ack":        func() error { return s.AckState(ctx, "a", 1, nil) },
				"ReadOutbox": func() error { _, err := s.ReadOutbox(ctx, 0, 10); return err },
				"SinkState":  func() error { _, err := s.SinkState(ctx, "a"); return err },
				"Close":      s.Close,
			}
			for _, name := range []string{"Claim", "Ack", "ReadOutbox", "SinkState", "Close"} {
				done := make(chan error, 1)
				go func() { done <- calls[name]() }()
				select {
				case err := <-done:
					if err == nil {
						t.Errorf("%s after the failure: got nil, want the failure", name)
					}
				case <-time.After(5 * time.Second):
					t.Errorf("%s after the failure hangs", name)
				}
			}
		})
	}
}
