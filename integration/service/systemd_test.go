package service

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/config"
	"github.com/flowmetrics/flowmetrics/internal/servetest"
)

var unitPath = filepath.Join("..", "..", "deploy", "systemd", "flowmetrics.service")

// unitRoot lays out a system root as the unit's install steps leave it:
// the unit in /etc/systemd/system, the real binary in /usr/local/bin, and
// the system's own units (sysinit.target…) the unit depends on. unit is the
// unit file's content.
func unitRoot(t *testing.T, unit []byte, bin string) (root, installed string) {
	t.Helper()
	root = t.TempDir()
	for _, d := range []string{"etc/systemd/system", "usr/local/bin", "usr/lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy the system's units: %v\n%s", err, out)
	}
	if out, err := exec.Command("cp", bin, filepath.Join(root, "usr/local/bin/flowmetrics")).CombinedOutput(); err != nil {
		t.Fatalf("install the binary: %v\n%s", err, out)
	}
	installed = filepath.Join(root, "etc/systemd/system/flowmetrics.service")
	if err := os.WriteFile(installed, unit, 0o644); err != nil {
		t.Fatal(err)
	}
	return root, installed
}

// verify runs systemd-analyze verify on the installed unit and returns
// what it says about it. verify exits 0 on a key it ignores (a misspelt
// directive, a value it cannot parse), so every line that names the unit
// is a finding.
func verify(t *testing.T, analyze, root, installed string) []string {
	t.Helper()
	out, err := exec.Command(analyze, "verify", "--root="+root, installed).CombinedOutput()
	var findings []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.Contains(sc.Text(), "flowmetrics.service") {
			findings = append(findings, sc.Text())
		}
	}
	if err != nil && len(findings) == 0 {
		findings = append(findings, "systemd-analyze verify: "+err.Error()+": "+string(out))
	}
	return findings
}

func lookSystemdAnalyze(t *testing.T) string {
	t.Helper()
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not found: install Debian's systemd package (.ci/run does)")
	}
	if _, err := os.Stat("/usr/lib/systemd/system/sysinit.target"); err != nil {
		t.Skip("no system units in /usr/lib/systemd/system: install Debian's systemd package (.ci/run does)")
	}
	return analyze
}

// TestSystemdUnit checks deploy/systemd/flowmetrics.service with systemd's
// own tools, offline (no running systemd needed): `systemd-analyze verify`
// finds nothing to say about it, and `systemd-analyze security` rates its
// exposure at most 2.0 (of 10; systemd calls below 3 "OK").
func TestSystemdUnit(t *testing.T) {
	analyze := lookSystemdAnalyze(t)
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	bin := servetest.Build(t, t.TempDir())
	root, installed := unitRoot(t, unit, bin)

	if findings := verify(t, analyze, root, installed); len(findings) > 0 {
		t.Errorf("systemd-analyze verify:\n%s", strings.Join(findings, "\n"))
	}

	out, err := exec.Command(analyze, "security", "--offline=yes", "--threshold=20", "--root="+root, "flowmetrics.service").CombinedOutput()
	level := regexp.MustCompile(`Overall exposure level for flowmetrics.service: ([0-9.]+ \S+)`).FindSubmatch(out)
	if err != nil || level == nil {
		t.Errorf("systemd-analyze security --threshold=20: %v\n%s", err, out)
	} else {
		t.Logf("systemd-analyze security: exposure %s", level[1])
	}

	// What the unit promises, directive by directive.
	d := directives(unit)
	for key, want := range map[string]string{
		"Restart":         "on-failure",
		"DynamicUser":     "yes",
		"StateDirectory":  "flowmetrics",
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"ProtectHome":     "yes",
		"PrivateTmp":      "yes",
	} {
		if got := d[key]; len(got) == 0 || got[len(got)-1] != want {
			t.Errorf("%s: got %q, want %s", key, got, want)
		}
	}
	if u := d["User"]; len(u) > 0 {
		t.Errorf("User=%v: the service runs as the user DynamicUser allocates", u)
	}

	// The config it starts with is the production sample's, whose store
	// is in the StateDirectory.
	exec := strings.Fields(d["ExecStart"][0])
	if len(exec) != 4 || exec[1] != "serve" || exec[2] != "-config" {
		t.Fatalf("ExecStart: got %q, want flowmetrics serve -config FILE", exec)
	}
	c, err := config.Load(filepath.Join("..", "..", "deploy", "flowmetrics.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "/var/lib/" + d["StateDirectory"][0]; c.DataDir != want {
		t.Errorf("deploy/flowmetrics.yaml data_dir: got %s, want %s (StateDirectory)", c.DataDir, want)
	}
	// TimeoutStopSec leaves serve its shutdown_timeout to drain.
	if got := d["TimeoutStopSec"]; len(got) == 0 {
		t.Error("no TimeoutStopSec")
	} else if stop, err := time.ParseDuration(got[0]); err != nil || stop <= c.HTTP.ShutdownTimeout {
		t.Errorf("TimeoutStopSec=%s: want more than http.shutdown_timeout %v", got[0], c.HTTP.ShutdownTimeout)
	}
}

// TestSystemdVerifyFindsMistakes: the check above fails on a misspelt
// directive and a value systemd cannot parse, which verify only warns
// about.
func TestSystemdVerifyFindsMistakes(t *testing.T) {
	analyze := lookSystemdAnalyze(t)
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, from, to, says string }{
		{"misspelt directive", "NoNewPrivileges=yes", "NoNewPrivilege=yes", "Unknown key"},
		{"bad value", "ProtectSystem=strict", "ProtectSystem=very", "protect system"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := bytes.Replace(unit, []byte(tc.from), []byte(tc.to), 1)
			root, installed := unitRoot(t, bad, "/bin/true")
			findings := verify(t, analyze, root, installed)
			if !strings.Contains(strings.Join(findings, "\n"), tc.says) {
				t.Errorf("got %q, want a finding with %q", findings, tc.says)
			}
		})
	}
}

// directives maps each directive of a unit file to its values in order.
func directives(unit []byte) map[string][]string {
	d := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			d[k] = append(d[k], v)
		}
	}
	return d
}
