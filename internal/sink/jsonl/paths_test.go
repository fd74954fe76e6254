package jsonl

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/sink"
)

var pathPts = []flowmetrics.PathPoint{
	{Kind: flowmetrics.PathExit, Flow: "IVR", Metric: "Menu", Time: time.Date(2026, 11, 20, 9, 0, 1, 500e6, time.UTC), Conversation: "c1"},
	{Kind: flowmetrics.PathStep, Flow: "IVR", Metric: "Menu", Seconds: 0, Time: time.Date(2026, 11, 20, 9, 0, 1, 0, time.UTC), Conversation: "c1"},
	{Kind: flowmetrics.PathTiming, Name: "ivr_to_agent", Seconds: 93.25, Time: time.Date(2026, 11, 20, 9, 2, 0, 0, time.UTC), Conversation: "c1"},
	{Kind: flowmetrics.PathFunnel, Name: "main", Step: "IVR/Start", Time: time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC), Conversation: "c1"},
	{Kind: flowmetrics.PathExperiment, Name: "offer", Variant: "B", Step: "IVR/Offer<B>", Time: time.Date(2026, 11, 20, 9, 0, 0, 0, time.UTC), Conversation: "c1"},
}

func TestSendPathsGolden(t *testing.T) {
	var buf bytes.Buffer
	s := NewWriter(&buf)
	if err := s.SendPaths(context.Background(), pathPts); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/paths.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != string(want) {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// A batch's counts and path points are one batch in the file: a failed
// SendPaths leaves the counts, and the retried SendPaths writes its lines
// once; the state after both is the file's whole length.
func TestSendPathsToAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	s, err := New(Config{Path: path}, sink.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Restore(ctx, map[string][]byte{}); err != nil {
		t.Fatal(err)
	}
	s.TakeState()
	if err := s.Send(ctx, pts); err != nil {
		t.Fatal(err)
	}
	if err := s.SendPaths(ctx, pathPts); err != nil {
		t.Fatal(err)
	}
	if u := s.TakeState(); len(u) != 1 {
		t.Errorf("state update: got %d keys, want the file's", len(u))
	}
	s.Close(ctx)
	b, _ := os.ReadFile(path)
	golden, _ := os.ReadFile("testdata/paths.jsonl")
	points, _ := os.ReadFile("testdata/points.jsonl")
	if string(b) != string(points)+string(golden) {
		t.Errorf("file: got\n%s\nwant the count lines, then the path lines", b)
	}
}
