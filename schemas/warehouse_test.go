package schemas

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" database/sql driver
)

func openTestWarehouse(t *testing.T, dataset string) *sql.DB {
	t.Helper()
	db, err := sql.Open("duckdb", filepath.Join(t.TempDir(), "warehouse.duckdb"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ddl, err := WarehouseDuckDBDDL(dataset)
	if err != nil {
		t.Fatal(err)
	}
	views, err := WarehouseViewSQL(dataset)
	if err != nil {
		t.Fatal(err)
	}
	// Twice: the DDL must be safe to run on every start.
	for range 2 {
		for _, stmt := range append(ddl, views...) {
			if _, err := db.Exec(stmt); err != nil {
				t.Fatalf("%s\n: %v", stmt, err)
			}
		}
	}
	return db
}

// TestWarehouseDuckDBDDL checks that the DDL rendered from the JSON schemas
// creates every table with every column, in order, nullability included.
func TestWarehouseDuckDBDDL(t *testing.T) {
	for _, dataset := range []string{"main", "iotpipe"} {
		t.Run(dataset, func(t *testing.T) {
			db := openTestWarehouse(t, dataset)
			tables, err := WarehouseTables()
			if err != nil {
				t.Fatal(err)
			}
			if len(tables) != 2 || tables[0].Name != DeadLetterTable || tables[1].Name != TelemetryTable {
				t.Fatalf("tables = %+v; want %s and %s", tables, DeadLetterTable, TelemetryTable)
			}
			for _, tb := range tables {
				rows, err := db.Query(`SELECT column_name, is_nullable FROM information_schema.columns
					WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position`, dataset, tb.Name)
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for rows.Next() {
					var name, nullable string
					if err := rows.Scan(&name, &nullable); err != nil {
						t.Fatal(err)
					}
					got = append(got, name+":"+nullable)
				}
				rows.Close()
				var want []string
				for _, f := range tb.Fields {
					nullable := "YES"
					if f.Mode == "REQUIRED" {
						nullable = "NO"
					}
					want = append(want, f.Name+":"+nullable)
				}
				if strings.Join(got, ",") != strings.Join(want, ",") {
					t.Errorf("%s.%s columns = %v; want %v", dataset, tb.Name, got, want)
				}
			}
		})
	}
}

// TestTelemetryDedupView writes the same reading twice, as a replayed bundle
// does, and expects the view to show it once, as first ingested.
func TestTelemetryDedupView(t *testing.T) {
	db := openTestWarehouse(t, "iotpipe")
	ts := time.UnixMilli(1700000000000).UTC()
	first, second := ts.Add(time.Second), ts.Add(time.Minute)
	insert := func(ingest time.Time, msgID string) {
		t.Helper()
		for _, m := range []struct {
			name  string
			value float64
		}{{"humidity", 41.5}, {"temp", 21.25}} {
			_, err := db.Exec(`INSERT INTO iotpipe.telemetry
				(device_id, seq, ts, metric, value, message_id, ingest_time, buffered)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, "dev-1", 7, ts, m.name, m.value, msgID, ingest, false)
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	insert(first, "m1")
	insert(second, "m2")
	// Another reading of the same device must not be folded in.
	if _, err := db.Exec(`INSERT INTO iotpipe.telemetry (device_id, seq, ts, metric, value, ingest_time, buffered)
		VALUES ('dev-1', 8, ?, 'temp', 22, ?, false)`, ts, second); err != nil {
		t.Fatal(err)
	}

	var raw int
	if err := db.QueryRow(`SELECT count(*) FROM iotpipe.telemetry`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if raw != 5 {
		t.Fatalf("raw rows = %d; want 5", raw)
	}
	rows, err := db.QueryContext(context.Background(),
		`SELECT seq, metric, message_id FROM iotpipe.telemetry_dedup ORDER BY seq, metric`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var seq int64
		var metric string
		var msgID sql.NullString
		if err := rows.Scan(&seq, &metric, &msgID); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s/%s@%d", metric, msgID.String, seq))
	}
	want := []string{"humidity/m1@7", "temp/m1@7", "temp/@8"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("dedup view = %v; want %v", got, want)
	}
}

func TestWarehouseSchemaJSONIsBQForm(t *testing.T) {
	for _, table := range []string{TelemetryTable, DeadLetterTable} {
		b, err := WarehouseSchemaJSON(table)
		if err != nil {
			t.Fatal(err)
		}
		var fields []map[string]any
		if err := json.Unmarshal(b, &fields); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		for _, f := range fields {
			for _, key := range []string{"name", "type", "mode", "description"} {
				if s, _ := f[key].(string); s == "" {
					t.Errorf("%s field %v has no %q", table, f["name"], key)
				}
			}
		}
	}
	if _, err := WarehouseSchemaJSON("nope"); err == nil {
		t.Error("WarehouseSchemaJSON(nope) succeeded; want an error")
	}
}

func TestWarehouseRefusals(t *testing.T) {
	for _, dataset := range []string{"", "1abc", "a.b", "x; DROP TABLE telemetry", `"q"`} {
		if _, err := WarehouseDuckDBDDL(dataset); err == nil {
			t.Errorf("WarehouseDuckDBDDL(%q) succeeded; want an error", dataset)
		}
		if _, err := WarehouseViewSQL(dataset); err == nil {
			t.Errorf("WarehouseViewSQL(%q) succeeded; want an error", dataset)
		}
	}
	for _, f := range []WarehouseField{
		{Name: "g", Type: "GEOGRAPHY"},
		{Name: "r", Type: "RECORD"},
		{Name: "m", Type: "STRING", Mode: "OPTIONAL"},
		{Name: "r", Type: "RECORD", Fields: []WarehouseField{{Name: "x", Type: "INTERVAL"}}},
	} {
		if _, err := duckDBType(f); err == nil {
			t.Errorf("duckDBType(%+v) succeeded; want an error", f)
		}
	}
}
