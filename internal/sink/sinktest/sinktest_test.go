package sinktest

import (
	"strings"
	"testing"

	"github.com/flowmetrics/flowmetrics"
)

// TestPathPointsCoverEveryKind: the sample has a batch of each PathKind, so
// a kind added to flowmetrics without a sample here fails.
func TestPathPointsCoverEveryKind(t *testing.T) {
	sample := PathPoints()
	for k := flowmetrics.PathKind(1); !strings.HasPrefix(k.String(), "kind"); k++ {
		points := sample[k]
		if len(points) == 0 {
			t.Errorf("PathPoints has no %s points", k)
		}
		for _, p := range points {
			if p.Kind != k {
				t.Errorf("PathPoints[%s] holds a %s point", k, p.Kind)
			}
			if k.IsDuration() != (p.Seconds != 0) {
				t.Errorf("PathPoints[%s]: Seconds %v", k, p.Seconds)
			}
		}
	}
	if len(sample) != len(pathKinds) {
		t.Errorf("PathPoints: %d kinds, pathKinds: %d", len(sample), len(pathKinds))
	}
}
