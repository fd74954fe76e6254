package linefile

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestCutBackToTheAcknowledgedLength: whatever follows the committed length
// is cut on start, and the next Append writes there.
func TestCutBackToTheAcknowledgedLength(t *testing.T) {
	const a, b = "{\"a\":1}\n", "{\"b\":2}\n{\"c\":3}\n"
	tests := []struct {
		name     string
		leftover string
	}{
		{"nothing left", ""},
		{"a torn line", b[:5]},
		{"one line of two", b[:8]},
		{"the whole batch, synced", b},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "out")
			ctx := context.Background()
			f, dev, err := Open(path, nil)
			if err != nil || dev != nil {
				t.Fatalf("Open: %v %v", dev, err)
			}
			committed := map[string][]byte{}
			commit := func() {
				for k, v := range f.TakeState("k") {
					committed[k] = v
				}
			}
			if err := f.Restore(ctx, committed, "k"); err != nil {
				t.Fatal(err)
			}
			commit() // the baseline, committed by Pipeline.Register
			if err := f.Append([]byte(a)); err != nil {
				t.Fatal(err)
			}
			commit()
			if err := f.Append([]byte(tt.leftover)); err != nil { // not committed: the crash
				t.Fatal(err)
			}
			f.Close()

			f, _, err = Open(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Restore(ctx, committed, "k"); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(path); string(got) != a {
				t.Errorf("after the restart: got %q, want %q", got, a)
			}
			if err := f.Append([]byte(b)); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if got, _ := os.ReadFile(path); string(got) != a+b {
				t.Errorf("after the resend: got %q, want %q", got, a+b)
			}
		})
	}
}

func TestOpenDevice(t *testing.T) {
	f, dev, err := Open(os.DevNull, nil)
	if err != nil || f != nil || dev == nil {
		t.Fatalf("Open(%s): got %v, %v, %v; want only a device", os.DevNull, f, dev, err)
	}
	dev.Close()
}
