package pebblestore

import (
	"testing"
	"time"
)

func TestErrorLimiter(t *testing.T) {
	var l limiter
	t0 := time.Unix(1000, 0)
	logged := 0
	for i := range 1000 {
		if ok, _ := l.allow(t0.Add(time.Duration(i) * time.Millisecond)); ok {
			logged++
		}
	}
	if logged != errorsPerWindow {
		t.Errorf("1000 errors in 1 s: got %d logged, want %d", logged, errorsPerWindow)
	}
	ok, suppressed := l.allow(t0.Add(errorWindow))
	if !ok || suppressed != 1000-errorsPerWindow {
		t.Errorf("next window: got %v with %d suppressed, want logged with %d suppressed", ok, suppressed, 1000-errorsPerWindow)
	}
}
