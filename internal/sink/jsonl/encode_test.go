package jsonl

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
)

// TestLinesAsEncodingJSON checks the hand-written encoder against
// encoding/json (HTML escaping off, as the sink always used) on points that
// stress every field: odd strings, extreme counts and times.
func TestLinesAsEncodingJSON(t *testing.T) {
	strs := []string{
		"", "CustomerRouting", "Billing Main", "Payment<Taken>", "a&b>c",
		`quote"d`, `back\slash`, "tab\there", "new\nline", "cr\r", "nul\x00",
		"bell\x07", "\b\f", "\x1f", "del\x7f", "café", "日本語", "emoji 😀",
		"bad utf-8 \xff\xfe", "cut \xe6\x97", "\u2028 and \u2029", "</script>",
		"\ufffd", "space at end ",
	}
	times := []time.Time{
		time.Date(2023, 3, 5, 8, 18, 0, 0, time.UTC),
		time.Date(2023, 3, 5, 8, 18, 0, 500_000_000, time.UTC),
		time.Date(2023, 3, 5, 8, 18, 0, 123_456_789, time.UTC),
		time.Date(2023, 3, 5, 9, 18, 0, 0, time.FixedZone("CET", 3600)),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		{},
	}
	widths := []time.Duration{10 * time.Second, time.Minute, 0, 1500 * time.Millisecond, -time.Second}
	counts := []int64{0, 1, -1, 42, math.MaxInt64, math.MinInt64}
	tagSets := []map[string]string{nil, {}, {"env": "prod"}, {"z": "1", "a": `x"y`, "ü\n": "<&>"}}

	for _, tags := range tagSets {
		s := NewWriter(nil)
		s.tags, s.tagsJSON = tags, encodeTags(tags)
		var n int
		for i, flow := range strs {
			for j, metric := range strs {
				p := flowmetrics.Point{
					Flow: flow, Metric: metric,
					Bucket: times[(i+j)%len(times)],
					Width:  widths[(i*3+j)%len(widths)],
					Count:  counts[(i+j*5)%len(counts)],
				}
				got, err := appendLine(nil, p, s.tags, s.tagsJSON)
				if err != nil {
					t.Fatalf("%q/%q: %v", flow, metric, err)
				}
				want := encodingJSON(t, p, tags)
				if !bytes.Equal(got, want) {
					t.Errorf("tags %v, point %+v:\n got %s\nwant %s", tags, p, got, want)
				}
				n++
			}
		}
		if n != len(strs)*len(strs) {
			t.Fatalf("compared %d lines, want %d", n, len(strs)*len(strs))
		}
	}
}

// TestLineOutOfRangeYear checks that a time encoding/json refuses is refused
// the same way, not written.
func TestLineOutOfRangeYear(t *testing.T) {
	var buf bytes.Buffer
	s := NewWriter(&buf)
	p := flowmetrics.Point{Flow: "F", Metric: "M", Bucket: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), Width: 10 * time.Second, Count: 1}
	if err := s.Send(context.Background(), []flowmetrics.Point{p}); err == nil {
		t.Fatalf("got no error for year 10000, want one; wrote %q", buf.String())
	}
	if buf.Len() != 0 {
		t.Errorf("got %q written, want nothing", buf.String())
	}
}

// TestSendReusesNoStaleBytes sends a long batch, then a short one, through
// the same sink: the second must not carry anything of the first.
func TestSendReusesNoStaleBytes(t *testing.T) {
	var buf bytes.Buffer
	s := NewWriter(&buf)
	ctx := context.Background()
	if err := s.Send(ctx, append(pts, pts...)); err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	if err := s.Send(ctx, pts[:1]); err != nil {
		t.Fatal(err)
	}
	if got, want := buf.String(), string(encodingJSON(t, pts[0], nil)); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func encodingJSON(t *testing.T, p flowmetrics.Point, tags map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(Line{Flow: p.Flow, Metric: p.Metric, Timestamp: p.Bucket.UTC(), IntervalSeconds: int64(p.Width / time.Second), Count: p.Count, Tags: tags}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func BenchmarkSend(b *testing.B) {
	points := make([]flowmetrics.Point, 1000)
	for i := range points {
		points[i] = flowmetrics.Point{Flow: "CustomerRouting", Metric: "Transfer_Sales", Bucket: time.Date(2023, 3, 5, 8, 18, i%60, 0, time.UTC), Width: 10 * time.Second, Count: int64(i)}
	}
	s := NewWriter(discard{})
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Send(context.Background(), points); err != nil {
			b.Fatal(err)
		}
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
