package lambda_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowmetrics/flowmetrics/internal/sink/emf"
)

// The harness runs the real bootstrap under the AWS Lambda Runtime Interface
// Emulator: one emulator process per function instance, each starting the
// bootstrap as its runtime and serving invocations on a loopback port.
// Killing an instance kills its process group (emulator and bootstrap) with
// SIGKILL; starting it again is a cold start.

const riePackage = "github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie"

// envBootstrap names a bootstrap already built with the README's command
// (for amd64 here); without it the test builds one.
const envBootstrap = "FLOWMETRICS_LAMBDA_BOOTSTRAP"

// buildTools returns the bootstrap and the emulator binaries.
func buildTools(t *testing.T) (bootstrap, rie string) {
	t.Helper()
	dir := t.TempDir()
	bootstrap = os.Getenv(envBootstrap)
	if bootstrap == "" {
		bootstrap = filepath.Join(dir, "bootstrap")
		// The README's command, for this machine's architecture.
		cmd := exec.Command("go", "build", "-tags", "lambda.norpc", "-trimpath", "-ldflags=-s", "-o", bootstrap, "./cmd/flowmetrics")
		cmd.Dir = "../.."
		cmd.Env = append(os.Environ(), "GOOS=linux", "CGO_ENABLED=0", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build bootstrap: %v\n%s", err, out)
		}
	}
	rie = filepath.Join(dir, "aws-lambda-rie")
	cmd := exec.Command("go", "build", "-o", rie, riePackage)
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the Runtime Interface Emulator (%s, pinned in go.mod): %v\n%s", riePackage, err, out)
	}
	return bootstrap, rie
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// output collects what every instance wrote on stdout: the EMF lines, each
// with whether its invocation completed (the emulator printed END).
type output struct {
	mu sync.Mutex
	// points are the EMF count points of the Genesys/Flows namespace.
	points []emfPoint
	// paths are its path points (emf's ExitName, StepName, …): name, the
	// directive's dimension values, and the count (a duration line's
	// value is how many durations it holds).
	paths []emfPoint
	// atRisk: points written by invocations that never completed (their
	// instance was killed, or they timed out and the emulator killed
	// the process). Only these can be counted twice.
	atRisk int64
	// pathRisk: the same, for path points.
	pathRisk int64
	// reports sums the function's own RecordsFailed/RecordsDeferred.
	failed, deferred int64
	lines            int64
	other            []string // unexpected stdout lines, for the failure message
}

type emfPoint struct {
	flow, metric string
	at           time.Time
	value        int64
	// name and dims: set for path points only.
	name, dims string
}

// read consumes one incarnation's stdout until EOF (the process died or
// exited).
func (o *output) read(t *testing.T, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	// current: the lines of the invocation running; ended: those of the
	// invocation whose END came and whose REPORT has not, which says
	// whether it timed out (the emulator then kills the process).
	var current, ended []emfPoint
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "START RequestId:"):
			current = nil
		case strings.HasPrefix(line, "END RequestId:"):
			ended, current = current, nil
		case strings.HasPrefix(line, "REPORT RequestId:"):
			o.add(ended, timedOut(line))
			ended = nil
		case strings.HasPrefix(line, "{") && strings.Contains(line, `"_aws":`):
			p, self, err := parseEMF(line)
			if err != nil {
				t.Errorf("stdout: %v: %s", err, line)
				continue
			}
			if self != nil {
				o.mu.Lock()
				o.failed += self.failed
				o.deferred += self.deferred
				o.mu.Unlock()
				continue
			}
			current = append(current, p...)
		case strings.HasPrefix(line, `{"time":`), isStdLog(line):
			// the function's own (JSON) logs;
			// aws-lambda-go's log lines (a function error, the runtime
			// API gone after a SIGKILL)
		default:
			o.mu.Lock()
			if len(o.other) < 20 {
				o.other = append(o.other, line)
			}
			o.mu.Unlock()
		}
	}
	// The instance died mid-invocation: CloudWatch would still have
	// ingested what it wrote.
	o.add(ended, true)
	o.add(current, true)
}

// timedOut reports whether an emulator's REPORT line is that of an
// invocation that ran into the function timeout.
func timedOut(report string) bool {
	_, rest, ok := strings.Cut(report, "\tDuration: ")
	if !ok {
		return false
	}
	ms, _, _ := strings.Cut(rest, " ms")
	d, err := strconv.ParseFloat(ms, 64)
	return err == nil && time.Duration(d*float64(time.Millisecond)) >= functionTimeout
}

func (o *output) add(ps []emfPoint, risk bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range ps {
		if p.name != "" {
			o.paths = append(o.paths, p)
			if risk {
				o.pathRisk += p.value
			}
			continue
		}
		o.points = append(o.points, p)
		o.lines++
		if risk {
			o.atRisk += p.value
		}
	}
}

// isStdLog: a line of Go's standard logger ("2006/01/02 15:04:05 …").
func isStdLog(line string) bool {
	_, err := time.Parse("2006/01/02 15:04:05", line[:min(len(line), 19)])
	return err == nil
}

type selfReport struct{ failed, deferred int64 }

// pathMetrics are the EMF sink's path metric names.
var pathMetrics = map[string]bool{emf.ExitName: true, emf.StepName: true, emf.TimingName: true, emf.FunnelName: true, emf.ExperimentName: true}

// parseEMF reads one embedded-metric-format line as CloudWatch would: every
// metric of each directive, with the directive's dimensions.
func parseEMF(line string) ([]emfPoint, *selfReport, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal([]byte(line), &doc); err != nil {
		return nil, nil, err
	}
	var meta struct {
		Timestamp         int64
		CloudWatchMetrics []struct {
			Namespace  string
			Dimensions [][]string
			Metrics    []struct{ Name string }
		}
	}
	if err := json.Unmarshal(doc["_aws"], &meta); err != nil {
		return nil, nil, err
	}
	str := func(k string) string {
		var s string
		json.Unmarshal(doc[k], &s)
		return s
	}
	num := func(k string) (int64, error) {
		var f float64
		if err := json.Unmarshal(doc[k], &f); err != nil {
			return 0, fmt.Errorf("metric %s: %v", k, err)
		}
		return int64(f), nil
	}
	var out []emfPoint
	for _, d := range meta.CloudWatchMetrics {
		if d.Namespace == "flowmetrics" {
			f, err1 := num("RecordsFailed")
			n, err2 := num("RecordsDeferred")
			if err1 != nil || err2 != nil {
				return nil, nil, fmt.Errorf("self report: %v %v", err1, err2)
			}
			return nil, &selfReport{f, n}, nil
		}
		if len(d.Dimensions) != 1 {
			return nil, nil, fmt.Errorf("dimensions %v, want one set", d.Dimensions)
		}
		dims := strings.Join(d.Dimensions[0], ",")
		for _, m := range d.Metrics {
			if pathMetrics[m.Name] {
				var vals []float64
				v, err := num(m.Name)
				if json.Unmarshal(doc[m.Name], &vals) == nil {
					v, err = int64(len(vals)), nil
				}
				if err != nil {
					return nil, nil, err
				}
				var labels []string
				for _, k := range d.Dimensions[0] {
					labels = append(labels, k+"="+str(k))
				}
				out = append(out, emfPoint{flow: str("flow"), metric: str("metric"), at: time.UnixMilli(meta.Timestamp).UTC(), value: v, name: m.Name, dims: strings.Join(labels, ",")})
				continue
			}
			if dims != "flow,metric" {
				return nil, nil, fmt.Errorf("dimensions %v, want [[flow metric]]", d.Dimensions)
			}
			v, err := num(m.Name)
			if err != nil {
				return nil, nil, err
			}
			out = append(out, emfPoint{flow: str("flow"), metric: str("metric"), at: time.UnixMilli(meta.Timestamp).UTC(), value: v})
		}
	}
	return out, nil, nil
}

// instance is one function instance: an emulator and its bootstrap.
type instance struct {
	name      string
	bootstrap string
	rie       string
	env       []string
	out       *output
	logTo     io.Writer // also receives the raw stdout, if set
	t         *testing.T

	busy sync.Mutex // one invocation at a time, as in Lambda

	mu      sync.Mutex
	cmd     *exec.Cmd
	url     string
	done    chan struct{} // closed when the incarnation's stdout reached EOF
	starts  int
	invokes int
	// key is the incarnation's Datadog API key (so the intake can tell
	// incarnations apart); lastDone when its last invocation completed.
	key      string
	lastDone time.Time
	// risks are the spans of sends that a process's death left unsettled.
	risks []risk
}

// risk is what one bootstrap process sent after its last completed
// invocation, up to its death: a SIGKILL of the incarnation (to is zero:
// anything after from), or an invocation that timed out, after which the
// emulator, as Lambda, kills the process and starts a new one in the same
// incarnation (to is when it answered "Task timed out"). Only what falls in
// a risk can be counted twice.
type risk struct {
	key      string
	from, to time.Time
}

func (r risk) holds(key string, at time.Time) bool {
	return key == r.key && at.After(r.from) && (r.to.IsZero() || !at.After(r.to))
}

// risks returns the instances' risks.
func risks(ins []*instance) []risk {
	var out []risk
	for _, in := range ins {
		in.mu.Lock()
		out = append(out, in.risks...)
		in.mu.Unlock()
	}
	return out
}

// start begins a new incarnation (a cold start).
func (in *instance) start() {
	t := in.t
	port, api := freePort(t), freePort(t)
	cmd := exec.Command(in.rie,
		"--runtime-interface-emulator-address", fmt.Sprintf("127.0.0.1:%d", port),
		"--runtime-api-address", fmt.Sprintf("127.0.0.1:%d", api),
		"--log-level", "error",
		in.bootstrap)
	in.mu.Lock()
	key := fmt.Sprintf("key-%s-%d", in.name, in.starts+1)
	in.mu.Unlock()
	cmd.Env = append(append([]string(nil), in.env...), "DD_API_KEY="+key)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var r io.Reader = stdout
		if in.logTo != nil {
			r = io.TeeReader(stdout, in.logTo)
		}
		in.out.read(t, r)
		cmd.Wait()
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/2015-03-31/functions/function/invocations", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: emulator not listening after 10 s: %s", in.name, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	in.mu.Lock()
	in.cmd, in.url, in.done = cmd, url, done
	in.starts++
	in.key, in.lastDone = key, time.Time{}
	in.mu.Unlock()
}

// kill sends SIGKILL to the incarnation's process group and waits until its
// output is read.
func (in *instance) kill() {
	in.mu.Lock()
	cmd, done := in.cmd, in.done
	in.risks = append(in.risks, risk{key: in.key, from: in.lastDone})
	in.url = "" // down until start
	in.mu.Unlock()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

var client = &http.Client{Timeout: 15 * time.Second}

// errDown: the instance is between a SIGKILL and its cold start; Lambda
// would not route an invocation to it.
var errDown = errors.New("instance down")

// up reports whether the instance is running.
func (in *instance) up() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.url != ""
}

// invoke sends one payload and returns the function's answer. err is a
// failed invocation (function error, or the instance died).
func (in *instance) invoke(ctx context.Context, payload []byte) ([]byte, error) {
	in.busy.Lock()
	defer in.busy.Unlock()
	in.mu.Lock()
	url := in.url
	in.invokes++
	in.mu.Unlock()
	if url == "" {
		return nil, errDown
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(payload))
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	if !bytes.Contains(body, []byte("Runtime.ExitError")) {
		// The invocation ran to its end (a function error too): what it
		// sent before is settled.
		in.mu.Lock()
		if in.url == url {
			now := time.Now()
			if bytes.HasPrefix(body, []byte("Task timed out")) {
				in.risks = append(in.risks, risk{key: in.key, from: in.lastDone, to: now})
			}
			in.lastDone = now
		}
		in.mu.Unlock()
	}
	// The emulator answers a function error or a runtime crash with an
	// error document.
	var fe struct {
		ErrorType    string `json:"errorType"`
		ErrorMessage string `json:"errorMessage"`
	}
	if json.Unmarshal(body, &fe) == nil && fe.ErrorType != "" {
		return nil, fmt.Errorf("%s: %s", fe.ErrorType, fe.ErrorMessage)
	}
	return body, nil
}
