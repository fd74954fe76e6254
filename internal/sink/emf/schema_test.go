package emf

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
)

// The rules below are the EMF specification's (CloudWatch User Guide,
// "Specification: Embedded metric format", and its JSON schema) plus
// CloudWatch's own limits on names and dimension values (API reference,
// Dimension and MetricDatum), written as Go checks.

var unitRE = regexp.MustCompile(`^(Seconds|Microseconds|Milliseconds|Bytes|Kilobytes|Megabytes|Gigabytes|Terabytes|Bits|Kilobits|Megabits|Gigabits|Terabits|Percent|Count|Bytes/Second|Kilobytes/Second|Megabytes/Second|Gigabytes/Second|Terabytes/Second|Bits/Second|Kilobits/Second|Megabits/Second|Gigabits/Second|Terabits/Second|Count/Second|None)$`)

const maxEventBytes = 256 * 1024 // the older, smaller CloudWatch Logs event limit

// validateEMF returns the rules one log line breaks.
func validateEMF(line []byte) []string {
	var errs []string
	bad := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }

	if len(line) > maxEventBytes {
		bad("line is %d bytes, more than %d", len(line), maxEventBytes)
	}
	if bytes.ContainsAny(line, "\n\r") {
		bad("line contains a line break")
	}
	// The message must be one JSON object with nothing before or after it.
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var root map[string]any
	if err := dec.Decode(&root); err != nil {
		return append(errs, "not a JSON object: "+err.Error())
	}
	if dec.More() {
		bad("data after the JSON object")
	}
	aws, ok := root["_aws"].(map[string]any)
	if !ok {
		return append(errs, "_aws: missing or not an object")
	}
	ts, ok := aws["Timestamp"].(json.Number)
	if !ok {
		bad("_aws.Timestamp: missing or not a number")
	} else if _, err := ts.Int64(); err != nil || strings.ContainsAny(ts.String(), ".eE") {
		bad("_aws.Timestamp %s: not an integer of milliseconds", ts)
	}
	for k := range aws {
		if k != "Timestamp" && k != "CloudWatchMetrics" {
			bad("_aws.%s: unexpected member", k)
		}
	}
	dirs, ok := aws["CloudWatchMetrics"].([]any)
	if !ok || len(dirs) == 0 {
		return append(errs, "_aws.CloudWatchMetrics: missing, not an array or empty")
	}
	dimRefs := map[string]bool{}
	metricRefs := map[string]bool{}
	for i, d := range dirs {
		dir, ok := d.(map[string]any)
		if !ok {
			bad("CloudWatchMetrics[%d]: not an object", i)
			continue
		}
		for k := range dir {
			if k != "Namespace" && k != "Dimensions" && k != "Metrics" {
				bad("CloudWatchMetrics[%d].%s: MetricDirective must not have other members", i, k)
			}
		}
		ns, ok := dir["Namespace"].(string)
		if !ok || len(ns) < 1 || len(ns) > MaxNamespaceLength || strings.HasPrefix(ns, "AWS/") || !isASCII(ns) {
			bad("CloudWatchMetrics[%d].Namespace %q: must be 1-255 ASCII characters, not AWS/", i, ns)
		}
		sets, ok := dir["Dimensions"].([]any)
		if !ok || len(sets) < 1 {
			bad("CloudWatchMetrics[%d].Dimensions: must be an array of at least one DimensionSet", i)
		}
		for j, s := range sets {
			set, ok := s.([]any)
			if !ok {
				bad("Dimensions[%d]: not an array", j)
				continue
			}
			if len(set) > MaxDimensions {
				bad("Dimensions[%d]: %d keys, more than %d", j, len(set), MaxDimensions)
			}
			for _, k := range set {
				name, ok := k.(string)
				if !ok || len(name) < 1 || len(name) > MaxDimensionName || !isASCII(name) || strings.HasPrefix(name, ":") || strings.TrimSpace(name) == "" {
					bad("dimension name %q: must be 1-250 printable ASCII characters, not starting with ':'", k)
					continue
				}
				dimRefs[name] = true
			}
		}
		metrics, ok := dir["Metrics"].([]any)
		if !ok {
			bad("CloudWatchMetrics[%d].Metrics: not an array", i)
		}
		if len(metrics) > MaxMetricsPerLine {
			bad("CloudWatchMetrics[%d].Metrics: %d definitions, more than %d", i, len(metrics), MaxMetricsPerLine)
		}
		for _, m := range metrics {
			def, ok := m.(map[string]any)
			if !ok {
				bad("MetricDefinition %v: not an object", m)
				continue
			}
			for k := range def {
				if k != "Name" && k != "Unit" && k != "StorageResolution" {
					bad("MetricDefinition.%s: unexpected member", k)
				}
			}
			name, ok := def["Name"].(string)
			if !ok || len(name) < 1 || len(name) > MaxMetricName || !isASCII(name) {
				bad("metric name %q: must be 1-255 printable ASCII characters", def["Name"])
				continue
			}
			metricRefs[name] = true
			if u, ok := def["Unit"]; ok {
				if us, ok := u.(string); !ok || !unitRE.MatchString(us) {
					bad("metric %q: unit %v is not a CloudWatch unit", name, u)
				}
			}
			if r, ok := def["StorageResolution"]; ok {
				if n, ok := r.(json.Number); !ok || (n.String() != "1" && n.String() != "60") {
					bad("metric %q: StorageResolution %v must be 1 or 60", name, r)
				}
			}
		}
	}
	for name := range dimRefs {
		v, ok := root[name].(string)
		switch {
		case !ok:
			bad("dimension %q: target member missing or not a string", name)
		case len(v) < 1 || len(v) > MaxDimensionValue:
			bad("dimension %q: value of %d characters, want 1-1024", name, len(v))
		case !isASCII(v) || strings.TrimSpace(v) == "":
			bad("dimension %q: value %q must be printable ASCII with a non-space character", name, v)
		}
		if metricRefs[name] {
			bad("member %q is both a dimension and a metric", name)
		}
	}
	for name := range metricRefs {
		switch v := root[name].(type) {
		case json.Number:
		case []any:
			if len(v) > 100 {
				bad("metric %q: %d values, more than 100", name, len(v))
			}
			for _, e := range v {
				if _, ok := e.(json.Number); !ok {
					bad("metric %q: value %v is not a number", name, e)
				}
			}
		default:
			bad("metric %q: target member missing or not numeric", name)
		}
	}
	return errs
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
