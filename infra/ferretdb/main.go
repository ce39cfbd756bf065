// Command ferretdb runs an embedded FerretDB 1.24 (MongoDB wire protocol)
// server with the SQLite backend, for the page-view analytics pipeline.
//
// Flags (each falls back to an environment variable, then a default):
//
//	-listen      FERRETDB_LISTEN      TCP address        (127.0.0.1:27027)
//	-sqlite-dir  FERRETDB_SQLITE_DIR  SQLite directory   (./data/ferretdb)
//	-log-level   FERRETDB_LOG_LEVEL   debug|info|warn|error (info)
//
// The SQLite directory is created if missing and turned into an absolute
// "file:/abs/dir/" URL (FerretDB needs the trailing slash). Each MongoDB
// database becomes one <db>.sqlite file inside it.
//
// Beside FerretDB it keeps an index that makes lookups by _id use an index
// (see idlookup.go). The server stops gracefully on SIGINT or SIGTERM.
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
	dir := flag.String("sqlite-dir", envOr("FERRETDB_SQLITE_DIR", "data/ferretdb"), "SQLite data directory, created if missing (env FERRETDB_SQLITE_DIR)")
	level := flag.String("log-level", envOr("FERRETDB_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env FERRETDB_LOG_LEVEL)")
	flag.Parse()

	lvl, err := parseLevel(*level)
	if err != nil {
		return fmt.Errorf("bad log level %q: %w", *level, err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(logger)

	abs, err := absDir(*dir)
	if err != nil {
		return fmt.Errorf("sqlite dir %q: %w", *dir, err)
	}
	// FerretDB wants a "file:/abs/dir/" URL, with the trailing slash.
	u := (&url.URL{Scheme: "file", Opaque: filepath.ToSlash(abs) + "/"}).String()

	// Telemetry is disabled (and locked) by ferretdb.New itself; the embedded
	// package starts no debug/metrics HTTP listener.
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: u,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	go ensureIDLookupIndexes(ctx, abs, 2*time.Second, logger)

	logger.Info("ferretdb starting", "listen", *listen, "sqlite_url", u)
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
