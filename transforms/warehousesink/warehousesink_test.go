package warehousesink

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"github.com/iotpipe/iotpipe/schemas"
)

func TestMain(m *testing.M) { ptest.Main(m) }

func init() {
	register.DoFn3x1[context.Context, string, func(string), error](&committedFn{})
	register.Emitter1[string]()
}

// committedFn looks up, on its own connection, the row a receipt stands
// for (receipts here are "ack-" + message id) and emits "committed:" + the
// receipt if it is visible, "missing:" + the receipt if not. Another
// connection sees only committed rows, so every receipt must be committed.
type committedFn struct {
	Path    string
	Dataset string
	Table   string

	db *sql.DB
}

func (fn *committedFn) Setup(ctx context.Context) error {
	var err error
	fn.db, err = acquire(ctx, fn.Path, fn.Dataset)
	return err
}

func (fn *committedFn) Teardown() error { return release(fn.Path) }

func (fn *committedFn) ProcessElement(ctx context.Context, receipt string, emit func(string)) error {
	var n int
	q := fmt.Sprintf("SELECT count(*) FROM %s.%s WHERE message_id = ?", fn.Dataset, fn.Table)
	if err := fn.db.QueryRowContext(ctx, q, strings.TrimPrefix(receipt, "ack-")).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		emit("missing:" + receipt)
	} else {
		emit("committed:" + receipt)
	}
	return nil
}

func testEvents() []schemas.Event {
	return []schemas.Event{
		{DeviceID: "dev-1", Registry: "reg", Location: "europe-west1", MessageID: "m1", AckID: "ack-m1",
			TS: 1700000000000, Seq: 1, Metrics: schemas.MetricsOf(map[string]float64{"temp": 21.5, "humidity": 40}),
			PublishMillis: 1700000000100, DeviceClass: "thermostat", SchemaID: "iotpipe:telemetry/thermostat/1.1"},
		{DeviceID: "dev-1", MessageID: "m2", AckID: "ack-m2", TS: 1700000001000, Seq: 2,
			Metrics: schemas.MetricsOf(map[string]float64{"temp": 21.75}), Buffered: true},
		// No receipt: the runner acknowledges by itself.
		{DeviceID: "dev-2", MessageID: "m3", TS: 1700000002000, Seq: 1, Metrics: schemas.MetricsOf(map[string]float64{"power": 3.5})},
	}
}

func testDeadLetters() []schemas.DeadLetter {
	return []schemas.DeadLetter{
		schemas.NewDeadLetter("parse", []byte("{not json"), map[string]string{"deviceId": "dev-9", "subFolder": "x"},
			"d1", "ack-d1", 1700000000500, 1700000000600, fmt.Errorf("not a telemetry JSON object")),
		schemas.NewDeadLetter("validate", []byte{0xff, 0x00}, nil, "d2", "ack-d2", 1700000000700, 1700000000800,
			fmt.Errorf("not UTF-8")),
	}
}

func runPipeline(t *testing.T, cfg Config) {
	t.Helper()
	tg, err := cfg.target()
	if err != nil {
		t.Fatal(err)
	}
	path, ds := tg.path, tg.dataset
	p, s := beam.NewPipelineWithRoot()
	events := beam.CreateList(s, testEvents())
	dls := beam.CreateList(s, testDeadLetters())
	acks := Write(s, cfg, events)
	dlAcks := WriteDeadLetters(s, cfg, dls)
	passert.Equals(s, beam.ParDo(s, &committedFn{Path: path, Dataset: ds, Table: schemas.TelemetryTable}, acks),
		"committed:ack-m1", "committed:ack-m2")
	passert.Equals(s, beam.ParDo(s, &committedFn{Path: path, Dataset: ds, Table: schemas.DeadLetterTable}, dlAcks),
		"committed:ack-d1", "committed:ack-d2")
	if err := ptest.Run(p); err != nil {
		t.Fatalf("pipeline: %v", err)
	}
}

func queryStrings(t *testing.T, db *sql.DB, q string) []string {
	t.Helper()
	rows, err := db.Query(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestWritePipeline runs the sinks twice over the same input, as a replay
// would, and reads the file back: the raw table holds both copies, the
// dedup view one row per (device_id, seq, metric).
func TestWritePipeline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "warehouse.duckdb")
	cfg := Config{URL: "duckdb://" + path, Dataset: "iotpipe"}
	runPipeline(t, cfg)
	runPipeline(t, cfg)

	db, err := sql.Open("duckdb", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	const row = `device_id || '/' || seq || '/' || metric || '=' || value || ' ' || strftime(ts, '%Y-%m-%dT%H:%M:%S.%g') ||
		' reg=' || coalesce(registry, '-') || ' pub=' || coalesce(strftime(publish_time, '%H:%M:%S.%g'), '-') ||
		' buf=' || buffered || ' class=' || coalesce(device_class, '-') || ' schema=' || coalesce(schema_id, '-')`
	dedup := queryStrings(t, db, "SELECT "+row+" FROM iotpipe.telemetry_dedup")
	want := []string{
		"dev-1/1/humidity=40.0 2023-11-14T22:13:20.000 reg=reg pub=22:13:20.100 buf=false class=thermostat schema=iotpipe:telemetry/thermostat/1.1",
		"dev-1/1/temp=21.5 2023-11-14T22:13:20.000 reg=reg pub=22:13:20.100 buf=false class=thermostat schema=iotpipe:telemetry/thermostat/1.1",
		"dev-1/2/temp=21.75 2023-11-14T22:13:21.000 reg=- pub=- buf=true class=- schema=-",
		"dev-2/1/power=3.5 2023-11-14T22:13:22.000 reg=- pub=- buf=false class=- schema=-",
	}
	if strings.Join(dedup, "\n") != strings.Join(want, "\n") {
		t.Errorf("telemetry_dedup =\n%s\nwant\n%s", strings.Join(dedup, "\n"), strings.Join(want, "\n"))
	}
	if raw := queryStrings(t, db, "SELECT CAST(count(*) AS VARCHAR) FROM iotpipe.telemetry"); raw[0] != "8" {
		t.Errorf("raw telemetry rows = %s; want 8 (two runs of 4)", raw[0])
	}

	dl := queryStrings(t, db, `SELECT DISTINCT stage || ' ' || message_id || ' ' || strftime("timestamp", '%H:%M:%S.%g') ||
		' str=' || coalesce(payloadString, 'NULL') || ' bytes=' || hex(payloadBytes) ||
		' attrs=' || CAST(attributes AS VARCHAR) || ' err=' || errorMessage FROM iotpipe.deadletter`)
	wantDL := []string{
		"parse d1 22:13:20.600 str={not json bytes=7B6E6F74206A736F6E attrs=[{'key': deviceId, 'value': dev-9}, {'key': subFolder, 'value': x}] err=not a telemetry JSON object",
		"validate d2 22:13:20.800 str=NULL bytes=FF00 attrs=[] err=not UTF-8",
	}
	if strings.Join(dl, "\n") != strings.Join(wantDL, "\n") {
		t.Errorf("deadletter =\n%s\nwant\n%s", strings.Join(dl, "\n"), strings.Join(wantDL, "\n"))
	}
}

// TestNoReceiptWithoutCommit makes the insert fail (the table is dropped
// under the sink) and expects an error and no receipt.
func TestNoReceiptWithoutCommit(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "warehouse.duckdb")
	fn := &telemetryFn{URL: "duckdb://" + path, Dataset: "main"}
	if err := fn.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	defer fn.Teardown()
	if _, err := fn.b.w.(*duckDBTable).db.Exec("DROP VIEW dashboard; DROP VIEW telemetry_dedup; DROP TABLE telemetry"); err != nil {
		t.Fatal(err)
	}
	var got []string
	emit := func(s string) { got = append(got, s) }
	fn.StartBundle(ctx, emit)
	for _, e := range testEvents() {
		if err := fn.ProcessElement(ctx, e, emit); err != nil {
			t.Fatalf("ProcessElement buffers; got %v", err)
		}
	}
	err := fn.FinishBundle(ctx, emit)
	if err == nil || !strings.Contains(err.Error(), "main.telemetry") {
		t.Errorf("FinishBundle error = %v; want one naming main.telemetry", err)
	}
	if len(got) != 0 {
		t.Errorf("receipts %v emitted for a bundle that did not commit", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string // substring of the error; empty for none
	}{
		{Config{URL: "duckdb:///tmp/w.duckdb"}, ""},
		{Config{URL: "duckdb:///tmp/w.duckdb", Dataset: "iotpipe"}, ""},
		{Config{URL: "bigquery://test-project/iotpipe"}, ""},
		{Config{URL: "bigquery://test-project/iotpipe", Dataset: "iotpipe", BigQueryEmulator: "127.0.0.1:9060"}, ""},
		{Config{URL: "bigquery://test-project/iotpipe", Dataset: "other"}, `configured dataset is "other"`},
		{Config{URL: "bigquery://proj/iotpipe"}, "want bigquery://project/dataset"},
		{Config{URL: "bigquery://Test-Project/iotpipe"}, "want bigquery://project/dataset"},
		{Config{URL: "bigquery://example.com:proj/iotpipe"}, "example.com:proj"},
		{Config{URL: "bigquery://test-project"}, "want bigquery://project/dataset"},
		{Config{URL: "bigquery://test-project/"}, "want bigquery://project/dataset"},
		{Config{URL: "bigquery://test-project/a/b"}, "want bigquery://project/dataset"},
		{Config{URL: "bigquery://test-project/a-b"}, `dataset "a-b"`},
		{Config{URL: "bigquery://test-project/iotpipe?location=EU"}, "no user, query or fragment"},
		{Config{URL: "postgres://h/db"}, `scheme "postgres"`},
		{Config{URL: "duckdb://relative.duckdb"}, "three slashes"},
		{Config{URL: ""}, "not supported"},
		{Config{URL: "duckdb:///tmp/w.duckdb", Dataset: "a-b"}, `dataset "a-b"`},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("Validate(%+v) = %v; want nil", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("Validate(%+v) = %v; want an error containing %q", tc.cfg, err, tc.want)
		}
	}
}

// TestColumnsMatchSchema keeps the sink's column lists and the JSON schemas,
// the single source of the layout, in step.
func TestColumnsMatchSchema(t *testing.T) {
	tables, err := schemas.WarehouseTables()
	if err != nil {
		t.Fatal(err)
	}
	sinks := map[string][]string{
		schemas.TelemetryTable: telemetryColumns, schemas.DeadLetterTable: deadLetterColumns,
		schemas.ReferenceTable: referenceColumns, schemas.ReferenceThresholdsTable: thresholdsColumns,
	}
	for _, tb := range tables {
		var names []string
		for _, f := range tb.Fields {
			names = append(names, f.Name)
		}
		if got := strings.Join(sinks[tb.Name], ","); got != strings.Join(names, ",") {
			t.Errorf("sink columns for %s = %s; schema has %s", tb.Name, got, strings.Join(names, ","))
		}
	}
}
