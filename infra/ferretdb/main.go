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
// The server stops gracefully on SIGINT or SIGTERM.
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

// sqliteURL makes the directory (if needed) and returns "file:/abs/dir/".
func sqliteURL(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if err = os.MkdirAll(abs, 0o755); err != nil {
		return "", err
	}
	u := &url.URL{Scheme: "file", Opaque: filepath.ToSlash(abs) + "/"}
	return u.String(), nil
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

	u, err := sqliteURL(*dir)
	if err != nil {
		return fmt.Errorf("sqlite dir %q: %w", *dir, err)
	}

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
