package httpapi

import (
	"net"
	"net/http"
	"strconv"
	"strings"
)

// hostAllowed reports whether a request's Host names this server: a
// loopback name (localhost, 127.0.0.1, [::1], with or without a port), any
// IP address literal, a name in allowed, or no Host at all.
//
// The check defeats DNS rebinding: a page on attacker.example whose name is
// made to resolve to 127.0.0.1 is same-origin with serve in the browser, so
// neither CORS nor the JSON-only Content-Type would stop it, but every
// request it makes still says Host: attacker.example. An IP literal cannot
// be rebound (no name is resolved, so the page's origin is that address),
// which is why a Kubernetes probe or a scrape by pod IP needs no entry. A
// request without a Host (HTTP/1.0, some load balancers' health checks)
// cannot come from a browser.
func hostAllowed(host string, allowed map[string]bool) bool {
	if host == "" {
		return true
	}
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.TrimSuffix(strings.ToLower(strings.Trim(name, "[]")), ".")
	if name == "localhost" || allowed[name] {
		return true
	}
	return net.ParseIP(name) != nil
}

// hostNames normalises the configured names for hostAllowed.
func hostNames(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[strings.TrimSuffix(strings.ToLower(strings.Trim(n, "[]")), ".")] = true
	}
	return m
}

// checkHost answers 421 Misdirected Request for a Host this server does not
// serve, before anything else looks at the request.
func (h *handler) checkHost(next http.Handler) http.Handler {
	allowed := hostNames(h.opts.AllowedHosts)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hostAllowed(r.Host, allowed) {
			h.m.HTTPRefused.WithLabelValues("host_not_allowed").Inc()
			w.Header().Set("Connection", "close")
			writeJSON(w, http.StatusMisdirectedRequest, map[string]string{"error": "host " + quoteHost(r.Host) + " is not served here: a name this server answers to must be listed in http.allowed_hosts"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// quoteHost quotes a Host for an error message, cut to a sane length.
func quoteHost(s string) string {
	if len(s) > 100 {
		s = s[:100] + "…"
	}
	return strconv.Quote(s)
}
