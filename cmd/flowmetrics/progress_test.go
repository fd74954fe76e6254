package main

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestProgressBar draws the bar for inputs whose size is known and large,
// and nothing for small or unsized (stdin) input.
func TestProgressBar(t *testing.T) {
	big := input{name: "a", size: 16 << 20, read: new(atomic.Int64)}
	var out syncWriter
	var buf strings.Builder
	out.w = &buf
	output := func() string { out.mu.Lock(); defer out.mu.Unlock(); return buf.String() }
	// The bar redraws every 200 ms; wait (bounded) for each state to show.
	waitFor := func(s string) {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if strings.Contains(output(), s) {
				return
			}
		}
	}
	r := &replayer{}
	stop := r.showProgress(&out, []input{big})
	big.read.Store(8 << 20)
	waitFor("50.0%")
	big.read.Store(16 << 20)
	waitFor("100.0%")
	stop()
	got := output()
	for _, want := range []string{"[===============               ]  50.0% 8/16 MiB", "[==============================] 100.0% 16/16 MiB", "\r\033[K"} {
		if !strings.Contains(got, want) {
			t.Errorf("bar output %q: missing %q", got, want)
		}
	}

	for name, in := range map[string]input{
		"small file": {name: "s", size: 1 << 20, read: new(atomic.Int64)},
		"stdin":      {name: "stdin", read: new(atomic.Int64)},
	} {
		var b strings.Builder
		stop := r.showProgress(&syncWriter{w: &b}, []input{in})
		time.Sleep(250 * time.Millisecond)
		stop()
		if b.Len() != 0 {
			t.Errorf("%s: got bar output %q, want none", name, b.String())
		}
	}
}
