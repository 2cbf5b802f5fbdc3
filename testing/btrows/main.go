// Command btrows prints the cells of a Bigtable table on the emulator, one line
// per cell, because Google's cbt tool cannot be installed here.
//
//	go run ./testing/btrows -project p -instance i -table telemetry [-prefix d1#] [-limit 20] [-timeout 10s]
//
// Each line is `rowkey  family:qualifier  @timestamp  value`; the value is
// printed as text when it is printable UTF-8, else as 0x-prefixed hex.
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"cloud.google.com/go/bigtable"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// defaultEmulatorHost is where testing/emulators puts Bigtable by default.
const defaultEmulatorHost = "127.0.0.1:8086"

type config struct {
	project, instance, table string
	prefix                   string
	limit                    int64 // rows; 0 means all
	timeout                  time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.project, "project", "", "GCP project id (required)")
	flag.StringVar(&cfg.instance, "instance", "", "Bigtable instance id (required)")
	flag.StringVar(&cfg.table, "table", "", "table id (required)")
	flag.StringVar(&cfg.prefix, "prefix", "", "print only rows whose key starts with this")
	flag.Int64Var(&cfg.limit, "limit", 20, "print at most this many rows (0: all)")
	flag.DurationVar(&cfg.timeout, "timeout", 10*time.Second, "give up after this long (the client retries an unreachable emulator forever)")
	flag.Parse()

	if os.Getenv("BIGTABLE_EMULATOR_HOST") == "" {
		// The client only skips credentials and TLS when this is set.
		fmt.Fprintf(os.Stderr, "btrows: BIGTABLE_EMULATOR_HOST is not set; using %s\n", defaultEmulatorHost)
		os.Setenv("BIGTABLE_EMULATOR_HOST", defaultEmulatorHost)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "btrows: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	if cfg.project == "" || cfg.instance == "" || cfg.table == "" {
		return errors.New("-project, -instance and -table are required")
	}
	if cfg.limit < 0 {
		return fmt.Errorf("-limit %d: must be 0 (all) or more", cfg.limit)
	}
	emulator := os.Getenv("BIGTABLE_EMULATOR_HOST")
	if cfg.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.timeout)
		defer cancel()
	}
	c, err := bigtable.NewClient(ctx, cfg.project, cfg.instance)
	if err != nil {
		return fmt.Errorf("bigtable client for %s: %w", emulator, err)
	}
	defer c.Close()

	var opts []bigtable.ReadOption
	if cfg.limit > 0 {
		opts = append(opts, bigtable.LimitRows(cfg.limit))
	}
	var rng bigtable.RowSet = bigtable.InfiniteRange("")
	if cfg.prefix != "" {
		rng = bigtable.PrefixRange(cfg.prefix)
	}
	var writeErr error
	err = c.Open(cfg.table).ReadRows(ctx, rng, func(r bigtable.Row) bool {
		writeErr = printRow(out, r)
		return writeErr == nil
	}, opts...)
	if status.Code(err) == codes.NotFound {
		return fmt.Errorf("table %q does not exist in projects/%s/instances/%s on %s%s",
			cfg.table, cfg.project, cfg.instance, emulator, existingTables(ctx, cfg))
	}
	if errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded || status.Code(err) == codes.Unavailable {
		return fmt.Errorf("read table %s from %s: %w (is the Bigtable emulator running there? BIGTABLE_EMULATOR_HOST says where)", cfg.table, emulator, err)
	}
	if err != nil {
		return fmt.Errorf("read table %s from %s: %w", cfg.table, emulator, err)
	}
	return writeErr
}

// existingTables lists the instance's tables for the not-found message, or
// says nothing if they cannot be listed.
func existingTables(ctx context.Context, cfg config) string {
	ac, err := bigtable.NewAdminClient(ctx, cfg.project, cfg.instance)
	if err != nil {
		return ""
	}
	defer ac.Close()
	tables, err := ac.Tables(ctx)
	if err != nil {
		return ""
	}
	if len(tables) == 0 {
		return " (the instance has no tables; has the sandbox provisioned it?)"
	}
	slices.Sort(tables)
	return " (tables there: " + strings.Join(tables, ", ") + ")"
}

func printRow(w io.Writer, r bigtable.Row) error {
	families := make([]string, 0, len(r))
	for f := range r {
		families = append(families, f)
	}
	slices.Sort(families)
	for _, f := range families {
		for _, it := range r[f] {
			if _, err := fmt.Fprintf(w, "%s  %s  @%s  %s\n",
				formatBytes([]byte(it.Row)), it.Column, formatTimestamp(it.Timestamp), formatBytes(it.Value)); err != nil {
				return err
			}
		}
	}
	return nil
}

// formatTimestamp prints cell time in UTC at microsecond precision, Bigtable's unit.
func formatTimestamp(ts bigtable.Timestamp) string {
	return ts.Time().UTC().Format("2006-01-02T15:04:05.000000Z")
}

// formatBytes returns b as text when every rune is printable, else as hex,
// so one line stays one cell.
func formatBytes(b []byte) string {
	if utf8.Valid(b) && !strings.ContainsFunc(string(b), func(r rune) bool { return !unicode.IsPrint(r) }) {
		return string(b)
	}
	return "0x" + hex.EncodeToString(b)
}
