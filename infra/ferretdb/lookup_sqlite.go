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

// sqliteMissing lists the collection tables that lack their lookup index. It asks the
// catalog each pass instead of remembering what it indexed: a collection dropped and
// re-created under the same table name has lost its index and must get it again.
const sqliteMissing = `SELECT c.table_name FROM "_ferretdb_collections" c
WHERE NOT EXISTS (SELECT 1 FROM sqlite_master m
                  WHERE m.type = 'index' AND m.name = c.table_name || '_id_lookup')`

// ensureSQLiteIndexes runs until ctx ends, every interval adding missing indexes.
func ensureSQLiteIndexes(ctx context.Context, dir string, interval time.Duration, logger *slog.Logger) {
	dbs := map[string]*sql.DB{}
	defer func() {
		for _, db := range dbs {
			db.Close()
		}
	}()
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
			if err := indexSQLiteTables(ctx, db); err != nil {
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

func indexSQLiteTables(ctx context.Context, db *sql.DB) error {
	tables, err := queryStrings(ctx, db, sqliteMissing)
	if err != nil {
		return err // a database FerretDB has not initialised yet
	}
	for _, table := range tables {
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %q ON %q (_ferretdb_sjson->'$._id')`,
			table+"_id_lookup", table)
		if _, err = db.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

func queryStrings(ctx context.Context, db *sql.DB, q string) ([]string, error) {
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err = rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
