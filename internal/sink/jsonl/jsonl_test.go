package jsonl

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/naming"
)

var pts = []flowmetrics.Point{
	{Flow: "CustomerRouting", Metric: "Unknown", Bucket: time.Date(2023, 3, 5, 8, 18, 0, 0, time.UTC), Width: 10 * time.Second, Count: 1},
	{Flow: "Billing Main", Metric: "Payment<Taken>", Bucket: time.Date(2023, 3, 5, 8, 20, 10, 0, time.UTC), Width: 10 * time.Second, Count: 3},
}

func TestSendGolden(t *testing.T) {
	var buf bytes.Buffer
	s := NewWriter(&buf)
	if err := s.Send(context.Background(), pts); err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/points.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if got := buf.String(); got != string(want) {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestStaticTags(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	s, err := New(Config{Path: path}, naming.New(naming.Config{Tags: map[string]string{"env": "prod"}}))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), pts[:1]); err != nil {
		t.Fatal(err)
	}
	s.Close(context.Background())
	got, _ := os.ReadFile(path)
	want := `{"flow":"CustomerRouting","metric":"Unknown","timestamp":"2023-03-05T08:18:00Z","interval_seconds":10,"count":1,"tags":{"env":"prod"}}` + "\n"
	if string(got) != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestTornLineIsCut(t *testing.T) {
	tests := []struct {
		name, before, want string
	}{
		{"complete file kept", "{\"a\":1}\n", "{\"a\":1}\n"},
		{"torn tail cut", "{\"a\":1}\n{\"b\":", "{\"a\":1}\n"},
		{"only a torn line", "{\"b\":", ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "out.jsonl")
			os.WriteFile(path, []byte(tt.before), 0o644)
			s, err := New(Config{Path: path}, nil)
			if err != nil {
				t.Fatal(err)
			}
			s.Close(context.Background())
			got, _ := os.ReadFile(path)
			if string(got) != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAppendsAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	for i := 0; i < 2; i++ {
		s, err := New(Config{Path: path}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(context.Background(), pts); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("second close: got %v, want nil", err)
		}
	}
	got, _ := os.ReadFile(path)
	if n := bytes.Count(got, []byte("\n")); n != 4 {
		t.Errorf("got %d lines, want 4", n)
	}
}

func TestDevNull(t *testing.T) {
	s, err := New(Config{Path: os.DevNull}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), pts); err != nil {
		t.Errorf("send to %s: got %v, want nil", os.DevNull, err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Error(err)
	}
}
