package browser_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flowmetrics/flowmetrics"
	"github.com/flowmetrics/flowmetrics/internal/dashboard"
)

// TestBrowserReconnects: the server ends each event stream after its
// lifetime (here 2 s); the page reconnects by itself and keeps showing new
// occurrences live.
func TestBrowserReconnects(t *testing.T) {
	needBrowser(t)
	rec := dashboard.NewRecorder(nil)
	h := dashboard.New(rec, nil)
	h.SetStreamLifetime(2 * time.Second)
	var streams atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == dashboard.StreamPath {
			streams.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	defer srv.Close()
	defer h.CloseStreams()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	bctx, problems := newBrowser(t, ctx, 1000, 800)
	if err := chromedp.Do(bctx, chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, bctx, "the empty page", `!document.getElementById("empty").hidden`, 10*time.Second)
	for i := range 3 {
		time.Sleep(2500 * time.Millisecond) // the stream ended meanwhile
		at := time.Now()
		rec.Send(ctx, []flowmetrics.Point{pt("Reconnect", fmt.Sprintf("M%d", i), at, 1)})
		waitFor(t, bctx, "a live update after the stream ended", fmt.Sprintf(`[...document.querySelectorAll("#table tbody tr")].some(tr => tr.dataset.metric === "M%d")`, i), 3*time.Second)
		t.Logf("update %d shown %v after the send", i, time.Since(at).Round(time.Millisecond))
	}
	if n := streams.Load(); n < 4 {
		t.Errorf("the page opened %d streams in 7.5 s of 2 s streams, want it to reconnect (≥ 4)", n)
	}
	for _, p := range problems() {
		// The browser reports a stream the server ended as a network
		// error on the console; that is the reconnect, not a fault.
		if !strings.Contains(p, "api/v1/stream") {
			t.Errorf("browser console: %s", p)
		}
	}
}

// TestBrowserNoFraming: a page of another origin that frames the dashboard
// gets nothing: Chromium refuses it for frame-ancestors 'none'.
func TestBrowserNoFraming(t *testing.T) {
	needBrowser(t)
	dash := httptest.NewServer(dashboard.New(dashboard.NewRecorder(nil), nil))
	defer dash.Close()
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<!doctype html><title>other site</title><iframe id="f" src="%s/"></iframe>`, strings.Replace(dash.URL, "127.0.0.1", "localhost", 1))
	}))
	defer evil.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	bctx, problems := newBrowser(t, ctx, 800, 600)
	if err := chromedp.Do(bctx, chromedp.Navigate(evil.URL+"/")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, p := range problems() {
			if strings.Contains(p, "frame-ancestors") {
				t.Logf("refused: %s", p)
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("the framed dashboard was not refused for frame-ancestors; console: %v", problems())
}
