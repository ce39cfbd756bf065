package main

// FerretDB's PostgreSQL pool logs every failed statement at ERROR through pgx's tracer,
// duplicate keys included: an `insert_many(ordered=False)` that meets already-stored events
// (a redelivery, a client retry: expected and inspected by the aggregator) writes one ERROR
// line per duplicate, burying real errors. This handler demotes exactly unique violations
// (SQLSTATE 23505) to DEBUG; every other record passes unchanged.

import (
	"context"
	"errors"
	"log/slog"

	"github.com/jackc/pgx/v5/pgconn"
)

type demoteDuplicates struct{ slog.Handler }

func (h demoteDuplicates) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError && isUniqueViolation(r) {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		demoted := slog.NewRecord(r.Time, slog.LevelDebug, r.Message, r.PC)
		r.Attrs(func(a slog.Attr) bool { demoted.AddAttrs(a); return true })
		r = demoted
	}
	return h.Handler.Handle(ctx, r)
}

func (h demoteDuplicates) WithAttrs(attrs []slog.Attr) slog.Handler {
	return demoteDuplicates{h.Handler.WithAttrs(attrs)}
}

func (h demoteDuplicates) WithGroup(name string) slog.Handler {
	return demoteDuplicates{h.Handler.WithGroup(name)}
}

func isUniqueViolation(r slog.Record) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if err, ok := a.Value.Any().(error); ok {
			var pgErr *pgconn.PgError
			found = errors.As(err, &pgErr) && pgErr.Code == "23505"
		}
		return !found
	})
	return found
}
