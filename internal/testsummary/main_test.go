package main

import (
	"strings"
	"testing"
)

const passing = `{"Action":"start","Package":"x"}
{"Action":"run","Package":"x","Test":"TestA"}
{"Action":"output","Package":"x","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"x","Test":"TestA","Output":"    x_test.go:3: hello\n"}
{"Action":"pass","Package":"x","Test":"TestA","Elapsed":0}
{"Action":"run","Package":"x","Test":"TestB"}
{"Action":"output","Package":"x","Test":"TestB","Output":"=== RUN   TestB\n"}
{"Action":"output","Package":"x","Test":"TestB","Output":"    x_test.go:3: starting\n"}
{"Action":"output","Package":"x","Test":"TestB","Output":"2026/12/01 15:38:49 ERROR a library logs\n"}
{"Action":"output","Package":"x","Test":"TestB","Output":"    x_test.go:4: promtool not found (apt-get install prometheus)\n"}
{"Action":"output","Package":"x","Test":"TestB","Output":"--- SKIP: TestB (0.00s)\n"}
{"Action":"skip","Package":"x","Test":"TestB","Elapsed":0}
{"Action":"run","Package":"x","Test":"TestC/sub"}
{"Action":"skip","Package":"x","Test":"TestC/sub","Elapsed":0}
{"Action":"output","Package":"x","Output":"PASS\n"}
{"Action":"output","Package":"x","Output":"ok  \tx\t0.006s\n"}
{"Action":"pass","Package":"x","Elapsed":0.007}
{"Action":"output","Package":"y","Output":"?   \ty\t[no test files]\n"}
{"Action":"skip","Package":"y","Elapsed":0}
`

const failing = `{"ImportPath":"x/bad [x/bad.test]","Action":"build-output","Output":"bad/b.go:1:25: undefined: x\n"}
{"ImportPath":"x/bad [x/bad.test]","Action":"build-fail"}
{"Action":"output","Package":"x/bad","Output":"FAIL\tx/bad [build failed]\n"}
{"Action":"fail","Package":"x/bad","Elapsed":0,"FailedBuild":"x/bad [x/bad.test]"}
{"Action":"run","Package":"x","Test":"TestD"}
{"Action":"output","Package":"x","Test":"TestD","Output":"    x_test.go:6: boom\n"}
{"Action":"fail","Package":"x","Test":"TestD","Elapsed":0}
{"Action":"run","Package":"x","Test":"TestHang"}
{"Action":"output","Package":"x","Test":"TestHang","Output":"panic: test timed out after 10m0s\n"}
{"Action":"fail","Package":"x","Elapsed":600}
`

func TestSummary(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantCode int
		want     []string
		not      []string
	}{
		{"passing with skips", passing, 0, []string{
			"ok  \tx\t0.006s\n", "?   \ty\t[no test files]\n",
			"tests: 1 passed, 0 failed, 2 skipped\n",
			"  x TestB: promtool not found (apt-get install prometheus)\n",
			"  x TestC/sub: (no reason given)\n"}, []string{"hello", "=== RUN", "failed:", "a library logs", "starting"}},
		{"failures", failing, 1, []string{
			"bad/b.go:1:25: undefined: x\n", "    x_test.go:6: boom\n", "panic: test timed out",
			"tests: 0 passed, 1 failed, 0 skipped\n",
			"  x/bad [x/bad.test] [build failed]\n", "  x TestD\n", "  x TestHang (did not finish)\n"}, nil},
		{"not test JSON", "ok  \tx\t0.1s\n", 1, []string{"not go test -json events"}, nil},
		{"nothing", "", 1, []string{"no test ran"}, nil},
		{"a failure hidden among passes", passing + `{"Action":"fail","Package":"z","Elapsed":1}` + "\n", 1, []string{"z (the package failed outside its tests"}, nil},
	}
	for _, tt := range tests {
		var out strings.Builder
		code := run(strings.NewReader(tt.in), &out)
		if code != tt.wantCode {
			t.Errorf("%s: got exit status %d, want %d\n%s", tt.name, code, tt.wantCode, out.String())
		}
		for _, w := range tt.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%s: output lacks %q:\n%s", tt.name, w, out.String())
			}
		}
		for _, n := range tt.not {
			if strings.Contains(out.String(), n) {
				t.Errorf("%s: output has %q:\n%s", tt.name, n, out.String())
			}
		}
	}
}
