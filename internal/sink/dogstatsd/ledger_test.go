package dogstatsd

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
)

// TestLedgerSurvivesRestart: sink A sends a bucket and stops; sink B, the
// next process, gets a late point for the same bucket. With a ledger file B
// sends the running total; without one (the old behaviour) it sends 1, which
// Datadog would keep instead of 3.
func TestLedgerSurvivesRestart(t *testing.T) {
	tests := []struct {
		name   string
		ledger bool
		want   string
	}{
		{"memory ledger undercounts (the old behaviour)", false, "genesys.flow.metric:1|c|#flow:f,metric:m|T1795167090"},
		{"ledger file", true, "genesys.flow.metric:3|c|#flow:f,metric:m|T1795167090"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := listenUDP(t)
			cfg := Config{Addr: l.addr}
			if tt.ledger {
				cfg.LedgerPath = datadog.LedgerPath(t.TempDir(), Name)
			}
			a, _ := newSink(t, cfg, naming.Config{})
			if err := a.Send(context.Background(), []flowmetrics.Point{pt("F", "M", 20*time.Second, 2)}); err != nil {
				t.Fatal(err)
			}
			if got := l.lines(t, 1); len(got) != 1 || got[0] != "genesys.flow.metric:2|c|#flow:f,metric:m|T1795167090" {
				t.Fatalf("A sent %q", got)
			}
			if err := a.Close(context.Background()); err != nil {
				t.Fatal(err)
			}

			b, _ := newSink(t, cfg, naming.Config{})
			if err := b.Send(context.Background(), []flowmetrics.Point{pt("F", "M", 19*time.Second, 1)}); err != nil {
				t.Fatal(err)
			}
			if got := l.lines(t, 1); strings.Join(got, "\n") != tt.want {
				t.Errorf("B sent %q, want %q", got, tt.want)
			}
		})
	}
}

// TestLedgerPathInUse: the datadog and dogstatsd sinks must not share a
// ledger file.
func TestLedgerPathInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger")
	other, err := datadog.OpenLedger(path, datadog.Name, nil, datadog.Clamp, clock, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	clearClientEnv(t)
	if _, err := New(Config{Addr: "127.0.0.1:8125", LedgerPath: path, Now: clock}, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "already open") {
		t.Errorf("got %v, want an error", err)
	}
}
