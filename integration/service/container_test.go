package service

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/servetest"
)

// The container test builds deploy/container/Containerfile with podman and
// runs the image. Base images cannot be pulled where only package
// registries are reachable, so the build stage's GO_IMAGE is a local
// stand-in for docker.io/library/golang: a static busybox shell (Debian's
// busybox-static) and CA certificates, with this machine's Go toolchain,
// module cache and build cache mounted into the build. Everything else is
// the Containerfile as users build it: its build stage compiles the binary
// with its own command, and the final stage starts FROM scratch, so nothing
// else is substituted.

const imageTag = "localhost/flowmetrics:containertest"

// podman runs podman with a bound on time and returns its standard
// output; its standard error goes into the error. (Without a running
// systemd, podman run says on standard error that it cannot schedule the
// image's HEALTHCHECK; the test runs it with podman healthcheck run.)
func podman(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), err
}

// runtimeFlags are the flags podman build and run need on this machine:
// Debian 12's crun refuses a host with cgroups in hybrid mode (v1 and v2
// both mounted), which runc handles; and the container's default open-files
// and process limits are above what an unprivileged sandbox may set, so
// they are set lower (both well above what serve needs).
func runtimeFlags() []string {
	flags := []string{"--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"}
	if _, err := exec.LookPath("runc"); err == nil {
		flags = append(flags, "--runtime", "runc")
	}
	return flags
}

func goEnv(t *testing.T, key string) string {
	t.Helper()
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// buildBase builds the local stand-in for the golang image.
func buildBase(t *testing.T) string {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not found: install Debian's busybox-static (.ci/run does)")
	}
	if out, _ := exec.Command("file", "-L", busybox).Output(); len(out) > 0 && !strings.Contains(string(out), "statically linked") {
		t.Skipf("%s is not statically linked: install Debian's busybox-static (.ci/run does)", busybox)
	}
	ctx := t.TempDir()
	for src, dst := range map[string]string{busybox: "busybox", "/etc/ssl/certs/ca-certificates.crt": "ca-certificates.crt"} {
		if out, err := exec.Command("cp", "-L", src, filepath.Join(ctx, dst)).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	file := `FROM scratch
COPY busybox /bin/busybox
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /tmp && chmod 1777 /tmp"]
ENV PATH=/usr/local/go/bin:/bin HOME=/root GOPATH=/root/go GOTOOLCHAIN=local GOPROXY=off
`
	if err := os.WriteFile(filepath.Join(ctx, "Containerfile"), []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	const tag = "localhost/flowmetrics-gobase:containertest"
	args := append([]string{"build"}, runtimeFlags()...)
	if out, err := podman(t, 5*time.Minute, append(args, "-t", tag, ctx)...); err != nil {
		t.Fatalf("podman build (the toolchain base): %v\n%s", err, out)
	}
	return tag
}

func TestContainerImage(t *testing.T) {
	if _, err := exec.LookPath("podman"); err != nil {
		t.Skip("podman not found: install Debian's podman (.ci/run does)")
	}
	if runtime.GOOS != "linux" {
		t.Skip("podman builds Linux images on Linux")
	}
	base := buildBase(t)
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	const version = "v0.0.0-containertest"
	goroot, modcache, gocache := goEnv(t, "GOROOT"), goEnv(t, "GOMODCACHE"), goEnv(t, "GOCACHE")

	// The build stage's own command, run here first into the build cache
	// it will mount: a -trimpath build's cache keys do not depend on the
	// source directory, so the build stage then compiles little.
	warm := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -X main.version="+version, "-o", filepath.Join(t.TempDir(), "flowmetrics"), "./cmd/flowmetrics")
	warm.Dir = repo
	warm.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := warm.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	args := append([]string{"build"}, runtimeFlags()...)
	args = append(args,
		"--format", "docker", // keeps HEALTHCHECK
		"--build-arg", "GO_IMAGE="+base,
		"--build-arg", "VERSION="+version,
		"-v", goroot+":/usr/local/go:ro",
		"-v", modcache+":/root/go/pkg/mod:ro",
		"-v", gocache+":/root/.cache/go-build",
		"-f", filepath.Join(repo, "deploy", "container", "Containerfile"),
		"-t", imageTag, repo)
	start := time.Now()
	if out, err := podman(t, 15*time.Minute, args...); err != nil {
		t.Fatalf("podman build: %v\n%s", err, out)
	}
	t.Logf("podman build: %v", time.Since(start).Round(time.Second))
	t.Cleanup(func() { podman(t, time.Minute, "rmi", "-f", imageTag) })

	inspectImage(t)
	runImage(t, version)
}

// inspectImage checks what the image declares.
func inspectImage(t *testing.T) {
	t.Helper()
	out, err := podman(t, time.Minute, "image", "inspect", imageTag)
	if err != nil {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	var images []struct {
		Size   int64
		Config struct {
			User         string
			ExposedPorts map[string]struct{}
			Volumes      map[string]struct{}
			Entrypoint   []string
		}
		HealthCheck *struct{ Test []string }
		History     []struct{ CreatedBy string }
	}
	if err := json.Unmarshal([]byte(out), &images); err != nil || len(images) != 1 {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	img := images[0]
	t.Logf("image size: %.1f MiB", float64(img.Size)/(1<<20))
	if img.Size > 64<<20 {
		t.Errorf("image size %d bytes: want a small image (a static binary on scratch)", img.Size)
	}
	if img.Config.User != "65532:65532" {
		t.Errorf("user: got %q, want 65532:65532", img.Config.User)
	}
	if _, ok := img.Config.Volumes["/data"]; !ok {
		t.Errorf("volumes: got %v, want /data", img.Config.Volumes)
	}
	if _, ok := img.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("exposed ports: got %v, want 8080/tcp", img.Config.ExposedPorts)
	}
	if hc := img.HealthCheck; hc == nil || strings.Join(hc.Test, " ") != "CMD /usr/local/bin/flowmetrics health -config /etc/flowmetrics/flowmetrics.yaml" {
		t.Errorf("healthcheck: got %+v, want flowmetrics health", hc)
	}
}

// runImage runs the image on a free loopback port with a named volume for
// /data, and checks it over HTTP and with its own HEALTHCHECK.
func runImage(t *testing.T, version string) {
	t.Helper()
	run := append([]string{"run", "--rm"}, runtimeFlags()...)
	if out, err := podman(t, 2*time.Minute, append(run, imageTag, "version")...); err != nil || !strings.HasPrefix(out, "flowmetrics "+version+" ") {
		t.Errorf("flowmetrics version in the image: %v, %q; want flowmetrics %s", err, out, version)
	}
	// No shell in the image: only the binary.
	if out, err := podman(t, 2*time.Minute, append(run, "--entrypoint", "/bin/sh", imageTag, "-c", "true")...); err == nil {
		t.Errorf("the image has a shell: %s", out)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	name := fmt.Sprintf("flowmetrics-containertest-%d", time.Now().UnixNano())
	volume := name + "-data"
	const secret = "container-test-secret"
	t.Cleanup(func() {
		podman(t, time.Minute, "rm", "-f", name)
		podman(t, time.Minute, "volume", "rm", "-f", volume)
	})
	args := append([]string{"run", "-d", "--name", name}, runtimeFlags()...)
	args = append(args, "-p", addr+":8080", "-v", volume+":/data", "-e", "FLOWMETRICS_SECRET="+secret, imageTag)
	if out, err := podman(t, 2*time.Minute, args...); err != nil {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	logs := func() string {
		out, _ := exec.Command("podman", "logs", name).CombinedOutput()
		return string(out)
	}

	client := &http.Client{Timeout: 5 * time.Second}
	var health string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if resp, err := client.Get("http://" + addr + "/healthz"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if health = fmt.Sprint(resp.StatusCode, " ", strings.TrimSpace(string(b))); resp.StatusCode == 200 {
				break
			}
		}
	}
	if !strings.HasPrefix(health, "200") {
		t.Fatalf("GET /healthz through the container's port: %q\n%s", health, logs())
	}

	// The image's own HEALTHCHECK, as the engine runs it.
	if out, err := podman(t, time.Minute, "healthcheck", "run", name); err != nil {
		t.Errorf("podman healthcheck run: %v %s\n%s", err, out, logs())
	}

	// An event in, its count out: the store in /data is writable by the
	// image's user.
	at := time.Now().UTC().Add(-time.Minute)
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/events", strings.NewReader(servetest.Event("c-container-0001", at, map[string]string{servetest.Attr("Container", "Ran", at): "x"})))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Flowmetrics-Secret", secret)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(b), `"occurrences":1`) {
		t.Fatalf("POST /v1/events: %s %s\n%s", resp.Status, b, logs())
	}
	want := `genesys_flow_metric_total{flow="Container",metric="Ran"} 1`
	var metrics string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && !strings.Contains(metrics, want); time.Sleep(200 * time.Millisecond) {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		if resp, err := client.Do(req); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			metrics = string(b)
		}
	}
	if !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %s\n%s", want, logs())
	}

	// podman stop sends SIGTERM: serve drains, flushes and exits 0.
	if out, err := podman(t, 2*time.Minute, "stop", "-t", "40", name); err != nil {
		t.Errorf("podman stop: %v %s", err, out)
	}
	if out, _ := podman(t, time.Minute, "inspect", "--format", "{{.State.ExitCode}}", name); out != "0" {
		t.Errorf("exit code after SIGTERM: got %s, want 0\n%s", out, logs())
	}
}
