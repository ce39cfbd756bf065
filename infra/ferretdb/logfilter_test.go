package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func logOnce(level slog.Level, err error) string {
	var out bytes.Buffer
	logger := slog.New(demoteDuplicates{slog.NewTextHandler(&out, &slog.HandlerOptions{Level: level})})
	logger.LogAttrs(context.Background(), slog.LevelError, "Exec", slog.Any("err", err))
	return out.String()
}

func TestDuplicateKeysAreNotLoggedAsErrors(t *testing.T) {
	dup := fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "23505", Message: "duplicate key"})
	if got := logOnce(slog.LevelWarn, dup); got != "" {
		t.Fatalf("a duplicate key was logged at warn level: %q", got)
	}
	if got := logOnce(slog.LevelDebug, dup); !strings.Contains(got, "level=DEBUG") {
		t.Fatalf("a duplicate key is not kept at DEBUG: %q", got)
	}
}

func TestOtherErrorsStayErrors(t *testing.T) {
	for _, err := range []error{&pgconn.PgError{Code: "23502"}, errors.New("connection refused")} {
		if got := logOnce(slog.LevelWarn, err); !strings.Contains(got, "level=ERROR") {
			t.Fatalf("%v was not logged at ERROR: %q", err, got)
		}
	}
}
