package pebblestore

import (
	"log/slog"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/flowmetrics/flowmetrics/internal/store"
)

// OpenFS is Open on the filesystem fs, for fault injection.
func OpenFS(dir string, fs vfs.FS, opts store.Options, log *slog.Logger) (*Store, error) {
	return open(dir, fs, opts, log)
}
