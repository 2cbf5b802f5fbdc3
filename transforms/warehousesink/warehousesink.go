// Package warehousesink writes telemetry readings and dead letters to the
// warehouse tables of schemas (warehouse/*.json), one transaction per bundle.
// The embedded default is a DuckDB file; BigQuery is not wired in yet.
package warehousesink

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
)

func init() {
	register.DoFn3x1[context.Context, schemas.Event, func(string), error](&telemetryFn{})
	register.DoFn3x1[context.Context, schemas.DeadLetter, func(string), error](&deadLetterFn{})
	register.Emitter1[string]()
}

// Config says where the warehouse is.
type Config struct {
	// URL is duckdb:///path/to/file.duckdb. bigquery:// is not yet supported.
	URL string
	// Dataset is the BigQuery dataset, or DuckDB schema, holding the tables
	// and views (default "main", DuckDB's default schema).
	Dataset string
}

// Validate reports whether the sink can write to cfg, so main can refuse a
// bad flag before the pipeline starts; the sink's Setup fails the same way.
func (c Config) Validate() error {
	if _, err := duckDBPath(c.URL); err != nil {
		return err
	}
	_, err := schemas.WarehouseViewSQL(c.withDefaults().Dataset)
	return err
}

func (c Config) withDefaults() Config {
	if c.Dataset == "" {
		c.Dataset = "main"
	}
	return c
}

// maxRowsPerInsert bounds one multi-row INSERT (and so its parameter count).
const maxRowsPerInsert = 500

// Write stores every event of events (a PCollection of schemas.Event) in the
// telemetry table, one row per metric, and returns the events' receipts
// (Event.AckID where non-empty, a PCollection of string) once the bundle's
// transaction has committed, for the source to acknowledge.
//
// Writes are at least once: a retried or replayed bundle inserts its rows
// again. That is harmless because readers use the telemetry_dedup view, which
// keeps one row per (device_id, seq, metric), the first ingested.
func Write(s beam.Scope, cfg Config, events beam.PCollection) beam.PCollection {
	s = s.Scope("warehousesink.Write")
	cfg = cfg.withDefaults()
	return beam.ParDo(s, &telemetryFn{URL: cfg.URL, Dataset: cfg.Dataset}, events)
}

// WriteDeadLetters stores every record of deadLetters (a PCollection of
// schemas.DeadLetter) in the deadletter table and returns their receipts
// (DeadLetter.AckID where non-empty) once the bundle's transaction has
// committed. A replayed record is stored again, with the same message_id.
func WriteDeadLetters(s beam.Scope, cfg Config, deadLetters beam.PCollection) beam.PCollection {
	s = s.Scope("warehousesink.WriteDeadLetters")
	cfg = cfg.withDefaults()
	return beam.ParDo(s, &deadLetterFn{URL: cfg.URL, Dataset: cfg.Dataset}, deadLetters)
}

var (
	telemetryColumns = []string{
		"device_id", "seq", "ts", "metric", "value", "registry", "location", "subfolder",
		"message_id", "publish_time", "ingest_time", "buffered", "device_class", "schema_id",
	}
	telemetryTuple    = placeholders(len(telemetryColumns))
	deadLetterColumns = []string{
		"timestamp", "payloadString", "payloadBytes", "attributes", "errorMessage",
		"stacktrace", "stage", "schema_id", "message_id", "publish_time",
	}
)

type telemetryFn struct {
	URL     string
	Dataset string

	w bundleWriter
}

func (fn *telemetryFn) Setup(ctx context.Context) error {
	return fn.w.setup(ctx, fn.URL, fn.Dataset, schemas.TelemetryTable, telemetryColumns)
}

func (fn *telemetryFn) Teardown() error { return fn.w.teardown() }

func (fn *telemetryFn) StartBundle(_ context.Context, _ func(string)) { fn.w.reset() }

func (fn *telemetryFn) ProcessElement(ctx context.Context, e schemas.Event, _ func(string)) error {
	ingest := time.Now().UTC()
	for _, name := range e.MetricNames() {
		fn.w.add(telemetryTuple,
			e.DeviceID, e.Seq, millis(e.TS), name, e.Metrics[name],
			nullString(e.Registry), nullString(e.Location), nullString(e.SubFolder),
			nullString(e.MessageID), nullMillis(e.PublishMillis), ingest, e.Buffered,
			nullString(e.DeviceClass), nullString(e.SchemaID))
		if err := fn.w.maybeFlush(ctx); err != nil {
			return err
		}
	}
	fn.w.ack(e.AckID)
	return nil
}

func (fn *telemetryFn) FinishBundle(ctx context.Context, written func(string)) error {
	return fn.w.commit(ctx, written)
}

type deadLetterFn struct {
	URL     string
	Dataset string

	w bundleWriter
}

func (fn *deadLetterFn) Setup(ctx context.Context) error {
	return fn.w.setup(ctx, fn.URL, fn.Dataset, schemas.DeadLetterTable, deadLetterColumns)
}

func (fn *deadLetterFn) Teardown() error { return fn.w.teardown() }

func (fn *deadLetterFn) StartBundle(_ context.Context, _ func(string)) { fn.w.reset() }

func (fn *deadLetterFn) ProcessElement(ctx context.Context, d schemas.DeadLetter, _ func(string)) error {
	// The attributes are a list of structs; spelling it as a DuckDB list
	// literal of bound keys and values avoids relying on the driver to bind
	// nested types. Keys are sorted so a replay stores the same list.
	keys := make([]string, 0, len(d.Attributes))
	for k := range d.Attributes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	attrs := make([]string, len(keys))
	args := []any{millis(d.TimestampMillis), nullString(d.PayloadString), nullBytes(d.PayloadBytes)}
	for i, k := range keys {
		attrs[i] = "{'key': ?, 'value': ?}"
		args = append(args, k, d.Attributes[k])
	}
	args = append(args, nullString(d.ErrorMessage), nullString(d.Stacktrace), d.Stage,
		nullString(d.SchemaID), nullString(d.MessageID), nullMillis(d.PublishMillis))
	tuple := "(?, ?, ?, [" + strings.Join(attrs, ", ") + "], ?, ?, ?, ?, ?, ?)"
	fn.w.add(tuple, args...)
	if err := fn.w.maybeFlush(ctx); err != nil {
		return err
	}
	fn.w.ack(d.AckID)
	return nil
}

func (fn *deadLetterFn) FinishBundle(ctx context.Context, written func(string)) error {
	return fn.w.commit(ctx, written)
}

// bundleWriter holds one bundle's transaction: rows go out in multi-row
// INSERTs as they accumulate, and the receipts wait for the commit.
type bundleWriter struct {
	path    string
	table   string // dataset-qualified
	insert  string // INSERT INTO table (columns) VALUES
	db      *sql.DB
	tx      *sql.Tx
	tuples  []string
	args    []any
	rows    int64 // rows inserted in tx
	acks    []string
	written beam.Counter
	failed  beam.Counter
}

func (w *bundleWriter) setup(ctx context.Context, rawURL, dataset, table string, columns []string) error {
	path, err := duckDBPath(rawURL)
	if err != nil {
		return err
	}
	db, err := acquire(ctx, path, dataset)
	if err != nil {
		return err
	}
	w.path, w.db = path, db
	w.table = dataset + "." + table
	quoted := make([]string, len(columns))
	for i, c := range columns {
		quoted[i] = `"` + c + `"`
	}
	w.insert = "INSERT INTO " + w.table + " (" + strings.Join(quoted, ", ") + ") VALUES "
	w.written = beam.NewCounter("iotpipe.warehouse", table+"_rows_written")
	w.failed = beam.NewCounter("iotpipe.warehouse", table+"_write_failures")
	return nil
}

func (w *bundleWriter) teardown() error {
	w.rollback()
	if w.db == nil {
		return nil
	}
	w.db = nil
	return release(w.path)
}

// reset starts a bundle; a transaction left by a failed bundle is dropped.
func (w *bundleWriter) reset() {
	w.rollback()
	w.tuples, w.args, w.acks, w.rows = w.tuples[:0], w.args[:0], w.acks[:0], 0
}

func (w *bundleWriter) rollback() {
	if w.tx != nil {
		_ = w.tx.Rollback() // the bundle failed already; its error is the one reported
		w.tx = nil
	}
}

func (w *bundleWriter) add(tuple string, args ...any) {
	w.tuples = append(w.tuples, tuple)
	w.args = append(w.args, args...)
}

func (w *bundleWriter) ack(id string) {
	if id != "" {
		w.acks = append(w.acks, id)
	}
}

func (w *bundleWriter) maybeFlush(ctx context.Context) error {
	if len(w.tuples) < maxRowsPerInsert {
		return nil
	}
	return w.flush(ctx)
}

// flush inserts the pending rows inside the bundle's transaction.
func (w *bundleWriter) flush(ctx context.Context) error {
	if len(w.tuples) == 0 {
		return nil
	}
	n := len(w.tuples)
	if w.tx == nil {
		// database/sql rolls a transaction back when its context ends; this
		// one must live until FinishBundle, whatever the element's context.
		tx, err := w.db.BeginTx(context.WithoutCancel(ctx), nil)
		if err != nil {
			w.failed.Inc(ctx, int64(n))
			return fmt.Errorf("warehouse: begin transaction on %s: %w", w.path, err)
		}
		w.tx = tx
	}
	if _, err := w.tx.ExecContext(ctx, w.insert+strings.Join(w.tuples, ", "), w.args...); err != nil {
		w.failed.Inc(ctx, w.rows+int64(n))
		w.rollback()
		return fmt.Errorf("warehouse: insert %d rows into %s in %s: %w", n, w.table, w.path, err)
	}
	w.rows += int64(n)
	w.tuples, w.args = w.tuples[:0], w.args[:0]
	return nil
}

// commit writes what is pending, commits, and only then hands on the receipts.
func (w *bundleWriter) commit(ctx context.Context, written func(string)) error {
	if err := w.flush(ctx); err != nil {
		return err
	}
	if w.tx != nil {
		err := w.tx.Commit()
		w.tx = nil
		if err != nil {
			w.failed.Inc(ctx, w.rows)
			return fmt.Errorf("warehouse: commit %d rows to %s in %s: %w", w.rows, w.table, w.path, err)
		}
		w.written.Inc(ctx, w.rows)
	}
	for _, a := range w.acks {
		written(a)
	}
	w.acks, w.rows = w.acks[:0], 0
	return nil
}

// placeholders returns "(?, ?, ...)" with n parameters.
func placeholders(n int) string {
	return "(" + strings.TrimSuffix(strings.Repeat("?, ", n), ", ") + ")"
}

func millis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func nullMillis(ms int64) sql.NullTime {
	if ms == 0 {
		return sql.NullTime{}
	}
	return sql.NullTime{Time: millis(ms), Valid: true}
}

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

func nullBytes(b []byte) any {
	if b == nil {
		return nil
	}
	return b
}
