package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/telemetry"
)

const chromiumPath = "/usr/bin/chromium"

// TestBrowser loads the page in a real Chromium and checks that it shows the
// recorded counts and follows new ones. Set DASHBOARD_SCREENSHOT to a file
// path to keep the screenshot (it is always written to t.TempDir()).
func TestBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		msg := fmt.Sprintf("no browser: %v (install it with: apt-get install -y chromium)", err)
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if testing.Short() {
		t.Skip("starts a browser; skipped with -short")
	}

	// The hard bound of the whole test: cancelling it stops the browser.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()

	rec := NewRecorder(time.Hour, nil)
	m := telemetry.New()
	now := time.Now()
	rec.Send(ctx, []flowmetrics.Point{
		pt("CustomerRouting", "Unknown", now.Add(-time.Minute), 2),
		pt("CustomerRouting", "Unknown", now.Add(-20*time.Minute), 1),
		pt("CustomerRouting", "Transferred", now, 1),
		pt("Billing Main", "PaymentTaken", now.Add(-10*time.Minute), 2),
		pt("<b>x</b>", `"quoted" & tagged`, now, 1), // must show as text
	})
	m.RecordsRead.Add(9)
	m.RecordsAccepted.Add(7)
	m.RecordsSkipped.WithLabelValues("other_topic").Add(1)
	m.RecordsRejected.WithLabelValues("not_json").Add(1)
	m.Malformed.WithLabelValues("CustomerRouting").Add(1)
	m.Malformed.WithLabelValues("CustomerRoutng").Add(2) // a flow with only typos
	m.OutboxDepth.WithLabelValues("datadog").Set(3)
	m.SinkBatchFailures.WithLabelValues("datadog", "error").Add(2)
	m.OutboxDepth.WithLabelValues("dashboard").Set(0)
	m.SinkPoints.WithLabelValues("dashboard").Add(5)

	srv := httptest.NewServer(Handler(rec, m))
	defer srv.Close()

	actx, acancel := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 760),
	)
	defer acancel() // waits for the browser to exit, before TempDir is removed
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()

	// Any exception or console error (a CSP violation, say) fails the test.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start %s: %v", chromiumPath, err)
	}
	var (
		mu       sync.Mutex
		problems []string
	)
	messages := chromedp.Console(bctx)
	go func() {
		for msg, err := range messages {
			if err != nil {
				return
			}
			if msg.Type == chromedp.ConsoleError || msg.IsException() {
				mu.Lock()
				problems = append(problems, msg.String())
				mu.Unlock()
			}
		}
	}()

	if err := chromedp.Do(bctx, chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatalf("load %s: %v", srv.URL, err)
	}
	if title, err := chromedp.Run(bctx, chromedp.Title()); err != nil || title != "flowmetrics" {
		t.Errorf("title: got %q (%v), want flowmetrics", title, err)
	}

	want := []rowWant{
		{"CustomerRouting", "Unknown", "2", "3", "3"},
		{"CustomerRouting", "Transferred", "1", "1", "1"},
		{"Billing Main", "PaymentTaken", "0", "2", "2"},
		{"<b>x</b>", `"quoted" & tagged`, "1", "1", "1"},
	}
	waitRows(t, bctx, "first load", want, 10*time.Second)

	check := func(what, js string) {
		t.Helper()
		ok, err := chromedp.Run(bctx, chromedp.Evaluate[bool](js))
		if err != nil || !ok {
			t.Errorf("%s: got false (%v), want true", what, err)
		}
	}
	check("empty state hidden", `document.getElementById("empty").hidden && !document.getElementById("metrics").hidden`)
	check("malformed shown for CustomerRouting", `[...document.querySelectorAll("th.flow")].some(th => th.firstChild.textContent === "CustomerRouting" && th.querySelector(".mal")?.textContent.includes("1 malformed"))`)
	check("flow with only typos listed", `[...document.querySelectorAll("th.flow")].some(th => th.firstChild.textContent === "CustomerRoutng" && th.querySelector(".mal")?.textContent.includes("2 malformed"))`)
	check("datadog red", `[...document.querySelectorAll("#health li.bad")].some(li => li.textContent.startsWith("datadog: pending 3"))`)
	check("dashboard sink not red", `[...document.querySelectorAll("#health li")].some(li => li.textContent.startsWith("dashboard:") && !li.classList.contains("bad"))`)
	check("no markup injected", `document.querySelectorAll("tbody b").length === 0`)
	check("sparklines drawn", `document.querySelectorAll("svg.spark polyline[points]").length === 4`)

	// New points must show within a few polls, in place.
	rowID, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`(window.__row = document.querySelector('tr[data-metric="Unknown"]')) !== null`))
	if err != nil || !rowID {
		t.Fatalf("mark the Unknown row: %v", err)
	}
	rec.Send(ctx, []flowmetrics.Point{
		pt("CustomerRouting", "Unknown", time.Now(), 4),
		pt("CustomerRouting", "Escalated", time.Now().Add(-30*time.Minute), 1),
	})
	want[0] = rowWant{"CustomerRouting", "Unknown", "6", "7", "7"}
	want = append(want, rowWant{"CustomerRouting", "Escalated", "0", "1", "1"})
	waitRows(t, bctx, "after more points", want, 8*time.Second)
	check("row updated in place", `window.__row === document.querySelector('tr[data-metric="Unknown"]')`)

	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.TempDir(), "dashboard.png")
	if p := os.Getenv("DASHBOARD_SCREENSHOT"); p != "" {
		path = p
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)

	// The empty state, in a second tab of the same browser.
	empty := httptest.NewServer(Handler(NewRecorder(0, nil), nil))
	defer empty.Close()
	tctx, tcancel := chromedp.NewContext(bctx)
	defer tcancel()
	if err := chromedp.Do(tctx, chromedp.Navigate(empty.URL+"/")); err != nil {
		t.Fatalf("load empty: %v", err)
	}
	if _, err := chromedp.Run(tctx, chromedp.Poll[bool](
		`!document.getElementById("empty").hidden && document.getElementById("empty").textContent === "no data yet — post events to /v1/events" && document.getElementById("metrics").hidden`,
		chromedp.WithPollingTimeout(5*time.Second))); err != nil {
		t.Errorf("empty state: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Errorf("browser console: %s", p)
	}
}

type rowWant struct{ flow, metric, recent, window, total string }

// waitRows waits until the table shows every wanted row, at most d.
func waitRows(t *testing.T, ctx context.Context, what string, want []rowWant, d time.Duration) {
	t.Helper()
	rows := make([][]string, len(want))
	for i, w := range want {
		rows[i] = []string{w.flow, w.metric, w.recent, w.window, w.total}
	}
	arg, _ := json.Marshal(rows)
	js := fmt.Sprintf(`%s.every(([f, m, a, b, c]) => {
		const r = [...document.querySelectorAll("tr[data-metric]")].find(r => r.dataset.flow === f && r.dataset.metric === m);
		return r && r.cells[0].textContent === m && r.cells[1].textContent === a && r.cells[2].textContent === b && r.cells[3].textContent === c;
	})`, arg)
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](js, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(d))); err != nil {
		shown, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("main").innerText`))
		t.Fatalf("%s: the table did not show %v within %v (%v); it shows:\n%s", what, want, d, err, shown)
	}
}
