package sinktest_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/flowmetrics/flowmetrics/internal/config"
)

var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

// TestREADMESamples decodes each sink README's sample YAML with the real
// config loader (unknown keys rejected) and validates it, so a sample
// cannot drift from the code.
func TestREADMESamples(t *testing.T) {
	readmes, err := filepath.Glob("../*/README.md")
	if err != nil || len(readmes) < 7 {
		t.Fatalf("sink READMEs: got %v (%v), want one per sink", readmes, err)
	}
	for _, path := range readmes {
		sinkDir := filepath.Base(filepath.Dir(path))
		t.Run(sinkDir, func(t *testing.T) {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			blocks := yamlBlock.FindAllSubmatch(b, -1)
			if len(blocks) == 0 {
				t.Fatal("no ```yaml sample")
			}
			for i, m := range blocks {
				c := config.Default()
				if err := config.Decode(strings.NewReader(string(m[1])), &c); err != nil {
					t.Errorf("sample %d: decode: %v", i+1, err)
					continue
				}
				if err := c.Validate(); err != nil {
					t.Errorf("sample %d: validate: %v", i+1, err)
				}
				if !strings.Contains(string(m[1]), "sinks:") {
					continue
				}
				if !mentions(c.Sinks, sinkDir) {
					t.Errorf("sample %d: does not configure the %s sink", i+1, sinkDir)
				}
			}
		})
	}
}

// mentions reports whether s configures the sink of the named package.
func mentions(s config.Sinks, pkg string) bool {
	switch pkg {
	case "prometheus":
		return true // on by default
	case "jsonl":
		return s.JSONL != nil
	case "datadog":
		return s.Datadog != nil
	case "dogstatsd":
		return s.DogStatsD != nil
	case "emf":
		return s.EMF != nil
	case "otlp":
		return s.OTLP != nil
	case "statsd":
		return s.StatsD != nil
	}
	return false
}
