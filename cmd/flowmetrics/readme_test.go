package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeStep is one command of a README shell block and the output the
// README shows under it (its "# " comment lines).
type readmeStep struct {
	line int // in README.md
	cmd  string
	want []string
}

// readmeBlocks returns the steps of each ```sh block of the README that uses
// the repository's example files (examples/…), in the README's order.
func readmeBlocks(t *testing.T, path string) [][]readmeStep {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks [][]readmeStep
	var block []readmeStep
	var in, uses bool
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case !in && strings.HasPrefix(line, "```sh"):
			in, uses, block = true, false, nil
		case in && strings.HasPrefix(line, "```"):
			in = false
			if uses {
				blocks = append(blocks, block)
			}
		case !in || strings.TrimSpace(line) == "":
		case strings.HasPrefix(line, "#"):
			if len(block) > 0 {
				s := &block[len(block)-1]
				s.want = append(s.want, strings.TrimSpace(strings.TrimPrefix(line, "#")))
			}
		case len(block) > 0 && strings.HasSuffix(block[len(block)-1].cmd, "\\") && len(block[len(block)-1].want) == 0:
			s := &block[len(block)-1]
			s.cmd = strings.TrimSuffix(s.cmd, "\\") + " " + strings.TrimSpace(line)
		default:
			uses = uses || strings.Contains(line, "examples/")
			block = append(block, readmeStep{line: n, cmd: line})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return blocks
}

// matchLines reports whether every wanted line matches an output line, in
// order; "…" in a wanted line stands for any text.
func matchLines(want []string, out string) bool {
	lines := strings.Split(out, "\n")
	i := 0
	for _, w := range want {
		parts := strings.Split(w, "…")
		for j := range parts {
			parts[j] = regexp.QuoteMeta(parts[j])
		}
		re := regexp.MustCompile("^" + strings.Join(parts, ".*") + "$")
		for i < len(lines) && !re.MatchString(strings.TrimSpace(lines[i])) {
			i++
		}
		if i == len(lines) {
			return false
		}
		i++
	}
	return true
}

// TestREADMECommands runs each README shell block that uses the example
// files as a reader would: from a directory holding examples/, with the
// built flowmetrics on PATH and `flowmetrics serve` listening (on a free
// loopback port in place of the README's 127.0.0.1:8080), in the README's
// order, and checks the output the README shows under each command.
func TestREADMECommands(t *testing.T) {
	blocks := readmeBlocks(t, "../../README.md")
	if len(blocks) < 2 {
		t.Fatalf("README: got %d shell blocks using examples/, want the sample post and the replay at least", len(blocks))
	}
	dir := t.TempDir()
	examples, err := filepath.Abs("../../examples")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(examples, filepath.Join(dir, "examples")); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	srv := startServe(t, "-data-dir", filepath.Join(dir, "data"), "-listen", addr)
	defer func() {
		srv.cmd.Process.Signal(syscall.SIGTERM)
		srv.cmd.Wait()
	}()
	path := filepath.Dir(binary) + string(os.PathListSeparator) + os.Getenv("PATH")
	for _, block := range blocks {
		for _, step := range block {
			cmd := strings.ReplaceAll(step.cmd, "go run ./cmd/flowmetrics", "flowmetrics")
			cmd = strings.ReplaceAll(cmd, "127.0.0.1:8080", addr)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			c := exec.CommandContext(ctx, "sh", "-c", cmd)
			c.Dir = dir
			c.Env = append(os.Environ(), "PATH="+path)
			out, err := c.CombinedOutput()
			cancel()
			if err != nil {
				t.Errorf("README.md:%d: %s: %v\n%s", step.line, step.cmd, err, out)
				continue
			}
			if !matchLines(step.want, string(out)) {
				t.Errorf("README.md:%d: %s\ngot:\n%s\nwant (as the README shows):\n%s", step.line, step.cmd, out, strings.Join(step.want, "\n"))
			}
		}
	}
}

// TestREADMESampleConfig: the config the README shows is the example file
// its commands use, whole, so the two cannot drift apart (the commands,
// -check-config among them, run in TestREADMECommands).
func TestREADMESampleConfig(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	sample, err := os.ReadFile("../../examples/flowmetrics.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "```yaml\n"+string(sample)+"```\n") {
		t.Errorf("README.md: want a yaml block holding examples/flowmetrics.yaml as it is:\n%s", sample)
	}
}
