// Package release checks the release configuration, .goreleaser.yaml, with
// GoReleaser's own loader (its strict decoding: an unknown or misplaced key
// fails), and that the version it stamps in is what flowmetrics version
// prints. CI also runs `goreleaser check` on it (.ci/run).
package release

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/goreleaser/goreleaser/v2/pkg/config"
)

var root = filepath.Join("..", "..")

func TestReleaseConfig(t *testing.T) {
	p, err := config.Load(filepath.Join(root, ".goreleaser.yaml"))
	if err != nil {
		t.Fatalf("goreleaser's loader: %v", err)
	}
	if len(p.Builds) != 1 {
		t.Fatalf("builds: got %d, want 1", len(p.Builds))
	}
	b := p.Builds[0]
	if b.Main != "./cmd/flowmetrics" || b.Binary != "flowmetrics" {
		t.Errorf("build: main %q binary %q, want ./cmd/flowmetrics and flowmetrics", b.Main, b.Binary)
	}
	for _, want := range [][2]string{{"linux", "amd64"}, {"linux", "arm64"}, {"darwin", "amd64"}, {"darwin", "arm64"}} {
		if !slices.Contains(b.Goos, want[0]) || !slices.Contains(b.Goarch, want[1]) {
			t.Errorf("build: no %s/%s (goos %v, goarch %v)", want[0], want[1], b.Goos, b.Goarch)
		}
	}
	if !slices.Contains(b.Env, "CGO_ENABLED=0") || !slices.Contains([]string(b.BuildDetails.Flags), "-trimpath") {
		t.Errorf("build: want a static binary (CGO_ENABLED=0) built with -trimpath; env %v, flags %v", b.Env, b.BuildDetails.Flags)
	}
	ldflags := strings.Join(b.BuildDetails.Ldflags, " ")
	if !strings.Contains(ldflags, "-X main.version={{ .Version }}") {
		t.Errorf("ldflags %q: want the version stamped into main.version", ldflags)
	}
	if p.Checksum.Algorithm != "sha256" || p.Checksum.NameTemplate == "" {
		t.Errorf("checksum: %+v, want a sha256 checksums file", p.Checksum)
	}
	for _, a := range p.Archives {
		for _, f := range a.Files {
			if _, err := os.Stat(filepath.Join(root, f.Source)); err != nil {
				t.Errorf("archive file %s: %v", f.Source, err)
			}
		}
	}

	// The ldflags as the release applies them (its version in place of the
	// template) make flowmetrics version print that version.
	const version = "v9.8.7-releasetest"
	bin := filepath.Join(t.TempDir(), "flowmetrics")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags="+strings.ReplaceAll(ldflags, "{{ .Version }}", version), "-o", bin, b.Main)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), b.Env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "flowmetrics "+version+" ") {
		t.Errorf("flowmetrics version: %v %q, want flowmetrics %s", err, out, version)
	}
}

// TestReleaseConfigIsStrict: a misplaced key fails the loader above.
func TestReleaseConfigIsStrict(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, ".goreleaser.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(data), "    goarch:", "    goarchs:", 1)
	if _, err := config.LoadReader(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "goarchs") {
		t.Errorf("got %v, want an error naming goarchs", err)
	}
}
