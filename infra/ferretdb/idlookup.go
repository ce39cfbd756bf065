package main

// FerretDB 1.24's SQLite backend pushes a `find({_id: <string>})` filter down as
// `WHERE _ferretdb_sjson->'$._id' = ?`, but the unique index it creates on `_id` is on
// `_ferretdb_sjson->"_id"`, which SQLite's planner does not match: every lookup by _id scans
// the whole table. The aggregator looks events up by _id when Kafka redelivers them after a
// crash, so this adds, beside each collection's table, an index on exactly the pushed-down
// expression. It only changes query plans: FerretDB's metadata does not list it, and it is
// dropped with the table. Real MongoDB needs none of this.

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	_ "modernc.org/sqlite" // the driver FerretDB itself uses
)

// ensureIDLookupIndexes runs until ctx ends, every interval adding missing indexes.
func ensureIDLookupIndexes(ctx context.Context, dir string, interval time.Duration, logger *slog.Logger) {
	dbs := map[string]*sql.DB{}
	defer func() {
		for _, db := range dbs {
			db.Close()
		}
	}()
	done := map[string]bool{}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		files, _ := filepath.Glob(filepath.Join(dir, "*.sqlite"))
		for _, file := range files {
			db, ok := dbs[file]
			if !ok {
				var err error
				db, err = sql.Open("sqlite", "file:"+file+"?_pragma=busy_timeout(10000)")
				if err != nil {
					logger.Warn("id lookup index: open", "file", file, "error", err)
					continue
				}
				db.SetMaxOpenConns(1)
				dbs[file] = db
			}
			if err := indexTables(ctx, db, done); err != nil {
				logger.Debug("id lookup index", "file", file, "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func indexTables(ctx context.Context, db *sql.DB, done map[string]bool) error {
	rows, err := db.QueryContext(ctx, `SELECT table_name FROM "_ferretdb_collections"`)
	if err != nil {
		return err // a database FerretDB has not initialised yet
	}
	var tables []string
	for rows.Next() {
		var table string
		if err = rows.Scan(&table); err != nil {
			rows.Close()
			return err
		}
		tables = append(tables, table)
	}
	rows.Close()
	for _, table := range tables {
		if done[table] {
			continue
		}
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %q ON %q (_ferretdb_sjson->'$._id')`,
			table+"_id_lookup", table)
		if _, err = db.ExecContext(ctx, q); err != nil {
			return err
		}
		done[table] = true
	}
	return nil
}
