package jsonl

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
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
		st := &s.stamps
		var n int
		for i, flow := range strs {
			for j, metric := range strs {
				p := flowmetrics.Point{
					Flow: flow, Metric: metric,
					Bucket: times[(i+j)%len(times)],
					Width:  widths[(i*3+j)%len(widths)],
					Count:  counts[(i+j*5)%len(counts)],
				}
				got, err := appendLine(nil, st, &p, s.tags, s.tagsJSON)
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

// TestPathLinesAsEncodingJSON checks the hand-written path-line encoder
// against encoding/json on the PathLine of each point (HTML escaping off),
// built here field by field as the line's documentation says: every kind,
// odd strings in every field, seconds written plainly, with an exponent or
// refused, and extreme times. A point encoding/json refuses must be
// refused too.
func TestPathLinesAsEncodingJSON(t *testing.T) {
	strs := []string{
		"", "IVR", "Offer<B>", "a&b>c", `quote"d`, `back\slash`, "tab\there",
		"new\nline", "nul\x00", "\x1f", "del\x7f", "café", "emoji 😀",
		"bad utf-8 \xff\xfe", "cut \xe6\x97", "\u2028 and \u2029", "</script>",
	}
	secs := []float64{0, math.Copysign(0, -1), 93.25, 0.1, 1.0 / 3, -5, 1e-6, 9.99e-7, 1e-7, 5e-324,
		1e20, 1e21, -1e21, 123456789.125, math.MaxFloat64, math.NaN(), math.Inf(1), math.Inf(-1)}
	times := []time.Time{
		time.Date(2026, 11, 20, 9, 0, 1, 500e6, time.UTC),
		time.Date(2026, 11, 20, 9, 0, 1, 123_456_789, time.UTC),
		time.Date(2026, 11, 20, 10, 0, 1, 0, time.FixedZone("CET", 3600)),
		time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		{},
	}
	kinds := []flowmetrics.PathKind{flowmetrics.PathExit, flowmetrics.PathStep, flowmetrics.PathTiming,
		flowmetrics.PathFunnel, flowmetrics.PathExperiment, 0, 9}
	tagSets := []map[string]string{nil, {"env": "prod"}, {"z": "1", "a": `x"y`, "ü\n": "<&>"}}

	var n, refused int
	st := &stamps{} // one for all, as a sink keeps it: days change from line to line
	pl := &plains{} // likewise: the same strings come again and again
	for _, tags := range tagSets {
		tagsJSON := encodeTags(tags)
		for i, a := range strs {
			for j, c := range strs {
				for k, kind := range kinds {
					p := flowmetrics.PathPoint{
						Kind: kind, Flow: a, Metric: c, Name: c, Variant: a, Step: c, Conversation: strs[(i+j+k)%len(strs)],
						Seconds: secs[(i*7+j*3+k)%len(secs)],
						Time:    times[(i+j*5+k)%len(times)],
					}
					var want bytes.Buffer
					enc := json.NewEncoder(&want)
					enc.SetEscapeHTML(false)
					wantErr := enc.Encode(pathLineOf(p, tags))
					got, err := appendPathLine([]byte("prefix"), st, pl, &p, tags, tagsJSON)
					n++
					if wantErr != nil {
						refused++
						if err == nil {
							t.Errorf("point %+v: got %s, want encoding/json's error %v", p, got, wantErr)
						}
						continue
					}
					if err != nil {
						t.Fatalf("point %+v: %v", p, err)
					}
					if !bytes.Equal(got, append([]byte("prefix"), want.Bytes()...)) {
						t.Errorf("tags %v, point %+v:\n got %s\nwant prefix%s", tags, p, got, want.Bytes())
					}
				}
			}
		}
	}
	if want := len(tagSets) * len(strs) * len(strs) * len(kinds); n != want || refused == 0 || refused == n {
		t.Fatalf("compared %d lines (%d refused), want %d with some refused and some not", n, refused, want)
	}
}

// pathLineOf is the PathLine of p, built apart from the sink's code.
func pathLineOf(p flowmetrics.PathPoint, tags map[string]string) PathLine {
	l := PathLine{Path: p.Kind.String(), Timestamp: p.Time.UTC(), Conversation: p.Conversation, Tags: tags}
	secs := p.Seconds
	switch p.Kind {
	case flowmetrics.PathExit:
		l.Flow, l.Metric = p.Flow, p.Metric
	case flowmetrics.PathStep:
		l.Flow, l.Metric, l.Seconds = p.Flow, p.Metric, &secs
	case flowmetrics.PathTiming:
		l.Timing, l.Seconds = p.Name, &secs
	case flowmetrics.PathFunnel:
		l.Funnel, l.Step = p.Name, p.Step
	case flowmetrics.PathExperiment:
		l.Experiment, l.Variant, l.Step = p.Name, p.Variant, p.Step
	}
	return l
}

func BenchmarkSendPaths(b *testing.B) {
	points := make([]flowmetrics.PathPoint, 1000)
	for i := range points {
		points[i] = flowmetrics.PathPoint{Kind: flowmetrics.PathKind(1 + i%5), Flow: "CustomerRouting", Metric: "Transfer_Sales", Name: "ivr_to_agent",
			Variant: "B", Step: "CustomerRouting/Transfer_Sales", Seconds: float64(i) / 8, Time: time.Date(2023, 3, 5, 8, 18, i%60, 0, time.UTC),
			Conversation: "0b9bb7a0-7a2b-4c4e-9d7e-3b1c5e6a8f01"}
	}
	s := NewWriter(discard{})
	b.ReportAllocs()
	for b.Loop() {
		if err := s.SendPaths(context.Background(), points); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPlainAsEncodingJSON checks plain against encoding/json itself: a
// string is plain exactly when encoding/json (HTML escaping off) writes it
// between its quotes unchanged. Every byte value goes at every place of
// strings of several lengths, so each lane of a word and the tail are
// covered, and so do the runes encoding/json escapes.
func TestPlainAsEncodingJSON(t *testing.T) {
	asIs := func(s string) bool {
		b, err := appendEncoded(nil, s)
		return err == nil && string(b) == `"`+s+`"`+"\n"
	}
	check := func(s string) {
		if got, want := plain(s), asIs(s); got != want {
			t.Errorf("plain(%q): got %v, want %v", s, got, want)
		}
	}
	for _, n := range []int{0, 1, 7, 8, 9, 16, 23} {
		base := []byte(strings.Repeat("~ aZ<&>9", 3)[:n])
		check(string(base))
		for i := range base {
			for c := range 256 {
				b := slices.Clone(base)
				b[i] = byte(c)
				check(string(b))
			}
			for _, r := range []string{"é", "\u2028", "\u2029", "\ufffd", "\U0001F600"} {
				check(string(base[:i]) + r + string(base[i:]))
			}
		}
	}
}

// TestStampsAsRFC3339Nano checks the sink's time writer against the time
// package's RFC3339Nano in UTC, on times in turn that stay on one day,
// move across days (before 1970 too) and leave the years encoding/json
// writes, each ok exactly when the year is from 0 to 9999.
func TestStampsAsRFC3339Nano(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	lo, hi := time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC).Unix(), time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC).Unix()
	var st stamps
	at := time.Date(2026, 12, 6, 23, 59, 58, 0, time.UTC)
	for i := range 200_000 {
		switch rng.IntN(6) {
		case 0:
			at = at.Add(time.Duration(rng.Int64N(int64(time.Hour))))
		case 1:
			at = at.Add(-time.Duration(rng.Int64N(int64(48 * time.Hour))))
		case 2:
			at = time.Unix(lo-86400*400+rng.Int64N(hi-lo+86400*800), rng.Int64N(1e9))
		case 3:
			at = time.Unix(rng.Int64N(4e9)-2e9, rng.Int64N(1e9)).In(time.FixedZone("X", 3600*(rng.IntN(25)-12)))
		case 4:
			at = at.Truncate(time.Second).Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
		default:
			at = at.Add(time.Second)
		}
		u := at.UTC()
		y := u.Year()
		if ok := st.ok(at); ok != (y >= 0 && y <= 9999) {
			t.Fatalf("time %d, %v: ok %v", i, u, ok)
		} else if !ok {
			continue
		}
		if got, want := st.append([]byte("x"), at), u.AppendFormat([]byte("x"), time.RFC3339Nano); !bytes.Equal(got, want) {
			t.Fatalf("time %d: got %s, want %s", i, got, want)
		}
	}
}

// TestPlainsRemembered: a string found plain is remembered by its bytes'
// address and length, so a longer string from the same address (a string
// it was cut from) is still looked at, and one that is not plain is never
// taken for plain.
func TestPlainsRemembered(t *testing.T) {
	var pl plains
	whole := strings.Repeat("x", 20) + `"quoted"`
	for range 3 {
		if !pl.plain(whole[:20]) {
			t.Fatal("a plain string taken for not plain")
		}
		if pl.plain(whole) {
			t.Error("the string a plain one was cut from, with a quote, taken for plain")
		}
		if pl.plain(whole[20:]) || pl.plain("tab\there") || !pl.plain("") {
			t.Error("plain(s) differs from what s is")
		}
	}
	if n := testing.AllocsPerRun(10, func() { pl.plain(whole[:20]) }); n != 0 {
		t.Errorf("%v allocations, want none", n)
	}
}
