package main

// FerretDB 1.24's PostgreSQL backend pushes an equality filter on a top-level field down as
// `_jsonb->$1 @> $2` (internal/backends/postgresql/query.go, filterEqual: the field name is
// the first bind parameter, the value its sjson encoding); `$in`, ranges, `$or` and dotted
// paths are evaluated in Go after a full scan. Its own `_id` index is a btree on
// `(_jsonb->'_id')`, which cannot serve `@>`: every find_one by _id scans the table. An
// expression GIN index `((_jsonb->'<field>') jsonb_path_ops)` does serve it (the planner's
// custom plans substitute $1, so the expression matches). This adds one per collection
// table for `_id` (the aggregator's redo lookups) and `site_id` (every query of the query
// API's MongoDB fallback starts with the site). FerretDB's metadata does not list them and
// dropping the collection drops them. Real MongoDB needs none of this.

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
)

// pgIndexedFields are the document fields that get a lookup index on every collection.
var pgIndexedFields = []string{"_id", "site_id"}

// pgMissing lists (table oid, schema, table, field, broken) for every collection table and
// field whose index is missing or invalid (a failed concurrent build). Index names carry the
// table's OID, and the catalog is asked each pass: a collection dropped and re-created under
// the same table name is a new OID and gets its indexes again.
const pgMissing = `
SELECT c.oid::bigint, n.nspname, c.relname, f.field, i.oid IS NOT NULL
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = '_jsonb' AND NOT a.attisdropped
CROSS JOIN unnest($1::text[]) AS f(field)
LEFT JOIN pg_class i ON i.relnamespace = c.relnamespace AND i.relname = 'pv_' || c.oid || '_' || f.field
LEFT JOIN pg_index x ON x.indexrelid = i.oid
WHERE c.relkind = 'r' AND c.relname NOT LIKE '\_ferretdb\_%'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (i.oid IS NULL OR NOT x.indisvalid)`

type pgMissingIndex struct {
	oid           int64
	schema, table string
	field         string
	broken        bool
}

// name is the index's name: short whatever the table's name (PostgreSQL truncates at 63).
func (m pgMissingIndex) name() string { return fmt.Sprintf("pv_%d_%s", m.oid, m.field) }

// ensurePostgreSQLIndexes runs until ctx ends, every interval adding missing indexes.
func ensurePostgreSQLIndexes(ctx context.Context, url string, interval time.Duration, logger *slog.Logger) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for {
		if conn == nil || conn.IsClosed() {
			var err error
			if conn, err = pgx.Connect(ctx, url); err != nil {
				logger.Debug("lookup index: connect", "error", err)
				conn = nil
			}
		}
		if conn != nil {
			if err := indexPostgreSQLTables(ctx, conn, logger); err != nil && ctx.Err() == nil {
				logger.Warn("lookup index", "error", err)
				conn.Close(ctx)
				conn = nil
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func indexPostgreSQLTables(ctx context.Context, conn *pgx.Conn, logger *slog.Logger) error {
	rows, err := conn.Query(ctx, pgMissing, pgIndexedFields)
	if err != nil {
		return err
	}
	missing, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (pgMissingIndex, error) {
		var m pgMissingIndex
		err := row.Scan(&m.oid, &m.schema, &m.table, &m.field, &m.broken)
		return m, err
	})
	if err != nil {
		return err
	}
	for _, m := range missing {
		index := pgx.Identifier{m.schema, m.name()}.Sanitize()
		if m.broken {
			if _, err = conn.Exec(ctx, "DROP INDEX CONCURRENTLY IF EXISTS "+index); err != nil {
				return err
			}
		}
		// CONCURRENTLY: a large existing collection keeps taking writes while it builds.
		// The field names are our own constants, so quoting them as literals is safe.
		q := fmt.Sprintf(`CREATE INDEX CONCURRENTLY IF NOT EXISTS %s ON %s USING gin ((_jsonb->'%s') jsonb_path_ops)`,
			pgx.Identifier{m.name()}.Sanitize(), pgx.Identifier{m.schema, m.table}.Sanitize(), m.field)
		started := time.Now()
		if _, err = conn.Exec(ctx, q); err != nil {
			// The table may have been dropped meanwhile; the next pass sees the catalog anew.
			logger.Debug("lookup index: create", "table", m.table, "field", m.field, "error", err)
			continue
		}
		logger.Info("lookup index created", "table", m.schema+"."+m.table, "field", m.field,
			"took", time.Since(started).Round(time.Millisecond))
	}
	return nil
}
