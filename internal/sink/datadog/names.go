package datadog

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/flowmetrics/flowmetrics/internal/naming"
)

// MaxNameLen and MaxTagLen are Datadog's length limits, in characters.
const (
	MaxNameLen = 200
	MaxTagLen  = 200
)

// MetricName applies Datadog's metric name rules: ASCII letters, digits, "_"
// and "."; it starts with a letter; at most 200 characters. Letters are
// folded to ASCII first (naming.Fold: "Größe" → "Grosse", as in every sink
// that needs ASCII). Each run of other characters (spaces, dashes, letters
// with no ASCII spelling) becomes one "_", leading
// characters that are not letters are removed, and a name left empty becomes
// naming.DefaultName. Metric names are case-sensitive in Datadog, so case is
// kept.
func MetricName(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	bad := false
	for _, r := range naming.Fold(s) {
		ok := r < utf8.RuneSelf && (r == '_' || r == '.' || isASCIILetter(r) || r >= '0' && r <= '9')
		if !ok {
			bad = true
			continue
		}
		if b.Len() == 0 && !isASCIILetter(r) {
			bad = false
			continue
		}
		if bad && b.Len() > 0 {
			b.WriteByte('_')
		}
		bad = false
		b.WriteRune(r)
	}
	out := b.String()
	if out == "" {
		return naming.DefaultName
	}
	if len(out) > MaxNameLen {
		out = out[:MaxNameLen]
	}
	return out
}

// Tag renders a key:value tag by Datadog's tag rules: lower case; Unicode
// letters, digits, "_", "-", ":", "." and "/"; starts with a letter; at most
// 200 characters. Each run of other characters becomes one "_". An empty
// value gives the bare key.
//
// Datadog lower-cases tags itself; doing it here means two spellings that
// Datadog would merge ("flow:Billing" and "flow:billing") are merged before
// the points are summed, so the totals this package keeps per series agree
// with the series Datadog stores.
func Tag(key, value string) string {
	s := key
	if value != "" {
		s = key + ":" + value
	}
	s = strings.ToLower(s)
	var b strings.Builder
	b.Grow(len(s))
	n, bad := 0, false
	for _, r := range s {
		ok := unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("_-:./", r)
		if !ok {
			bad = true
			continue
		}
		if n == 0 && !unicode.IsLetter(r) {
			bad = false
			continue
		}
		if bad && n > 0 {
			if n+1 >= MaxTagLen {
				break
			}
			b.WriteByte('_')
			n++
		}
		bad = false
		if n >= MaxTagLen {
			break
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

func isASCIILetter(r rune) bool { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }

// Tags renders a Namer's tags for flow and metric with Tag, dropping any that
// sanitise to nothing.
func Tags(n *naming.Namer, flow, metric string) []string {
	nt := n.Tags(flow, metric)
	out := make([]string, 0, len(nt))
	for _, t := range nt {
		if s := Tag(t.Key, t.Value); s != "" {
			out = append(out, s)
		}
	}
	return out
}
