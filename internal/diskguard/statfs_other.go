//go:build !linux

package diskguard

import "os"

func statfs(dir string) (Space, error) { return Space{}, ErrUnsupported }

func allocate(f *os.File, size int64) error { return writeZeros(f, size) }
