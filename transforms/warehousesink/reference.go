package warehousesink

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/iotpipe/iotpipe/schemas"
)

// Columns of the reference tables, in schema order.
var (
	referenceColumns  = []string{"device_id", "site", "location", "device_class", "owner", "load_time"}
	thresholdsColumns = []string{"device_id", "metric", "min_value", "max_value", "load_time"}
)

// referenceRows lays refs out as rows of the reference and
// reference_thresholds tables, every row stamped loadTime.
func referenceRows(refs []schemas.Reference, loadTime time.Time) (devices, thresholds [][]any) {
	loadTime = loadTime.UTC()
	for _, r := range refs {
		devices = append(devices, []any{r.DeviceID, optString(r.Site), optString(r.Location),
			optString(r.DeviceClass), optString(r.Owner), loadTime})
		metrics := make([]string, 0, len(r.Thresholds))
		for m := range r.Thresholds {
			metrics = append(metrics, m)
		}
		sort.Strings(metrics)
		for _, m := range metrics {
			t := r.Thresholds[m]
			var lo, hi any
			if t.HasMin {
				lo = t.Min
			}
			if t.HasMax {
				hi = t.Max
			}
			thresholds = append(thresholds, []any{r.DeviceID, m, lo, hi, loadTime})
		}
	}
	return devices, thresholds
}

// LoadReference replaces the reference data (Dataset B) in the DuckDB
// warehouse of cfg with refs, every row stamped loadTime, in one
// transaction: readers of the dashboard view see the old data or the new,
// never a mix, and devices dropped from refs disappear. refs come from
// enrich.LoadReference, the reader the pipeline's join uses.
//
// BigQuery tables are loaded by a load job, not by the pipeline: write the
// rows with WriteReferenceLoadFiles and run, per table,
//
//	bq load --replace --source_format=NEWLINE_DELIMITED_JSON \
//	  DATASET.reference reference.ndjson schemas/warehouse/reference.json
//
// (likewise reference_thresholds). --replace makes the load atomic per table.
// LoadsReference reports whether LoadReference can load cfg's warehouse:
// the embedded DuckDB file yes, BigQuery no (a load job does).
func (c Config) LoadsReference() bool {
	t, err := c.target()
	return err == nil && !t.bigQuery
}

func LoadReference(ctx context.Context, cfg Config, refs []schemas.Reference, loadTime time.Time) error {
	t, err := cfg.target()
	if err != nil {
		return err
	}
	if t.bigQuery {
		return fmt.Errorf("warehouse URL %q: reference data goes into BigQuery by a load job (see WriteReferenceLoadFiles), not through the sink", cfg.URL)
	}
	for _, tc := range []struct {
		table   string
		columns []string
	}{{schemas.ReferenceTable, referenceColumns}, {schemas.ReferenceThresholdsTable, thresholdsColumns}} {
		if _, err := columnRecords(tc.table, tc.columns); err != nil {
			return err
		}
	}
	db, err := acquire(ctx, t.path, t.dataset)
	if err != nil {
		return err
	}
	defer release(t.path) // a close error matters less than the load's
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("warehouse: load reference data into %s: begin: %w", t.path, err)
	}
	defer tx.Rollback() // after Commit, a no-op
	devices, thresholds := referenceRows(refs, loadTime)
	for _, tc := range []struct {
		table   string
		columns []string
		rows    [][]any
	}{
		{schemas.ReferenceThresholdsTable, thresholdsColumns, thresholds},
		{schemas.ReferenceTable, referenceColumns, devices},
	} {
		name := t.dataset + "." + tc.table
		if _, err := tx.ExecContext(ctx, "DELETE FROM "+name); err != nil {
			return fmt.Errorf("warehouse: load reference data: empty %s in %s: %w", name, t.path, err)
		}
		if len(tc.rows) == 0 {
			continue
		}
		insert := "INSERT INTO " + name + " (" + strings.Join(tc.columns, ", ") + ") VALUES (" +
			strings.TrimSuffix(strings.Repeat("?, ", len(tc.columns)), ", ") + ")"
		stmt, err := tx.PrepareContext(ctx, insert)
		if err != nil {
			return fmt.Errorf("warehouse: load reference data into %s in %s: %w", name, t.path, err)
		}
		for _, row := range tc.rows {
			if _, err := stmt.ExecContext(ctx, row...); err != nil {
				stmt.Close()
				return fmt.Errorf("warehouse: load reference data: device %v into %s in %s: %w", row[0], name, t.path, err)
			}
		}
		stmt.Close()
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("warehouse: load %d reference rows into %s: commit: %w", len(devices), t.path, err)
	}
	return nil
}

// WriteReferenceLoadFiles writes refs as newline-delimited JSON rows of the
// reference table to devices and of the reference_thresholds table to
// thresholds, every row stamped loadTime: the files a BigQuery load job
// (bq load, or Terraform's google_bigquery_job) reads with the tables' JSON
// schemas. They hold exactly the rows LoadReference puts into DuckDB.
func WriteReferenceLoadFiles(devices, thresholds io.Writer, refs []schemas.Reference, loadTime time.Time) error {
	d, th := referenceRows(refs, loadTime)
	for _, f := range []struct {
		w       io.Writer
		table   string
		columns []string
		rows    [][]any
	}{{devices, schemas.ReferenceTable, referenceColumns, d}, {thresholds, schemas.ReferenceThresholdsTable, thresholdsColumns, th}} {
		enc := json.NewEncoder(f.w)
		for _, row := range f.rows {
			obj := make(map[string]any, len(row))
			for i, v := range row {
				if ts, ok := v.(time.Time); ok {
					// The form bq load reads for TIMESTAMP.
					v = ts.Format("2006-01-02T15:04:05.000000Z")
				}
				if v != nil {
					obj[f.columns[i]] = v
				}
			}
			if err := enc.Encode(obj); err != nil {
				return fmt.Errorf("warehouse: write %s load file row of device %v: %w", f.table, row[0], err)
			}
		}
	}
	return nil
}
