// Package warehousesink writes telemetry readings and dead letters to the
// warehouse tables of schemas (warehouse/*.json) and hands back their
// receipts only once the rows are durable: one DuckDB transaction per bundle
// (the embedded default), or BigQuery Storage Write API appends to the
// tables' default streams whose results reported success.
package warehousesink

import (
	"context"
	"sort"
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
	// URL is duckdb:///path/to/file.duckdb or bigquery://project/dataset.
	URL string
	// Dataset is the DuckDB schema holding the tables and views (default
	// "main", DuckDB's default schema). A bigquery:// URL names its dataset
	// itself; Dataset must then be empty or the same.
	Dataset string
	// BigQueryEmulator, if set, is the host:port of a local BigQuery Storage
	// Write API server (testing/emulators), dialled in plaintext without
	// credentials. Empty means the BIGQUERY_STORAGE_EMULATOR_HOST variable
	// where the client is built, and without it Google's endpoint with
	// Application Default Credentials. Only bigquery:// URLs use it.
	BigQueryEmulator string
}

// Validate reports whether the sink can write to cfg, so main can refuse a
// bad flag before the pipeline starts; the sink's Setup fails the same way.
func (c Config) Validate() error {
	_, err := c.target()
	return err
}

// Write stores every event of events (a PCollection of schemas.Event) in the
// telemetry table, one row per metric, and returns the events' receipts
// (Event.AckID where non-empty, a PCollection of string) once the bundle's
// rows are durable: its DuckDB transaction committed, or every BigQuery
// append reported success. A bundle that fails hands back no receipt, so its
// messages are delivered again.
//
// Writes are at least once: a retried or replayed bundle inserts its rows
// again (on BigQuery, even some rows of a failed bundle may have landed).
// That is harmless because readers use the telemetry_dedup view, which keeps
// one row per (device_id, seq, metric), the first ingested.
func Write(s beam.Scope, cfg Config, events beam.PCollection) beam.PCollection {
	s = s.Scope("warehousesink.Write")
	return beam.ParDo(s, &telemetryFn{URL: cfg.URL, Dataset: cfg.Dataset, BigQueryEmulator: cfg.BigQueryEmulator}, events)
}

// WriteDeadLetters stores every record of deadLetters (a PCollection of
// schemas.DeadLetter) in the deadletter table and returns their receipts
// (DeadLetter.AckID where non-empty) once the rows are durable, as Write
// does. A replayed record is stored again, with the same message_id.
func WriteDeadLetters(s beam.Scope, cfg Config, deadLetters beam.PCollection) beam.PCollection {
	s = s.Scope("warehousesink.WriteDeadLetters")
	return beam.ParDo(s, &deadLetterFn{URL: cfg.URL, Dataset: cfg.Dataset, BigQueryEmulator: cfg.BigQueryEmulator}, deadLetters)
}

// The sinks build rows as values in these column orders; every backend
// checks at Setup that they are the table's columns, in the schema's order.
var (
	telemetryColumns = []string{
		"device_id", "seq", "ts", "metric", "value", "registry", "location", "subfolder",
		"message_id", "publish_time", "ingest_time", "buffered", "device_class", "schema_id",
	}
	deadLetterColumns = []string{
		"timestamp", "payloadString", "payloadBytes", "attributes", "errorMessage",
		"stacktrace", "stage", "schema_id", "message_id", "publish_time",
	}
)

// A row is one value per column, in the column order its writer was opened
// with. Values are nil (NULL), string, int64, float64, bool, time.Time
// (TIMESTAMP, UTC), []byte, or []record for a REPEATED RECORD column; each
// backend turns them into its own form.
type record map[string]any

type telemetryFn struct {
	URL              string
	Dataset          string
	BigQueryEmulator string

	b bundle
}

func (fn *telemetryFn) Setup(ctx context.Context) error {
	cfg := Config{URL: fn.URL, Dataset: fn.Dataset, BigQueryEmulator: fn.BigQueryEmulator}
	return fn.b.setup(ctx, cfg, schemas.TelemetryTable, telemetryColumns)
}

func (fn *telemetryFn) Teardown() error { return fn.b.teardown() }

func (fn *telemetryFn) StartBundle(_ context.Context, _ func(string)) { fn.b.reset() }

func (fn *telemetryFn) ProcessElement(ctx context.Context, e schemas.Event, _ func(string)) error {
	ingest := time.Now().UTC()
	for _, m := range e.Metrics {
		err := fn.b.add(ctx, []any{
			e.DeviceID, e.Seq, millis(e.TS), m.Name, m.Value,
			optString(e.Registry), optString(e.Location), optString(e.SubFolder),
			optString(e.MessageID), optMillis(e.PublishMillis), ingest, e.Buffered,
			optString(e.DeviceClass), optString(e.SchemaID),
		})
		if err != nil {
			return err
		}
	}
	fn.b.ack(e.AckID)
	return nil
}

func (fn *telemetryFn) FinishBundle(ctx context.Context, written func(string)) error {
	return fn.b.commit(ctx, written)
}

type deadLetterFn struct {
	URL              string
	Dataset          string
	BigQueryEmulator string

	b bundle
}

func (fn *deadLetterFn) Setup(ctx context.Context) error {
	cfg := Config{URL: fn.URL, Dataset: fn.Dataset, BigQueryEmulator: fn.BigQueryEmulator}
	return fn.b.setup(ctx, cfg, schemas.DeadLetterTable, deadLetterColumns)
}

func (fn *deadLetterFn) Teardown() error { return fn.b.teardown() }

func (fn *deadLetterFn) StartBundle(_ context.Context, _ func(string)) { fn.b.reset() }

func (fn *deadLetterFn) ProcessElement(ctx context.Context, d schemas.DeadLetter, _ func(string)) error {
	// Keys are sorted so a replay stores the same list.
	keys := make([]string, 0, len(d.Attributes))
	for k := range d.Attributes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	attrs := make([]record, len(keys))
	for i, k := range keys {
		attrs[i] = record{"key": k, "value": d.Attributes[k]}
	}
	err := fn.b.add(ctx, []any{
		millis(d.TimestampMillis), optString(d.PayloadString), optBytes(d.PayloadBytes), attrs,
		optString(d.ErrorMessage), optString(d.Stacktrace), d.Stage,
		optString(d.SchemaID), optString(d.MessageID), optMillis(d.PublishMillis),
	})
	if err != nil {
		return err
	}
	fn.b.ack(d.AckID)
	return nil
}

func (fn *deadLetterFn) FinishBundle(ctx context.Context, written func(string)) error {
	return fn.b.commit(ctx, written)
}

// tableWriter is one backend's writer for one table. Rows added after the
// last commit or abort belong to the current bundle.
type tableWriter interface {
	// add takes one row; it may send rows early, and fails if that fails.
	add(ctx context.Context, row []any) error
	// commit returns once every row of the bundle is durable, or with why not.
	commit(ctx context.Context) error
	// abort drops the bundle: it failed, and its error is already reported.
	abort()
	close() error
}

// openTable opens the writer for table in the warehouse t names.
func openTable(ctx context.Context, t target, table string, columns []string) (tableWriter, error) {
	if t.bigQuery {
		return openBigQueryTable(ctx, t, table, columns)
	}
	return openDuckDBTable(ctx, t, table, columns)
}

// bundle is what the DoFns share whatever the backend: the rows of one
// bundle go to the table writer, and the receipts wait for its commit.
type bundle struct {
	w       tableWriter
	rows    int64 // rows added in this bundle
	acks    []string
	written beam.Counter
	failed  beam.Counter
}

func (b *bundle) setup(ctx context.Context, cfg Config, table string, columns []string) error {
	t, err := cfg.target()
	if err != nil {
		return err
	}
	w, err := openTable(ctx, t, table, columns)
	if err != nil {
		return err
	}
	b.w = w
	b.written = beam.NewCounter("iotpipe.warehouse", table+"_rows_written")
	b.failed = beam.NewCounter("iotpipe.warehouse", table+"_write_failures")
	return nil
}

func (b *bundle) teardown() error {
	if b.w == nil {
		return nil
	}
	b.w.abort()
	err := b.w.close()
	b.w = nil
	return err
}

// reset starts a bundle; whatever a failed bundle left is dropped.
func (b *bundle) reset() {
	if b.w != nil {
		b.w.abort()
	}
	b.acks, b.rows = b.acks[:0], 0
}

func (b *bundle) add(ctx context.Context, row []any) error {
	b.rows++
	if err := b.w.add(ctx, row); err != nil {
		b.fail(ctx)
		return err
	}
	return nil
}

func (b *bundle) ack(id string) {
	if id != "" {
		b.acks = append(b.acks, id)
	}
}

func (b *bundle) fail(ctx context.Context) {
	b.failed.Inc(ctx, b.rows)
	b.rows = 0
	b.acks = b.acks[:0]
	b.w.abort()
}

// commit makes the bundle durable, and only then hands on the receipts.
func (b *bundle) commit(ctx context.Context, written func(string)) error {
	if err := b.w.commit(ctx); err != nil {
		b.fail(ctx)
		return err
	}
	b.written.Inc(ctx, b.rows)
	for _, a := range b.acks {
		written(a)
	}
	b.acks, b.rows = b.acks[:0], 0
	return nil
}

func millis(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

// optMillis is NULL for 0, the zero value of an unknown time.
func optMillis(ms int64) any {
	if ms == 0 {
		return nil
	}
	return millis(ms)
}

// optString is NULL for "", which the event model uses for "not known".
func optString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func optBytes(b []byte) any {
	if b == nil {
		return nil
	}
	return b
}
