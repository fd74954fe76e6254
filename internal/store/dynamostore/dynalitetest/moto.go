package dynalitetest

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
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
	return startLocal(t, "moto", cmdline, func(port int) []string {
		return []string{"-H", "127.0.0.1", "-p", strconv.Itoa(port)}
	}, 30*time.Second, 100*time.Millisecond)
}
