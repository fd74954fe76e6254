package dashboard

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// What "now" and "usual" mean, and when a difference is worth attention.
const (
	// NowSpan is what the rate now is measured over: the last minute of
	// 10 s buckets, the unfinished current one up to now, short enough to
	// show an incident within a minute.
	NowSpan = time.Minute
	// UsualSpan is what the usual rate is measured over: the hour before,
	// so that it follows the daily rhythm.
	UsualSpan = time.Hour
	// UpRatio and DownRatio are the ratios now/usual, rounded to one
	// decimal as shown, at and beyond which a metric is up or down.
	UpRatio   = 1.5
	DownRatio = 0.5
	// Sigmas is the minimum volume: a metric beyond a ratio is flagged only
	// when the occurrences now differ from the usual rate's expectation
	// over the same time by at least Sigmas × √expectation (√ at least 1, so at
	// least Sigmas occurrences), a difference chance rarely makes.
	// Otherwise it is "too few to tell".
	Sigmas = 3
)

// The trends of a flow metric, as GET /api/v1/series names them.
const (
	TrendUp    = "up"    // flagged: at least UpRatio × usual, or activity where usually none
	TrendDown  = "down"  // flagged: at most DownRatio × usual
	TrendUsual = "usual" // within the ratios
	TrendLow   = "low"   // beyond a ratio, but too few occurrences to tell
	TrendNew   = "new"   // no usual rate yet (less than 5 minutes of history)
	TrendQuiet = "quiet" // none now and none usually
)

// Trend is how a flow metric's rate now compares with its usual rate.
type Trend struct {
	Trend string
	// Ratio is now/usual rounded to one decimal, the figure shown and the
	// one the thresholds apply to; -1 when there is no usual rate or it
	// is 0.
	Ratio float64
	// Score ranks flagged metrics: how far the rate is from usual, as
	// |ln ratio| (+Inf for activity where usually none).
	Score float64
}

// Flagged reports whether the trend asks for attention.
func (t Trend) Flagged() bool { return t.Trend == TrendUp || t.Trend == TrendDown }

// Assess compares p's rate now with its usual rate.
func Assess(p PairSeries) Trend {
	if p.RateUsual < 0 {
		return Trend{Trend: TrendNew, Ratio: -1}
	}
	now := float64(p.NowCount)
	expected := p.RateUsual * p.NowMinutes
	significant := math.Abs(now-expected) >= Sigmas*math.Sqrt(max(expected, 1))
	if expected == 0 {
		switch {
		case now == 0:
			return Trend{Trend: TrendQuiet, Ratio: -1}
		case significant:
			return Trend{Trend: TrendUp, Ratio: -1, Score: math.Inf(1)}
		}
		return Trend{Trend: TrendLow, Ratio: -1}
	}
	ratio := math.Round(now/expected*10) / 10
	t := Trend{Trend: TrendUsual, Ratio: ratio}
	switch {
	case ratio >= UpRatio && significant:
		t.Trend = TrendUp
	case ratio <= DownRatio && significant:
		t.Trend = TrendDown
	case ratio >= UpRatio || ratio <= DownRatio:
		t.Trend = TrendLow
	}
	if t.Flagged() {
		t.Score = math.Abs(math.Log(max(ratio, 0.05)))
	}
	return t
}

// Attention returns the flagged metrics of s, furthest from usual first
// (then by flow and metric).
func Attention(s Series) []PairSeries {
	type flagged struct {
		p PairSeries
		t Trend
	}
	var out []flagged
	for _, p := range s.Pairs {
		if t := Assess(p); t.Flagged() {
			out = append(out, flagged{p, t})
		}
	}
	slices.SortStableFunc(out, func(a, b flagged) int { return cmp.Compare(b.t.Score, a.t.Score) })
	ps := make([]PairSeries, len(out))
	for i, f := range out {
		ps[i] = f.p
	}
	return ps
}
