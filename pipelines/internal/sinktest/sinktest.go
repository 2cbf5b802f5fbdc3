// Package sinktest checks, in the pipelines' tests, what a streaming run left
// in its sinks: the Bigtable telemetry table and the DuckDB warehouse.
package sinktest

import (
	"database/sql"
	"testing"

	"cloud.google.com/go/bigtable"
	_ "github.com/duckdb/duckdb-go/v2" // the "duckdb" database/sql driver

	"github.com/iotpipe/iotpipe/schemas"
)

// WantEachOnce fails t unless the telemetry table of the Bigtable instance
// (the emulator the environment names) and the dedup view of the DuckDB
// warehouse file each hold want readings, all distinct: every unique
// reading landed, once.
func WantEachOnce(t testing.TB, project, instance, warehouse string, want int) {
	t.Helper()
	c, err := bigtable.NewClient(t.Context(), project, instance)
	if err != nil {
		t.Fatalf("Bigtable client for %s/%s: %v", project, instance, err)
	}
	defer c.Close()
	rows := 0
	if err := c.Open(schemas.TelemetryTable).ReadRows(t.Context(), bigtable.InfiniteRange(""), func(bigtable.Row) bool {
		rows++
		return true
	}); err != nil {
		t.Fatalf("reading %s: %v", schemas.TelemetryTable, err)
	}
	if rows != want {
		t.Errorf("Bigtable holds %d readings, want %d (every unique one, once)", rows, want)
	}
	db, err := sql.Open("duckdb", warehouse)
	if err != nil {
		t.Fatalf("opening the warehouse %s: %v", warehouse, err)
	}
	defer db.Close()
	var n, distinct int
	if err := db.QueryRow(`SELECT count(*), count(DISTINCT device_id || '#' || seq) FROM main.telemetry_dedup`).Scan(&n, &distinct); err != nil {
		t.Fatalf("counting the warehouse's readings: %v", err)
	}
	if n != want || distinct != want {
		t.Errorf("warehouse dedup view has %d rows (%d distinct readings), want %d each", n, distinct, want)
	}
}
