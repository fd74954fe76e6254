package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// secretMatcher compares a presented credential with the shared secret in
// constant time. Both sides are hashed first, so the comparison always
// covers 32 bytes whatever their lengths: neither the time it takes nor its
// early exits say how long the secret is.
type secretMatcher [sha256.Size]byte

func newSecretMatcher(secret string) secretMatcher { return sha256.Sum256([]byte(secret)) }

func (s *secretMatcher) match(got string) bool {
	sum := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(sum[:], s[:]) == 1
}

// bearerToken returns the token of an "Authorization: Bearer <token>"
// header. The scheme is matched case-insensitively (RFC 7235 §2.1, RFC
// 6750 §2.1), so "bearer" and "BEARER" work too.
func bearerToken(authorization string) (string, bool) {
	scheme, token, ok := strings.Cut(authorization, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimLeft(token, " "), true
}

func (h *handler) auth(next http.Handler) http.Handler {
	if h.opts.Secret == "" {
		return next
	}
	secret := newSecretMatcher(h.opts.Secret)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !secret.match(r.Header.Get(h.opts.AuthHeader)) {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong " + h.opts.AuthHeader + " header"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// readAuth guards a read endpoint when ProtectReads is set (see Options).
func (h *handler) readAuth(next http.Handler) http.Handler {
	if !h.opts.ProtectReads || h.opts.Secret == "" {
		return next
	}
	secret := newSecretMatcher(h.opts.Secret)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pass, basic := r.BasicAuth()
		bearer, isBearer := bearerToken(r.Header.Get("Authorization"))
		if secret.match(r.Header.Get(h.opts.AuthHeader)) || basic && secret.match(pass) || isBearer && secret.match(bearer) {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="flowmetrics", charset="UTF-8"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "this endpoint needs the shared secret: " + h.opts.AuthHeader + " header, Authorization: Bearer, or Basic auth with the secret as password"})
	})
}
