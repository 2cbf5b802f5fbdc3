package sinktest_test

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"

	"cloud.google.com/go/bigtable"
	"cloud.google.com/go/bigtable/bttest"

	"github.com/iotpipe/iotpipe/pipelines/internal/sinktest"
	"github.com/iotpipe/iotpipe/schemas"
)

// recorder records what a check reports instead of failing the test.
type recorder struct {
	testing.TB
	got []string
}

func (e *recorder) Errorf(format string, args ...any) {
	e.got = append(e.got, fmt.Sprintf(format, args...))
}

// On empty sinks (a Bigtable fake with the telemetry table, a warehouse
// created as the job creates it) the check reads both and finds nothing: it
// passes for 0 readings and reports each sink for 1.
func TestWantEachOnce(t *testing.T) {
	const project, instance = "p", "i"
	bt, err := bttest.NewServer("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer bt.Close()
	t.Setenv("BIGTABLE_EMULATOR_HOST", bt.Addr)
	admin, err := bigtable.NewAdminClient(t.Context(), project, instance)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateTable(t.Context(), schemas.TelemetryTable); err != nil {
		t.Fatal(err)
	}

	warehouse := filepath.Join(t.TempDir(), "wh.duckdb")
	ddl, err := schemas.WarehouseDuckDBDDL("main")
	if err != nil {
		t.Fatal(err)
	}
	views, err := schemas.WarehouseViewSQL("main")
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("duckdb", warehouse)
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range append(ddl, views...) {
		if _, err := db.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	db.Close()

	sinktest.WantEachOnce(t, project, instance, warehouse, 0)
	rec := &recorder{TB: t}
	sinktest.WantEachOnce(rec, project, instance, warehouse, 1)
	if len(rec.got) != 2 {
		t.Errorf("want 1 on empty sinks reported %q, want one error for Bigtable and one for the warehouse", rec.got)
	}
}
