package warehousesink

import (
	"bytes"
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/enrich"
)

// TestLoadReference loads the sandbox's reference CSV (through the reader
// the pipeline's join uses), writes readings, then loads a changed version:
// the dashboard view shows each reading once, joined with the newest load
// only, and a device dropped from the data is no longer known.
func TestLoadReference(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "warehouse.duckdb")
	cfg := Config{URL: "duckdb://" + path, Dataset: "iotpipe"}
	refs, err := enrich.LoadReference(ctx, filepath.Join("..", "..", "testing", "stack", "reference.csv"))
	if err != nil {
		t.Fatal(err)
	}
	first := time.UnixMilli(1700000000000)
	if err := LoadReference(ctx, cfg, refs, first); err != nil {
		t.Fatalf("LoadReference: %v", err)
	}
	// Twice, as a replay writes: the view must still show each reading once.
	runPipeline(t, cfg)
	runPipeline(t, cfg)

	db, err := sql.Open("duckdb", path)
	if err != nil {
		t.Fatal(err)
	}
	const q = `SELECT device_id || '/' || seq || '/' || metric || ' known=' || known_device ||
		' site=' || coalesce(site, '-') || ' at=' || coalesce(site_location, '-') ||
		' max=' || coalesce(CAST(threshold_max AS VARCHAR), '-') FROM iotpipe.dashboard`
	got := queryStrings(t, db, q)
	want := []string{
		"dev-1/1/humidity known=true site=plant-a at=hall-2 max=80.0",
		"dev-1/1/temp known=true site=plant-a at=hall-2 max=-",
		"dev-1/2/temp known=true site=plant-a at=hall-2 max=-",
		"dev-2/1/power known=false site=- at=- max=-",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("dashboard after the first load =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	db.Close() // the loader opens the file itself

	second := []schemas.Reference{
		{DeviceID: "dev-2", Site: "plant-b", Thresholds: map[string]schemas.Threshold{"power": {HasMax: true, Max: 3}}},
	}
	if err := LoadReference(ctx, cfg, second, first.Add(time.Hour)); err != nil {
		t.Fatalf("second LoadReference: %v", err)
	}
	db, err = sql.Open("duckdb", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	got = queryStrings(t, db, q)
	want = []string{
		"dev-1/1/humidity known=false site=- at=- max=-",
		"dev-1/1/temp known=false site=- at=- max=-",
		"dev-1/2/temp known=false site=- at=- max=-",
		"dev-2/1/power known=true site=plant-b at=- max=3.0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("dashboard after the second load =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := queryStrings(t, db, `SELECT CAST(count(*) AS VARCHAR) FROM iotpipe.reference`); n[0] != "1" {
		t.Errorf("reference rows after replacing = %s; want 1", n[0])
	}
}

func TestLoadReferenceRefusals(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{URL: "bigquery://test-project/iotpipe"}, "load job"},
		{Config{URL: "duckdb://relative"}, "three slashes"},
	} {
		if err := LoadReference(ctx, tt.cfg, nil, time.Now()); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LoadReference(%s) = %v; want an error containing %q", tt.cfg.URL, err, tt.want)
		}
	}
}

func TestWriteReferenceLoadFiles(t *testing.T) {
	refs := []schemas.Reference{
		{DeviceID: "d1", Site: "plant-a", Location: "hall-1", DeviceClass: "thermostat", Owner: "ops",
			Thresholds: map[string]schemas.Threshold{
				"temperature": {HasMin: true, Min: -10, HasMax: true, Max: 40},
				"humidity":    {HasMax: true, Max: 80},
			}},
		{DeviceID: "d2"},
	}
	var devices, thresholds bytes.Buffer
	if err := WriteReferenceLoadFiles(&devices, &thresholds, refs, time.UnixMilli(1700000000123)); err != nil {
		t.Fatal(err)
	}
	wantDevices := `{"device_class":"thermostat","device_id":"d1","load_time":"2023-11-14T22:13:20.123000Z","location":"hall-1","owner":"ops","site":"plant-a"}
{"device_id":"d2","load_time":"2023-11-14T22:13:20.123000Z"}
`
	wantThresholds := `{"device_id":"d1","load_time":"2023-11-14T22:13:20.123000Z","max_value":80,"metric":"humidity"}
{"device_id":"d1","load_time":"2023-11-14T22:13:20.123000Z","max_value":40,"metric":"temperature","min_value":-10}
`
	if devices.String() != wantDevices {
		t.Errorf("reference rows =\n%s\nwant\n%s", devices.String(), wantDevices)
	}
	if thresholds.String() != wantThresholds {
		t.Errorf("reference_thresholds rows =\n%s\nwant\n%s", thresholds.String(), wantThresholds)
	}
}
