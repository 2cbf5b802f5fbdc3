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
			var names []string
			for _, tb := range tables {
				names = append(names, tb.Name)
			}
			want := []string{DeadLetterTable, ReferenceTable, ReferenceThresholdsTable, TelemetryTable}
			if strings.Join(names, ",") != strings.Join(want, ",") {
				t.Fatalf("tables = %v; want %v", names, want)
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
	tables, err := WarehouseTables()
	if err != nil {
		t.Fatal(err)
	}
	var check func(table string, fields []map[string]any)
	check = func(table string, fields []map[string]any) {
		for _, f := range fields {
			for _, key := range []string{"name", "type", "mode", "description"} {
				if s, _ := f[key].(string); s == "" {
					t.Errorf("%s field %v has no %q", table, f["name"], key)
				}
			}
			if sub, ok := f["fields"].([]any); ok {
				var subs []map[string]any
				for _, x := range sub {
					m, _ := x.(map[string]any)
					subs = append(subs, m)
				}
				check(table, subs)
			}
		}
	}
	for _, tb := range tables {
		b, err := WarehouseSchemaJSON(tb.Name)
		if err != nil {
			t.Fatal(err)
		}
		var fields []map[string]any
		if err := json.Unmarshal(b, &fields); err != nil {
			t.Fatalf("%s: %v", tb.Name, err)
		}
		check(tb.Name, fields)
		if tb.Description == "" {
			t.Errorf("table %s has no description in tables.json", tb.Name)
		}
	}
	for _, name := range []string{"nope", "tables"} {
		if _, err := WarehouseSchemaJSON(name); err == nil {
			t.Errorf("WarehouseSchemaJSON(%q) succeeded; want an error", name)
		}
	}
}

// TestWarehouseTableOptions pins the table options Terraform reads from
// tables.json: time-series tables are partitioned by day on their event
// time and clustered by device first.
func TestWarehouseTableOptions(t *testing.T) {
	tables, err := WarehouseTables()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, tb := range tables {
		part := "-"
		if p := tb.Partitioning; p != nil {
			part = p.Type + "(" + p.Field + ")"
		}
		got[tb.Name] = part + " " + strings.Join(tb.Clustering, ",")
	}
	want := map[string]string{
		TelemetryTable:           "DAY(ts) device_id,metric",
		DeadLetterTable:          "DAY(timestamp) stage",
		ReferenceTable:           "- device_id",
		ReferenceThresholdsTable: "- device_id,metric",
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s options = %q; want %q", name, got[name], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("tables = %v; want %v", got, want)
	}
}

func TestWarehouseManifestRefusals(t *testing.T) {
	fields := []byte(`[
		{"name": "device_id", "type": "STRING", "mode": "REQUIRED"},
		{"name": "ts", "type": "TIMESTAMP", "mode": "REQUIRED"},
		{"name": "day", "type": "DATE"},
		{"name": "tags", "type": "STRING", "mode": "REPEATED"},
		{"name": "attrs", "type": "RECORD", "fields": [{"name": "k", "type": "STRING"}]},
		{"name": "a", "type": "STRING"}, {"name": "b", "type": "STRING"}, {"name": "c", "type": "STRING"}
	]`)
	tests := []struct {
		name, manifest, want string // want: substring of the error; "" for none
	}{
		{"good", `{"t": {"time_partitioning": {"type": "DAY", "field": "ts"}, "clustering": ["device_id"]}}`, ""},
		{"date partition", `{"t": {"time_partitioning": {"type": "MONTH", "field": "day"}}}`, ""},
		{"unknown key", `{"t": {"partitioning": {"type": "DAY", "field": "ts"}}}`, "unknown field"},
		{"empty", `{}`, "lists no tables"},
		{"null options", `{"t": null}`, "no options object"},
		{"bad name", `{"t-1": {}}`, `table name "t-1"`},
		{"manifest name", `{"tables": {}}`, `table name "tables"`},
		{"bad type", `{"t": {"time_partitioning": {"type": "WEEK", "field": "ts"}}}`, `type "WEEK"`},
		{"missing field", `{"t": {"time_partitioning": {"type": "DAY", "field": "nope"}}}`, `field "nope" is not a column`},
		{"string partition", `{"t": {"time_partitioning": {"type": "DAY", "field": "device_id"}}}`, "want a TIMESTAMP or DATE"},
		{"missing cluster", `{"t": {"clustering": ["nope"]}}`, `clustering column "nope" is not a column`},
		{"repeated cluster", `{"t": {"clustering": ["tags"]}}`, `clustering column "tags"`},
		{"record cluster", `{"t": {"clustering": ["attrs"]}}`, `clustering column "attrs"`},
		{"twice", `{"t": {"clustering": ["a", "a"]}}`, "appears twice"},
		{"five", `{"t": {"clustering": ["a", "b", "c", "device_id", "ts"]}}`, "BigQuery allows 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts, err := parseWarehouseManifest([]byte(tt.manifest))
			if err == nil {
				for name, o := range opts {
					_, err = parseWarehouseTable(name, fields, o)
				}
			}
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("error %v; want none", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("error %v; want one containing %q", err, tt.want)
			}
		})
	}
}

func TestOrderViews(t *testing.T) {
	v := func(name, reads string) WarehouseView {
		return WarehouseView{Name: name, SQL: "CREATE OR REPLACE VIEW {{dataset}}." + name + " AS SELECT * FROM {{dataset}}." + reads}
	}
	tests := []struct {
		name  string
		views []WarehouseView
		want  string // names in order, or a substring of the error
	}{
		{"independent keep name order", []WarehouseView{v("a", "t"), v("b", "t")}, "a b"},
		{"reader after read", []WarehouseView{v("dashboard", "telemetry_dedup"), v("telemetry_dedup", "telemetry")}, "telemetry_dedup dashboard"},
		{"chain", []WarehouseView{v("a", "b"), v("b", "c"), v("c", "t")}, "c b a"},
		{"cycle", []WarehouseView{v("a", "b"), v("b", "a")}, "cycle: a -> b -> a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := orderViews(tt.views)
			if err != nil {
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("error %v; want %q", err, tt.want)
				}
				return
			}
			var names []string
			for _, x := range got {
				names = append(names, x.Name)
			}
			if strings.Join(names, " ") != tt.want {
				t.Errorf("order = %v; want %s", names, tt.want)
			}
		})
	}
}

// TestDashboardView joins readings, written twice as a replay does, with
// reference data loaded twice (the second load appended by mistake, with a
// changed site and limit): every reading shows once, with the newest
// reference row, and a device missing from the reference data is kept.
func TestDashboardView(t *testing.T) {
	db := openTestWarehouse(t, "iotpipe")
	ts := time.UnixMilli(1700000000000).UTC()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, ingest := range []time.Time{ts.Add(time.Second), ts.Add(time.Minute)} {
		for _, r := range []struct {
			device, metric, class string
			seq                   int64
			value                 float64
		}{
			{"d1", "temperature", "", 1, 35},
			{"d1", "humidity", "", 1, 50},
			{"d1", "temperature", "thermostat", 2, 20},
			{"d2", "temperature", "", 1, -20},
			{"ghost", "t", "", 1, 1},
		} {
			class := sql.NullString{String: r.class, Valid: r.class != ""}
			exec(`INSERT INTO iotpipe.telemetry (device_id, seq, ts, metric, value, location, ingest_time, buffered, device_class)
				VALUES (?, ?, ?, ?, ?, 'europe-west1', ?, false, ?)`, r.device, r.seq, ts, r.metric, r.value, ingest, class)
		}
	}
	load1, load2 := ts.Add(-time.Hour), ts.Add(-time.Minute)
	exec(`INSERT INTO iotpipe.reference VALUES
		('d1', 'plant-a', 'hall-1', 'generic', 'ops', ?),
		('d2', 'plant-b', 'roof', NULL, 'facilities', ?),
		('d1', 'plant-z', 'hall-9', 'generic', 'ops', ?)`, load1, load1, load2)
	exec(`INSERT INTO iotpipe.reference_thresholds VALUES
		('d1', 'temperature', NULL, 40, ?),
		('d1', 'temperature', NULL, 30, ?),
		('d2', 'temperature', -10, 40, ?)`, load1, load2, load1)

	const row = `device_id || '/' || seq || '/' || metric || '=' || value || ' class=' || coalesce(device_class, '-') ||
		' known=' || known_device || ' site=' || coalesce(site, '-') || ' at=' || coalesce(site_location, '-') ||
		' region=' || coalesce(registry_location, '-') || ' owner=' || coalesce(owner, '-') ||
		' min=' || coalesce(CAST(threshold_min AS VARCHAR), '-') || ' max=' || coalesce(CAST(threshold_max AS VARCHAR), '-') ||
		' out=' || out_of_range`
	rows, err := db.Query("SELECT " + row + " FROM iotpipe.dashboard ORDER BY device_id, seq, metric")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		got = append(got, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"d1/1/humidity=50.0 class=generic known=true site=plant-z at=hall-9 region=europe-west1 owner=ops min=- max=- out=false",
		"d1/1/temperature=35.0 class=generic known=true site=plant-z at=hall-9 region=europe-west1 owner=ops min=- max=30.0 out=true",
		"d1/2/temperature=20.0 class=thermostat known=true site=plant-z at=hall-9 region=europe-west1 owner=ops min=- max=30.0 out=false",
		"d2/1/temperature=-20.0 class=- known=true site=plant-b at=roof region=europe-west1 owner=facilities min=-10.0 max=40.0 out=true",
		"ghost/1/t=1.0 class=- known=false site=- at=- region=europe-west1 owner=- min=- max=- out=false",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("dashboard =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
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
