package main

import (
	"context"
	"errors"
	"io"
)

func runBoards(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("boards: not yet")
}
