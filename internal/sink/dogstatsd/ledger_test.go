package dogstatsd

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink/datadog"
)

// TestStateSurvivesRestart: sink A sends a bucket and stops; sink B, the
// next process, gets a late point for the same bucket. Restored with the
// state A's send produced (what the pipeline commits with the cursor), B
// sends the running total; without it, B sends 1, which Datadog would keep
// instead of 3.
func TestStateSurvivesRestart(t *testing.T) {
	tests := []struct {
		name    string
		restore bool
		want    string
	}{
		{"no state undercounts", false, "genesys.flow.metric:1|c|#flow:f,metric:m|T1795167090"},
		{"state restored", true, "genesys.flow.metric:3|c|#flow:f,metric:m|T1795167090"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := listenUDP(t)
			cfg := Config{Addr: l.addr}
			a, _ := newSink(t, cfg, naming.Config{})
			if err := a.Send(context.Background(), []flowmetrics.Point{pt("F", "M", 20*time.Second, 2)}); err != nil {
				t.Fatal(err)
			}
			if got := l.lines(t, 1); len(got) != 1 || got[0] != "genesys.flow.metric:2|c|#flow:f,metric:m|T1795167090" {
				t.Fatalf("A sent %q", got)
			}
			state := map[string][]byte{}
			for k, v := range a.TakeState() {
				state[k] = v
			}
			if len(state) == 0 {
				t.Fatal("A's TakeState: got nothing, want its totals")
			}
			if err := a.Close(context.Background()); err != nil {
				t.Fatal(err)
			}

			b, _ := newSink(t, cfg, naming.Config{})
			if tt.restore {
				if err := b.Restore(context.Background(), state); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.Send(context.Background(), []flowmetrics.Point{pt("F", "M", 19*time.Second, 1)}); err != nil {
				t.Fatal(err)
			}
			if got := l.lines(t, 1); strings.Join(got, "\n") != tt.want {
				t.Errorf("B sent %q, want %q", got, tt.want)
			}
		})
	}
}

// TestDistributionMode: one value of 1 per occurrence, no timestamp (DogStatsD
// distributions carry none), no late policy (the Agent stamps on arrival),
// and no state.
func TestDistributionMode(t *testing.T) {
	l := listenUDP(t)
	s, _ := newSink(t, Config{Addr: l.addr, Mode: datadog.Distribution, LatePolicy: datadog.Drop}, naming.Config{})
	points := []flowmetrics.Point{pt("F", "M", 20*time.Second, 2), pt("F", "M", 3*time.Hour, 1), pt("G", "N", 0, 1)}
	if err := s.Send(context.Background(), points); err != nil {
		t.Fatal(err)
	}
	got := l.lines(t, 4)
	want := map[string]int{"genesys.flow.metric:1|d|#flow:f,metric:m": 3, "genesys.flow.metric:1|d|#flow:g,metric:n": 1}
	have := map[string]int{}
	for _, line := range got {
		have[line]++
	}
	for k, n := range want {
		if have[k] != n {
			t.Errorf("%q: got %d lines, want %d (all: %q)", k, have[k], n, got)
		}
	}
	if len(got) != 4 {
		t.Errorf("got %d lines, want 4: %q", len(got), got)
	}
	if u := s.TakeState(); len(u) != 0 {
		t.Errorf("TakeState in distribution mode: got %d keys, want none", len(u))
	}
}
