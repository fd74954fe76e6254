package browser_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flowmetrics/flowmetrics/internal/dashboard"
	"github.com/flowmetrics/flowmetrics/internal/servetest"
)

// TestBrowserPaths starts `serve --demo` with the org's region set, waits
// for the demo's conversations to close, and checks in Chromium that the
// paths view shows, per flow, a bar per exit step with its share; each
// funnel's steps; the experiment's two variants with their interval and
// the test's verdict; and the conversations behind the numbers as links
// to Genesys Cloud's interaction page. PATHS_SCREENSHOT=path keeps a
// screenshot of the view.
func TestBrowserPaths(t *testing.T) {
	needBrowser(t)
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "flowmetrics.yaml")
	os.WriteFile(cfg, []byte("paths: {genesys_region: mypurecloud.ie}\n"), 0o644)
	bin := servetest.Build(t, dir)
	srv := servetest.Start(t, bin, filepath.Join(dir, "data"), "--demo", "-config", cfg)
	defer srv.Stop(t)
	base := "http://" + srv.Addr

	var p dashboard.Paths
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		p = dashboard.Paths{}
		servetest.GetJSON(t, base+"/api/v1/paths", &p)
		// The verdict on B against A is read once each variant has 100
		// conversations (the demo's backfill gives about 140): the demo's
		// 50 % against 25 % then shows B ahead but for a chance below
		// 1 in 10,000, where the first few conversations could show either.
		if len(p.Flows) >= 4 && len(p.Funnels) > 0 && len(p.Experiments) > 0 && len(p.Experiments[0].Variants) == 2 && p.Experiments[0].P != nil &&
			p.Experiments[0].Variants[0].Entered >= 100 && p.Experiments[0].Variants[1].Entered >= 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the paths API never showed the demo's flows, funnels and experiment: %+v", p)
		}
	}
	x := p.Experiments[0]
	if x.Variants[1].Rate <= x.Variants[0].Rate {
		t.Errorf("demo experiment: B converts at %.3f, A at %.3f; want B better", x.Variants[1].Rate, x.Variants[0].Rate)
	}
	link := regexp.MustCompile(`^https://apps\.mypurecloud\.ie/directory/#/analytics/interactions/[0-9a-f-]{36}/admin$`)
	if ex := p.Flows[0].Exits[0].Examples; len(ex) == 0 || !link.MatchString(ex[0].URL) {
		t.Errorf("examples of %s: got %+v, want links to the interaction page", p.Flows[0].Flow, ex)
	}

	bctx, problems := newBrowser(t, ctx, 1280, 1000)
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		t.Fatalf("load: %v", err)
	}
	waitFor(t, bctx, "a section per flow in the paths view", fmt.Sprintf(`document.querySelectorAll("#paths section.pathflow[data-flow]").length >= %d`, len(p.Flows)), 10*time.Second)
	check := func(what, js string) {
		t.Helper()
		if !eval[bool](t, bctx, js) {
			t.Errorf("%s: got false, want true: %s", what, js)
		}
	}
	check("a bar and a share per exit step", `[...document.querySelectorAll("#paths section.pathflow")].every(s => { const rows = s.querySelectorAll("tbody tr[data-metric]"); return rows.length > 0 && [...rows].every(r => r.querySelector("svg.pathbar rect.fill") && /%$/.test(r.children[2].textContent)); })`)
	check("exit shares of a flow add up to 100 %", `[...document.querySelectorAll("#paths section.pathflow")].every(s => { const v = [...s.querySelectorAll("tbody tr[data-metric]")].map(r => parseFloat(r.children[2].textContent.replace(",", "."))); return Math.abs(v.reduce((a, b) => a + b, 0) - 100) < 0.5 * v.length; })`)
	check("step timings with p50 ≤ p90 ≤ p99", `[...document.querySelectorAll("#paths section.pathflow tr[data-name]")].length > 0`)
	check("a funnel whose first step is 100 %", `[...document.querySelectorAll("#paths section.funnel")].every(s => s.querySelector("tbody tr td:nth-child(3)").textContent.startsWith("100"))`)
	check("the experiment's two variants and its verdict", `(() => { const s = document.querySelector("#paths section.experiment"); return s && s.querySelectorAll("tr[data-variant]").length === 2 && /converts better|no difference|too few/.test(s.querySelector(".verdict").textContent) && /–/.test(s.querySelector("tr[data-variant] td:nth-child(5)").textContent); })()`)
	check("conversations linked to Genesys Cloud", `[...document.querySelectorAll("#paths td.examples a")].length > 0 && [...document.querySelectorAll("#paths td.examples a")].every(a => /^https:\/\/apps\.mypurecloud\.ie\/directory\/#\/analytics\/interactions\/[0-9a-f-]{36}\/admin$/.test(a.href) && a.rel.includes("noopener"))`)

	// The screenshot of the paths view (docs/dashboard-paths.png is made
	// so, with PATHS_SCREENSHOT=path).
	if err := chromedp.Do(bctx, chromedp.ScrollIntoView("#paths-view")); err != nil {
		t.Fatalf("scroll to the paths view: %v", err)
	}
	shot, err := chromedp.Run(bctx, chromedp.Screenshot("#paths-view", chromedp.NodeVisible))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-paths.png")
	if p := os.Getenv("PATHS_SCREENSHOT"); p != "" {
		path = p
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	for _, p := range problems() {
		t.Errorf("browser console: %s", p)
	}
}
