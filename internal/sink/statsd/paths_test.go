package statsd

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/golden"
	"github.com/flowmetrics/flowmetrics/internal/naming"
	"github.com/flowmetrics/flowmetrics/internal/sink"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

// TestPathsGolden pins the lines of a path batch in each tag style:
// counters summed per series, one timer (|ms) per duration.
func TestPathsGolden(t *testing.T) {
	at := t0.Add(-time.Minute)
	points := []flowmetrics.PathPoint{
		{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathExit, Flow: "Main IVR", Metric: "MenuChosen", Time: at.Add(2 * time.Second), Conversation: "c2"},
		{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 30, Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathStep, Flow: "Main IVR", Metric: "MenuChosen", Seconds: 12.375, Time: at.Add(2 * time.Second), Conversation: "c2"},
		{Kind: flowmetrics.PathTiming, Name: "ivr_to_agent", Seconds: 93.25, Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathFunnel, Name: "callback", Step: "Callback/Offered", Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathExperiment, Name: "callback_offer", Variant: "B", Step: "Callback/AcceptedB", Time: at, Conversation: "c1"},
		{Kind: flowmetrics.PathStep, Flow: "Größe", Metric: "Ärger", Seconds: 0.5, Time: at, Conversation: "c3"},
	}
	for _, style := range []string{TagStyleNone, TagStyleGraphite, TagStyleDogStatsD} {
		t.Run(style, func(t *testing.T) {
			s, err := New(Config{Addr: "127.0.0.1:9", TagStyle: style}, sink.Deps{Namer: naming.New(naming.Config{Tags: map[string]string{"env": "prod"}}), Metrics: telemetry.New(), Log: quiet})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range s.PathDatagrams(points) {
				got = append(got, string(d))
			}
			golden.Check(t, filepath.Join("testdata", "paths-"+style+".golden"), []byte(strings.Join(got, "\n")+"\n"))
		})
	}
}
