package pipelines_test

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/duckdb/duckdb-go/v2"

	"github.com/iotpipe/iotpipe/pipelines"
)

// With a warehouse, a reading is acked only once both Bigtable and the
// warehouse hold it; the warehouse's dedup view has it once.
func TestStreamingWritesTheWarehouse(t *testing.T) {
	emu := startEmulators(t)
	path := filepath.Join(t.TempDir(), "wh.duckdb")
	reference := filepath.Join(t.TempDir(), "reference.csv")
	if err := os.WriteFile(reference, []byte("device_id,site,location,device_class,owner,thresholds\nd1,plant-a,hall-1,generic,ops,temperature:0:30\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	j := runJob(t, streamingJob(t, pipelines.GraphConfig{BigtableProject: project, BigtableInstance: instance,
		Warehouse: "duckdb://" + path, Reference: reference}))
	a := publish(t, emu, "d1", `{"ts":1700000000000,"seq":1,"metrics":{"temperature":21.5,"humidity":40}}`)
	b := publish(t, emu, "d1", `{"ts":1700000000000,"seq":1,"metrics":{"temperature":21.5,"humidity":40}}`)
	c := publish(t, emu, "d1", `not json`)
	for _, id := range []string{a, b, c} {
		waitAcked(t, emu, id, 30*time.Second)
	}
	if err := j.stop(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("duckdb", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rows, dead int
	if err := db.QueryRow(`SELECT count(*) FROM main.telemetry_dedup WHERE device_id = 'd1'`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT count(*) FROM main.deadletter`).Scan(&dead); err != nil {
		t.Fatal(err)
	}
	if rows != 2 || dead != 1 {
		t.Errorf("warehouse has %d dedup telemetry rows and %d dead letters, want 2 (one per metric) and 1", rows, dead)
	}
	// The job loaded the reference data, so the dashboard view has the
	// device's site and the temperature limits.
	var dash []string
	r, err := db.Query(`SELECT metric, site, known_device, coalesce(CAST(threshold_max AS VARCHAR), '-') FROM main.dashboard ORDER BY metric`)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for r.Next() {
		var metric, site, max string
		var known bool
		if err := r.Scan(&metric, &site, &known, &max); err != nil {
			t.Fatal(err)
		}
		dash = append(dash, fmt.Sprintf("%s %s %v %s", metric, site, known, max))
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if want := "[humidity plant-a true - temperature plant-a true 30.0]"; fmt.Sprint(dash) != want {
		t.Errorf("dashboard = %v, want %s", dash, want)
	}
}
