// Command ferretdb runs an embedded FerretDB 1.24 (MongoDB wire protocol)
// server on PostgreSQL (the default) or SQLite, for the page-view analytics pipeline.
//
// Flags (each falls back to an environment variable, then a default):
//
//	-listen          FERRETDB_LISTEN          TCP address        (127.0.0.1:27027)
//	-backend         FERRETDB_BACKEND         postgresql|sqlite  (postgresql)
//	-postgresql-url  FERRETDB_POSTGRESQL_URL  PostgreSQL URL     (postgres://127.0.0.1:5432/ferretdb)
//	-sqlite-dir      FERRETDB_SQLITE_DIR      SQLite directory   (./data/ferretdb)
//	-log-level       FERRETDB_LOG_LEVEL       debug|info|warn|error (info)
//	-lookup-indexes                           keep the lookup indexes (true)
//
// On PostgreSQL each MongoDB database is a schema of the URL's database. The
// SQLite directory is created if missing and turned into an absolute
// "file:/abs/dir/" URL (FerretDB needs the trailing slash); each MongoDB
// database becomes one <db>.sqlite file inside it.
//
// Beside FerretDB it keeps the lookup indexes FerretDB's pushed-down filters
// can use (lookup_postgresql.go, lookup_sqlite.go), and it logs duplicate keys
// at DEBUG instead of ERROR (logfilter.go). The server stops gracefully on
// SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(strings.ToUpper(strings.TrimSpace(s))))
	return l, err
}

// absDir makes the directory (if needed) and returns its absolute path.
func absDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	return abs, os.MkdirAll(abs, 0o755)
}

func run() error {
	listen := flag.String("listen", envOr("FERRETDB_LISTEN", "127.0.0.1:27027"), "TCP listen address (env FERRETDB_LISTEN)")
	backend := flag.String("backend", envOr("FERRETDB_BACKEND", "postgresql"), "postgresql or sqlite (env FERRETDB_BACKEND)")
	pgURL := flag.String("postgresql-url", envOr("FERRETDB_POSTGRESQL_URL", "postgres://127.0.0.1:5432/ferretdb"), "PostgreSQL URL (env FERRETDB_POSTGRESQL_URL)")
	dir := flag.String("sqlite-dir", envOr("FERRETDB_SQLITE_DIR", "data/ferretdb"), "SQLite data directory, created if missing (env FERRETDB_SQLITE_DIR)")
	lookupIndexes := flag.Bool("lookup-indexes", true, "keep the lookup indexes (off only to measure what they buy)")
	level := flag.String("log-level", envOr("FERRETDB_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env FERRETDB_LOG_LEVEL)")
	flag.Parse()

	lvl, err := parseLevel(*level)
	if err != nil {
		return fmt.Errorf("bad log level %q: %w", *level, err)
	}
	text := slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})
	logger := slog.New(demoteDuplicates{text})
	slog.SetDefault(logger)

	// Telemetry is disabled (and locked) by ferretdb.New itself; the embedded
	// package starts no debug/metrics HTTP listener.
	config := &ferretdb.Config{Listener: ferretdb.ListenerConfig{TCP: *listen}, Logger: logger}
	var keepIndexes func(ctx context.Context)
	switch *backend {
	case "postgresql":
		config.Handler, config.PostgreSQLURL = "postgresql", *pgURL
		keepIndexes = func(ctx context.Context) {
			ensurePostgreSQLIndexes(ctx, *pgURL, 2*time.Second, logger)
		}
	case "sqlite":
		abs, err := absDir(*dir)
		if err != nil {
			return fmt.Errorf("sqlite dir %q: %w", *dir, err)
		}
		// FerretDB wants a "file:/abs/dir/" URL, with the trailing slash.
		config.Handler = "sqlite"
		config.SQLiteURL = (&url.URL{Scheme: "file", Opaque: filepath.ToSlash(abs) + "/"}).String()
		keepIndexes = func(ctx context.Context) { ensureSQLiteIndexes(ctx, abs, 2*time.Second, logger) }
	default:
		return fmt.Errorf("bad backend %q: postgresql or sqlite", *backend)
	}
	f, err := ferretdb.New(config)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *lookupIndexes {
		go keepIndexes(ctx)
	}

	logger.Info("ferretdb starting", "listen", *listen, "backend", *backend)
	if err = f.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	logger.Info("ferretdb stopped")
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ferretdb:", err)
		os.Exit(1)
	}
}
