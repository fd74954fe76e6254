//go:build !unix

package dogstatsd

// socketError: no SO_ERROR here; only the client's own write errors count.
func socketError(fd uintptr) error { return nil }
