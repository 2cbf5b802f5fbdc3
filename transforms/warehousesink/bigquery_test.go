package warehousesink

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/emulators"
)

const (
	bqProject = "test-project"
	bqDataset = "iotpipe"
)

// startBigQuery runs the Storage Write API fake with the warehouse tables
// created from the schemas package, as Terraform creates them.
func startBigQuery(t *testing.T) *emulators.BigQueryWriteServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := emulators.NewBigQueryWriteServer(l)
	t.Cleanup(srv.Close)
	tables, err := schemas.WarehouseTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if err := srv.CreateTable(bqProject, bqDataset, tb); err != nil {
			t.Fatal(err)
		}
	}
	return srv
}

func bigQueryConfig(srv *emulators.BigQueryWriteServer) Config {
	return Config{URL: "bigquery://" + bqProject + "/" + bqDataset, BigQueryEmulator: srv.Addr}
}

// TestBigQueryMatchesDuckDB runs the same input through both backends with
// the real managedwriter client on the BigQuery side, and expects the same
// rows in the same tables and columns, and every receipt back.
func TestBigQueryMatchesDuckDB(t *testing.T) {
	srv := startBigQuery(t)
	cfg := bigQueryConfig(srv)
	p, s := beam.NewPipelineWithRoot()
	passert.Equals(s, Write(s, cfg, beam.CreateList(s, testEvents())), "ack-m1", "ack-m2")
	passert.Equals(s, WriteDeadLetters(s, cfg, beam.CreateList(s, testDeadLetters())), "ack-d1", "ack-d2")
	if err := ptest.Run(p); err != nil {
		t.Fatalf("pipeline: %v", err)
	}

	path := filepath.Join(t.TempDir(), "warehouse.duckdb")
	runPipeline(t, Config{URL: "duckdb://" + path, Dataset: bqDataset})
	db, err := sql.Open("duckdb", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	for _, tc := range []struct {
		table   string
		columns []string
	}{{schemas.TelemetryTable, telemetryColumns}, {schemas.DeadLetterTable, deadLetterColumns}} {
		t.Run(tc.table, func(t *testing.T) {
			rows, err := srv.Rows(emulators.BigQueryTableName(bqProject, bqDataset, tc.table))
			if err != nil {
				t.Fatal(err)
			}
			var bq []string
			for _, r := range rows {
				vals := make([]any, len(tc.columns))
				for i, c := range tc.columns {
					vals[i] = r.Values[c]
				}
				bq = append(bq, canonicalRow(tc.columns, vals))
			}
			sort.Strings(bq)
			duck := duckDBRows(t, db, bqDataset+"."+tc.table, tc.columns)
			if len(bq) == 0 || strings.Join(bq, "\n") != strings.Join(duck, "\n") {
				t.Errorf("BigQuery rows:\n%s\nDuckDB rows:\n%s", strings.Join(bq, "\n"), strings.Join(duck, "\n"))
			}
		})
	}
	tel, _ := srv.Rows(emulators.BigQueryTableName(bqProject, bqDataset, schemas.TelemetryTable))
	for _, r := range tel {
		if r.Partition != "20231114" {
			t.Errorf("telemetry row %v is in partition %q; want 20231114 (the day of ts)", r.Values, r.Partition)
		}
	}
}

func duckDBRows(t *testing.T, db *sql.DB, table string, columns []string) []string {
	t.Helper()
	quoted := make([]string, len(columns))
	for i, c := range columns {
		quoted[i] = `"` + c + `"`
	}
	rows, err := db.Query("SELECT " + strings.Join(quoted, ", ") + " FROM " + table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals := make([]any, len(columns))
		ptrs := make([]any, len(columns))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		out = append(out, canonicalRow(columns, vals))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// canonicalRow spells a row the same whichever backend it was read from.
// ingest_time is when the sink wrote the row, so only its presence counts.
func canonicalRow(columns []string, vals []any) string {
	parts := make([]string, len(columns))
	for i, c := range columns {
		v := canonicalValue(vals[i])
		if c == "ingest_time" && v != "NULL" {
			v = "set"
		}
		parts[i] = c + "=" + v
	}
	return strings.Join(parts, " ")
}

func canonicalValue(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case string:
		return strconv.Quote(x)
	case []byte:
		return "0x" + hex.EncodeToString(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339Nano)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case int32:
		return strconv.FormatInt(int64(x), 10)
	case int64:
		return strconv.FormatInt(x, 10)
	case bool:
		return strconv.FormatBool(x)
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = canonicalValue(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + ": " + canonicalValue(x[k])
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return fmt.Sprintf("%T(%v)", v, v)
}

// runBundle drives fn through one bundle of events, as the runner does, and
// returns the receipts it emitted and FinishBundle's error.
func runBundle(ctx context.Context, t *testing.T, fn *telemetryFn, events []schemas.Event) ([]string, error) {
	t.Helper()
	var got []string
	emit := func(s string) { got = append(got, s) }
	fn.StartBundle(ctx, emit)
	for _, e := range events {
		if err := fn.ProcessElement(ctx, e, emit); err != nil {
			return got, err
		}
	}
	return got, fn.FinishBundle(ctx, emit)
}

// TestBigQueryNoReceiptWithoutAppend fails appends on the fake and expects
// the bundle to fail with no receipt and no row; a transient failure is
// retried by the client and the receipts come. The next bundle, the
// messages' redelivery, succeeds on the same sink instance.
func TestBigQueryNoReceiptWithoutAppend(t *testing.T) {
	srv := startBigQuery(t)
	table := emulators.BigQueryTableName(bqProject, bqDataset, schemas.TelemetryTable)
	ctx := context.Background()
	cfg := bigQueryConfig(srv)
	fn := &telemetryFn{URL: cfg.URL, BigQueryEmulator: cfg.BigQueryEmulator}
	if err := fn.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	defer fn.Teardown()
	tests := []struct {
		name     string
		arm      int
		code     codes.Code
		wantErr  string // substring; "" for success
		wantRows int    // rows the bundle adds
	}{
		{"lasting unavailability", -1, codes.Unavailable, "Unavailable", 0},
		{"refused", 1, codes.InvalidArgument, "InvalidArgument", 0},
		{"transient, retried by the client", 1, codes.Unavailable, "", 4},
		{"redelivery after recovery", 0, codes.OK, "", 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := srv.Rows(table)
			srv.FailAppends(tt.arm, tt.code)
			defer srv.FailAppends(0, codes.OK)
			got, err := runBundle(ctx, t, fn, testEvents())
			after, _ := srv.Rows(table)
			if n := len(after) - len(before); n != tt.wantRows {
				t.Errorf("rows added = %d; want %d", n, tt.wantRows)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), table) {
					t.Errorf("FinishBundle error = %v; want one containing %q and naming %s", err, tt.wantErr, table)
				}
				if len(got) != 0 {
					t.Errorf("receipts %v emitted for a bundle that was not appended", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("bundle: %v", err)
			}
			if want := []string{"ack-m1", "ack-m2"}; !slices.Equal(got, want) {
				t.Errorf("receipts = %v; want %v", got, want)
			}
		})
	}
}

// TestBigQueryWrongTable points the sink at tables that do not fit it: the
// fake refuses the writer schema as BigQuery would, and the sink hands back
// no receipt; a missing table fails Setup, before any message is read.
func TestBigQueryWrongTable(t *testing.T) {
	srv := startBigQuery(t)
	ctx := context.Background()
	tables, err := schemas.WarehouseTables()
	if err != nil {
		t.Fatal(err)
	}
	var telemetry schemas.WarehouseTable
	for _, tb := range tables {
		if tb.Name == schemas.TelemetryTable {
			telemetry = tb
		}
	}
	retype := func(col, typ string) schemas.WarehouseTable {
		tb := telemetry
		tb.Fields = slices.Clone(tb.Fields)
		for i := range tb.Fields {
			if tb.Fields[i].Name == col {
				tb.Fields[i].Type = typ
			}
		}
		return tb
	}
	drop := func(col string) schemas.WarehouseTable {
		tb := telemetry
		tb.Fields = slices.DeleteFunc(slices.Clone(tb.Fields), func(f schemas.WarehouseField) bool { return f.Name == col })
		return tb
	}
	tests := []struct {
		name    string
		dataset string
		table   *schemas.WarehouseTable // nil: no table at all
		setup   string                  // substring of Setup's error; "" if Setup succeeds
		bundle  string                  // substring of FinishBundle's error
	}{
		{"column of another type", "retyped", new(retype("seq", "STRING")), "", "column seq of type STRING"},
		{"column the sink writes is missing", "dropped", new(drop("schema_id")), "", "extra fields: 'schema_id'"},
		{"no table", "empty", nil, "not found", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.table != nil {
				if err := srv.CreateTable(bqProject, tt.dataset, *tt.table); err != nil {
					t.Fatal(err)
				}
			}
			fn := &telemetryFn{URL: "bigquery://" + bqProject + "/" + tt.dataset, BigQueryEmulator: srv.Addr}
			err := fn.Setup(ctx)
			if tt.setup != "" {
				if err == nil || !strings.Contains(err.Error(), tt.setup) {
					t.Errorf("Setup error = %v; want one containing %q", err, tt.setup)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer fn.Teardown()
			got, err := runBundle(ctx, t, fn, testEvents())
			if err == nil || !strings.Contains(err.Error(), tt.bundle) || !strings.Contains(err.Error(), "InvalidArgument") {
				t.Errorf("FinishBundle error = %v; want InvalidArgument containing %q", err, tt.bundle)
			}
			if len(got) != 0 {
				t.Errorf("receipts %v emitted for a refused bundle", got)
			}
		})
	}
}

// TestSetField feeds values that do not suit their field: an error, never
// a panic, since the row values come from data.
func TestSetField(t *testing.T) {
	md, _, err := BigQueryDescriptor(schemas.DeadLetterTable)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		column string
		value  any
		want   string // substring of the error; "" for none
	}{
		{"stage", "parse", ""},
		{"stage", nil, ""},
		{"timestamp", time.UnixMilli(1), ""},
		{"payloadBytes", []byte{0xff}, ""},
		{"attributes", []record{{"key": "k", "value": "v"}}, ""},
		{"stage", int64(3), "int64 does not suit a string field"},
		{"timestamp", "2024-01-01", "string does not suit a int64 field"},
		{"attributes", "k=v", "string for a repeated message field"},
		{"attributes", []record{{"nope": "v"}}, `no field "nope"`},
		{"attributes", []record{{"key": 1.5}}, "float64 does not suit a string field"},
		{"stage", struct{}{}, "struct {} does not suit"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s=%v", tt.column, tt.value), func(t *testing.T) {
			m := dynamicpb.NewMessage(md)
			err := setField(m, md.Fields().ByName(protoreflect.Name(tt.column)), tt.value)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("error %v; want none", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v; want one containing %q", err, tt.want)
			}
		})
	}
}

// TestBigQueryDescriptor pins how the JSON schemas become the rows' proto
// messages: one field per column, REQUIRED as required, TIMESTAMP as int64.
func TestBigQueryDescriptor(t *testing.T) {
	tables, err := schemas.WarehouseTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		md, dp, err := BigQueryDescriptor(tb.Name)
		if err != nil {
			t.Fatalf("%s: %v", tb.Name, err)
		}
		if md.Fields().Len() != len(tb.Fields) || len(dp.GetField()) != len(tb.Fields) {
			t.Errorf("%s: %d fields, %d normalized; want %d", tb.Name, md.Fields().Len(), len(dp.GetField()), len(tb.Fields))
		}
		for _, f := range tb.Fields {
			fd := md.Fields().ByName(protoreflect.Name(f.Name))
			if fd == nil {
				t.Errorf("%s: no field %s", tb.Name, f.Name)
				continue
			}
			if (f.Mode == "REQUIRED") != (fd.Cardinality() == protoreflect.Required) {
				t.Errorf("%s.%s: cardinality %v for mode %s", tb.Name, f.Name, fd.Cardinality(), f.Mode)
			}
			if f.Type == "TIMESTAMP" && fd.Kind() != protoreflect.Int64Kind {
				t.Errorf("%s.%s: TIMESTAMP as %v; want int64 microseconds", tb.Name, f.Name, fd.Kind())
			}
		}
	}
	if _, _, err := BigQueryDescriptor("nope"); err == nil {
		t.Error("BigQueryDescriptor(nope) succeeded")
	}
}
