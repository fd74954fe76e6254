package corpus

import (
	"bytes"
	"strings"
	"testing"
)

func TestWriteIsReproducibleAndCountsOccurrences(t *testing.T) {
	var a, b bytes.Buffer
	na, err := Write(&a, Options{Events: 500, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	nb, _ := Write(&b, Options{Events: 500, Seed: 1})
	if a.String() != b.String() || na != nb {
		t.Error("same seed: got different corpora, want identical")
	}
	if got := strings.Count(a.String(), "\n"); got != 500 {
		t.Errorf("got %d events, want 500", got)
	}
	if na < 100 || na > 500 {
		t.Errorf("got %d occurrences in 500 events, want a realistic share (100–500)", na)
	}
}
