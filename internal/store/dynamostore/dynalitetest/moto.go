package dynalitetest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
)

// MotoCommand returns the command that runs moto's server (the Python
// package moto[server], whose DynamoDB implements TransactWriteItems, which
// dynalite does not), or nil when there is none: the environment variable
// FLOWMETRICS_MOTO (the path of moto_server), else moto_server on PATH.
func MotoCommand() []string {
	if p := os.Getenv("FLOWMETRICS_MOTO"); p != "" {
		return []string{p}
	}
	if p, err := exec.LookPath("moto_server"); err == nil {
		return []string{p}
	}
	return nil
}

// StartMoto starts moto's server on a free loopback port for the test and
// stops it when the test ends. Tests of DynamoDB transactions use it. It
// skips the test when moto is missing, unless CI is set.
func StartMoto(t testing.TB) *Server {
	t.Helper()
	cmdline := MotoCommand()
	if cmdline == nil {
		msg := "moto_server not found: install it with `pip install 'moto[server]==5.2.1'` (or set FLOWMETRICS_MOTO to its path); dynalite has no TransactWriteItems"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cmdline[0], append(cmdline[1:], "-H", "127.0.0.1", "-p", strconv.Itoa(port))...)
	logPath := filepath.Join(t.TempDir(), "moto.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start moto (%s): %v", strings.Join(cmdline, " "), err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	ep := "http://127.0.0.1:" + strconv.Itoa(port)
	client := NewClient(ep)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.ListTables(ctx, &dynamodb.ListTablesInput{})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logPath)
			t.Fatalf("moto did not answer on %s within 30s: %v\n%s", ep, err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return &Server{Endpoint: ep, Client: client}
}
