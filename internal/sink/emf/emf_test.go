package emf

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
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

var t0 = time.Date(2026, 11, 20, 9, 31, 40, 0, time.UTC)

func pt(flow, metric string, at time.Time, n int64) flowmetrics.Point {
	return flowmetrics.Point{Flow: flow, Metric: metric, Bucket: at, Width: 10 * time.Second, Count: n}
}

// samplePoints are the flows of the sample events, with the awkward names
// the flow contract allows.
var samplePoints = []flowmetrics.Point{
	pt("CustomerRouting", "Unknown", t0, 3),
	pt("CustomerRouting", "Unknown", t0, 2), // same series and bucket: summed
	pt("CustomerRouting", "Unknown", t0.Add(10*time.Second), 1),
	pt("Customer Routing", "Transfer.To-Agent", t0, 1),
	pt("Kundenzufriedenheit", "Größe", t0, 2),
	pt("Señal <&>", "\"quoted\"\ttab", t0, 1),
	pt("日本", "Metric", t0, 1),
}

func newSink(t *testing.T, cfg Config, nc naming.Config) (*Sink, *bytes.Buffer) {
	t.Helper()
	var buf bytes.Buffer
	if cfg.Path == "" {
		cfg.Writer = &buf
	}
	s, err := New(cfg, sink.Deps{Namer: naming.New(nc), Metrics: telemetry.New()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s, &buf
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{}, ""},
		{"file", Config{Namespace: "Contact Center/IVR#1", Path: "/var/log/emf.log", StorageResolution: 1}, ""},
		{"aws prefix", Config{Namespace: "AWS/Lambda"}, "reserved"},
		{"bad char", Config{Namespace: "Genesys|Flows"}, "not allowed"},
		{"non-ascii", Config{Namespace: "Génesys"}, "not allowed"},
		{"blank", Config{Namespace: "   "}, "non-space"},
		{"too long", Config{Namespace: strings.Repeat("n", 256)}, "longer than 255"},
		{"resolution", Config{StorageResolution: 10}, "storage_resolution"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.wantErr == "" && err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("got %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	many := map[string]string{}
	for i := 0; i < 29; i++ {
		many[fmt.Sprintf("t%02d", i)] = "v"
	}
	tests := []struct {
		name    string
		cfg     Config
		nc      naming.Config
		wantErr string
	}{
		{"omit without template", Config{OmitFlowDimensions: true}, naming.Config{}, "needs naming.template"},
		{"too many dimensions", Config{}, naming.Config{Tags: many}, "30"},
		{"names clash after sanitising", Config{}, naming.Config{Tags: map[string]string{"tëam": "a", "team": "b"}}, "used twice"},
		{"unwritable file", Config{Path: filepath.Join(t.TempDir(), "no", "such", "dir")}, naming.Config{}, "open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, sink.Deps{Namer: naming.New(tt.nc), Metrics: telemetry.New()})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestGolden(t *testing.T) {
	var hundredAndOne []flowmetrics.Point
	for i := 0; i < 101; i++ {
		hundredAndOne = append(hundredAndOne, pt("Flow", fmt.Sprintf("M%03d", i), t0, int64(i+1)))
	}
	tests := []struct {
		name   string
		cfg    Config
		nc     naming.Config
		points []flowmetrics.Point
	}{
		{"default", Config{}, naming.Config{}, samplePoints},
		{"static_tags", Config{Namespace: "Contact Center", StorageResolution: 1}, naming.Config{Tags: map[string]string{"env": "prod", ":team": "cx ops"}}, samplePoints},
		{"template", Config{}, naming.Config{Template: "{flow}.{metric}"}, samplePoints},
		{"template_grouped", Config{OmitFlowDimensions: true}, naming.Config{Template: "{flow}.{metric}", Tags: map[string]string{"env": "prod"}}, samplePoints},
		{"grouped_101", Config{OmitFlowDimensions: true}, naming.Config{Template: "genesys.{flow}.{metric}"}, hundredAndOne},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, buf := newSink(t, tt.cfg, tt.nc)
			if err := s.Send(context.Background(), tt.points); err != nil {
				t.Fatalf("Send: got %v, want nil", err)
			}
			checkLines(t, buf.Bytes())
			golden.Check(t, filepath.Join("testdata", tt.name+".golden"), buf.Bytes())
		})
	}
}

func checkLines(t *testing.T, out []byte) {
	t.Helper()
	if len(out) == 0 || out[len(out)-1] != '\n' {
		t.Fatalf("got output %q, want newline-terminated lines", out)
	}
	for i, line := range bytes.Split(bytes.TrimSuffix(out, []byte("\n")), []byte("\n")) {
		for _, e := range validateEMF(line) {
			t.Errorf("line %d: %s\n%s", i+1, e, line)
		}
	}
}

// TestLimits feeds names at and beyond CloudWatch's limits and checks that
// every line is still valid.
func TestLimits(t *testing.T) {
	tests := []struct {
		name   string
		nc     naming.Config
		flow   string
		metric string
	}{
		{"long value", naming.Config{}, strings.Repeat("f", 3000), "m"},
		{"long multibyte value", naming.Config{}, strings.Repeat("é", 1500), "m"},
		{"control characters", naming.Config{}, "a\x00b\x1fc\x7f", "\n"},
		{"only spaces", naming.Config{}, "   ", " "},
		{"long template name", naming.Config{Template: "{flow}{metric}"}, strings.Repeat("x", 600), "y"},
		{"name equals dimension", naming.Config{Template: "{metric}", Tags: map[string]string{"env": "p"}}, "f", "env"},
		{"name equals flow", naming.Config{Template: "{metric}"}, "f", "flow"},
		{"name equals _aws", naming.Config{Template: "{metric}"}, "f", "_aws"},
		{"long tag", naming.Config{Tags: map[string]string{strings.Repeat("k", 300): strings.Repeat("v", 2000)}}, "f", "m"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, buf := newSink(t, Config{}, tt.nc)
			if err := s.Send(context.Background(), []flowmetrics.Point{pt(tt.flow, tt.metric, t0, 1)}); err != nil {
				t.Fatal(err)
			}
			checkLines(t, buf.Bytes())
		})
	}
}

func TestDimensionValue(t *testing.T) {
	tests := []struct{ in, want string }{
		{"CustomerRouting", "CustomerRouting"},
		{"Customer Routing", "Customer Routing"},
		{"Größe", "Grosse"},
		{"Café", "Cafe"},
		{"日本", "__"},
		{"a\tb\nc", "a_b_c"},
		{"", "_"},
		{"  ", "_"},
	}
	for _, tt := range tests {
		if got := dimensionValue(tt.in); got != tt.want {
			t.Errorf("dimensionValue(%q): got %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestTimestamp(t *testing.T) {
	s, buf := newSink(t, Config{}, naming.Config{})
	at := time.Date(2026, 11, 20, 9, 31, 40, 0, time.FixedZone("CET", 3600))
	if err := s.Send(context.Background(), []flowmetrics.Point{pt("F", "M", at, 1)}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf(`"Timestamp":%d,`, at.UnixMilli())
	if !strings.Contains(buf.String(), want) {
		t.Errorf("got %s, want it to contain %s", buf.String(), want)
	}
}

func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "emf.log")
	if err := os.WriteFile(path, []byte("earlier line\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Path: path}, sink.Deps{Namer: naming.New(naming.Config{}), Metrics: telemetry.New()})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := s.Send(context.Background(), samplePoints[:1]); err != nil {
			t.Fatalf("Send #%d: got %v, want nil", i+1, err)
		}
	}
	for i := 0; i < 2; i++ {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("Close #%d: got %v, want nil", i+1, err)
		}
	}
	if err := s.Send(context.Background(), samplePoints[:1]); err == nil {
		t.Error("Send after Close: got nil, want error")
	}
	got, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(got), "\n"), "\n")
	if len(lines) != 3 || lines[0] != "earlier line" || lines[1] != lines[2] {
		t.Errorf("got file\n%s\nwant the earlier line and the same EMF line twice", got)
	}
}

// TestCrashLeavesNothingTwice: a batch written (whole or in part) before a
// crash and before its cursor was committed is cut on the next start, so
// when it is written again CloudWatch counts it once.
func TestCrashLeavesNothingTwice(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "emf.log")
	os.WriteFile(path, []byte("earlier line\n"), 0o644)
	committed := map[string][]byte{}
	open := func() *Sink {
		s, err := New(Config{Path: path}, sink.Deps{Namer: naming.New(naming.Config{}), Metrics: telemetry.New()})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Restore(ctx, committed); err != nil {
			t.Fatal(err)
		}
		return s
	}
	commit := func(s *Sink) {
		for k, v := range s.TakeState() {
			committed[k] = v
		}
	}
	for _, leftover := range []string{"whole", "torn"} {
		t.Run(leftover, func(t *testing.T) {
			s := open()
			commit(s) // Pipeline.Register commits what Restore found
			before, _ := os.ReadFile(path)
			if err := s.Send(ctx, samplePoints[:1]); err != nil {
				t.Fatal(err)
			}
			commit(s)
			acked, _ := os.ReadFile(path)
			if err := s.Send(ctx, samplePoints[1:]); err != nil {
				t.Fatal(err)
			}
			s.Close(ctx) // the crash: the second batch is never committed
			if leftover == "torn" {
				b, _ := os.ReadFile(path)
				os.WriteFile(path, b[:len(b)-7], 0o644)
			}
			s = open()
			defer s.Close(ctx)
			if got, _ := os.ReadFile(path); string(got) != string(acked) {
				t.Errorf("after the restart: got %d bytes, want the %d acknowledged", len(got), len(acked))
			}
			if len(acked) <= len(before) {
				t.Errorf("the first batch is missing")
			}
		})
	}
}

// failAfter accepts n bytes, then fails.
type failAfter struct{ n int }

func (f *failAfter) Write(b []byte) (int, error) {
	if len(b) > f.n {
		return f.n, fmt.Errorf("disk full")
	}
	f.n -= len(b)
	return len(b), nil
}

func TestWriterErrors(t *testing.T) {
	s, err := New(Config{Writer: &failAfter{n: 10}}, sink.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), samplePoints); err == nil {
		t.Error("Send: got nil, want the write error")
	}
	// A buffered writer is flushed by Send, so nil means the lines left.
	var out bytes.Buffer
	bw := bufio.NewWriterSize(&out, 1<<16)
	s, err = New(Config{Writer: bw}, sink.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), samplePoints[:1]); err != nil {
		t.Fatal(err)
	}
	if out.Len() == 0 {
		t.Error("got nothing flushed to the underlying writer, want the line")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Send(ctx, samplePoints[:1]); err == nil {
		t.Error("Send with a cancelled context: got nil, want error")
	}
}

func TestValidatorCatchesBadLines(t *testing.T) {
	tests := []struct{ name, line, want string }{
		{"not json", `nope`, "not a JSON object"},
		{"no _aws", `{"a":1}`, "_aws"},
		{"float timestamp", `{"_aws":{"Timestamp":1.5,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[[]],"Metrics":[]}]}}`, "integer"},
		{"missing dimension", `{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["d"]],"Metrics":[]}]}}`, "target member"},
		{"non-ascii value", `{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[["d"]],"Metrics":[]}]},"d":"é"}`, "ASCII"},
		{"string metric", `{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[[]],"Metrics":[{"Name":"m"}]}]},"m":"1"}`, "not numeric"},
		{"bad unit", `{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[[]],"Metrics":[{"Name":"m","Unit":"Things"}]}]},"m":1}`, "unit"},
		{"no dimension sets", `{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"N","Dimensions":[],"Metrics":[]}]}}`, "at least one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := validateEMF([]byte(tt.line))
			if !strings.Contains(strings.Join(errs, "; "), tt.want) {
				t.Errorf("got %q, want an error containing %q", errs, tt.want)
			}
		})
	}
}
