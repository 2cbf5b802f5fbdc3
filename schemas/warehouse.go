package schemas

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// The warehouse layout is BigQuery table schemas in the JSON form bq and
// Terraform read (warehouse/<table>.json), a manifest of the tables with
// the options BigQuery keeps on the table itself (warehouse/tables.json:
// description, day partitioning, clustering), and view SQL in the subset
// both BigQuery and DuckDB accept (warehouse/<view>.sql). DuckDB DDL is
// rendered from the same JSON, so the files are the single source for both
// engines and for Terraform.

//go:embed warehouse
var warehouseFiles embed.FS

// Warehouse tables besides TelemetryTable and DeadLetterTable, which share
// their names with the Bigtable tables.
const (
	// ReferenceTable holds the reference data (Dataset B), one row per device.
	ReferenceTable = "reference"
	// ReferenceThresholdsTable holds the reference data's alerting limits,
	// one row per device and metric.
	ReferenceThresholdsTable = "reference_thresholds"
)

// Warehouse views.
const (
	// TelemetryDedupView is the view of telemetry with one row per
	// (device_id, seq, metric); readers use it, never the raw table.
	TelemetryDedupView = "telemetry_dedup"
	// DashboardView joins TelemetryDedupView with the reference data.
	DashboardView = "dashboard"
)

// warehouseManifest lists the tables and their table options.
const warehouseManifest = "warehouse/tables.json"

// datasetPlaceholder is replaced in view SQL by the dataset (BigQuery) or
// schema (DuckDB) name.
const datasetPlaceholder = "{{dataset}}"

// WarehouseField is one column of a BigQuery table schema.
type WarehouseField struct {
	Name        string           `json:"name"`
	Type        string           `json:"type"`
	Mode        string           `json:"mode,omitempty"`
	Description string           `json:"description,omitempty"`
	Fields      []WarehouseField `json:"fields,omitempty"`
}

// WarehousePartitioning is a table's time partitioning, in the form of
// Terraform's google_bigquery_table time_partitioning block.
type WarehousePartitioning struct {
	// Type is the partition granularity: DAY, HOUR, MONTH or YEAR.
	Type string `json:"type"`
	// Field is the TIMESTAMP or DATE column rows are partitioned by.
	Field string `json:"field"`
}

// WarehouseTable is one table of the warehouse layout.
type WarehouseTable struct {
	Name        string
	Description string
	Fields      []WarehouseField
	// Partitioning is nil for an unpartitioned table.
	Partitioning *WarehousePartitioning
	// Clustering lists the clustering columns, most significant first.
	Clustering []string
}

// warehouseTableOptions is one entry of the manifest. The keys are those of
// google_bigquery_table, so Terraform can use an entry as it is.
type warehouseTableOptions struct {
	Description      string                 `json:"description"`
	TimePartitioning *WarehousePartitioning `json:"time_partitioning"`
	Clustering       []string               `json:"clustering"`
}

// WarehouseView is one view of the warehouse layout; SQL still holds the
// dataset placeholder (see WarehouseViewSQL).
type WarehouseView struct {
	Name string
	SQL  string
}

// WarehouseSchemaJSON returns the embedded BigQuery schema of table as bq and
// Terraform's google_bigquery_table read it.
func WarehouseSchemaJSON(table string) ([]byte, error) {
	opts, err := warehouseOptions()
	if err != nil {
		return nil, err
	}
	if _, ok := opts[table]; !ok {
		return nil, fmt.Errorf("warehouse table %q is not in %s", table, warehouseManifest)
	}
	b, err := warehouseFiles.ReadFile(path.Join("warehouse", table+".json"))
	if err != nil {
		return nil, fmt.Errorf("warehouse table %q has no embedded schema: %w", table, err)
	}
	return b, nil
}

// WarehouseTables parses every table of the manifest, with its schema and
// options, in name order. A schema file missing from the manifest is an
// error, so a table cannot exist for DuckDB and be forgotten by Terraform.
func WarehouseTables() ([]WarehouseTable, error) {
	opts, err := warehouseOptions()
	if err != nil {
		return nil, err
	}
	files, err := fs.Glob(warehouseFiles, "warehouse/*.json")
	if err != nil {
		return nil, fmt.Errorf("list embedded warehouse schemas: %w", err)
	}
	for _, f := range files {
		if name := strings.TrimSuffix(path.Base(f), ".json"); f != warehouseManifest && opts[name] == nil {
			return nil, fmt.Errorf("warehouse schema %s has no entry in %s", f, warehouseManifest)
		}
	}
	names := make([]string, 0, len(opts))
	for name := range opts {
		names = append(names, name)
	}
	sort.Strings(names)
	tables := make([]WarehouseTable, 0, len(names))
	for _, name := range names {
		b, err := WarehouseSchemaJSON(name)
		if err != nil {
			return nil, err
		}
		t, err := parseWarehouseTable(name, b, opts[name])
		if err != nil {
			return nil, err
		}
		tables = append(tables, t)
	}
	return tables, nil
}

// warehouseOptions reads the manifest: table name to its options.
func warehouseOptions() (map[string]*warehouseTableOptions, error) {
	b, err := warehouseFiles.ReadFile(warehouseManifest)
	if err != nil {
		return nil, fmt.Errorf("read embedded %s: %w", warehouseManifest, err)
	}
	return parseWarehouseManifest(b)
}

func parseWarehouseManifest(b []byte) (map[string]*warehouseTableOptions, error) {
	var opts map[string]*warehouseTableOptions
	dec := json.NewDecoder(bytes.NewReader(b))
	// A misspelled key ("partitioning") would silently leave a table
	// unpartitioned in the cloud.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&opts); err != nil {
		return nil, fmt.Errorf("%s: %w", warehouseManifest, err)
	}
	if len(opts) == 0 {
		return nil, fmt.Errorf("%s lists no tables", warehouseManifest)
	}
	for name, o := range opts {
		if !datasetName.MatchString(name) || name == "tables" {
			return nil, fmt.Errorf("%s: table name %q: want letters, digits and underscores, not \"tables\"", warehouseManifest, name)
		}
		if o == nil {
			return nil, fmt.Errorf("%s: table %q has no options object", warehouseManifest, name)
		}
	}
	return opts, nil
}

// parseWarehouseTable parses one schema file and checks its options against
// it the way BigQuery would when creating the table.
func parseWarehouseTable(name string, schemaJSON []byte, o *warehouseTableOptions) (WarehouseTable, error) {
	var fields []WarehouseField
	if err := json.Unmarshal(schemaJSON, &fields); err != nil {
		return WarehouseTable{}, fmt.Errorf("warehouse schema %s.json: %w", name, err)
	}
	if len(fields) == 0 {
		return WarehouseTable{}, fmt.Errorf("warehouse schema %s.json has no fields", name)
	}
	t := WarehouseTable{Name: name, Description: o.Description, Fields: fields,
		Partitioning: o.TimePartitioning, Clustering: o.Clustering}
	column := func(col string) *WarehouseField {
		for i := range fields {
			if fields[i].Name == col {
				return &fields[i]
			}
		}
		return nil
	}
	if p := t.Partitioning; p != nil {
		if !slices.Contains([]string{"DAY", "HOUR", "MONTH", "YEAR"}, p.Type) {
			return WarehouseTable{}, fmt.Errorf("warehouse table %s: partitioning type %q: want DAY, HOUR, MONTH or YEAR", name, p.Type)
		}
		f := column(p.Field)
		if f == nil {
			return WarehouseTable{}, fmt.Errorf("warehouse table %s: partitioning field %q is not a column", name, p.Field)
		}
		if (f.Type != "TIMESTAMP" && f.Type != "DATE") || strings.EqualFold(f.Mode, "REPEATED") {
			return WarehouseTable{}, fmt.Errorf("warehouse table %s: partitioning field %q is %s %s; want a TIMESTAMP or DATE that is not REPEATED", name, p.Field, f.Mode, f.Type)
		}
	}
	if len(t.Clustering) > 4 {
		return WarehouseTable{}, fmt.Errorf("warehouse table %s: %d clustering columns; BigQuery allows 4", name, len(t.Clustering))
	}
	for i, c := range t.Clustering {
		f := column(c)
		if f == nil {
			return WarehouseTable{}, fmt.Errorf("warehouse table %s: clustering column %q is not a column", name, c)
		}
		if slices.Contains(t.Clustering[:i], c) {
			return WarehouseTable{}, fmt.Errorf("warehouse table %s: clustering column %q appears twice", name, c)
		}
		if strings.EqualFold(f.Mode, "REPEATED") || f.Type == "RECORD" || f.Type == "STRUCT" {
			return WarehouseTable{}, fmt.Errorf("warehouse table %s: clustering column %q is %s %s; want a scalar that is not REPEATED", name, c, f.Mode, f.Type)
		}
	}
	return t, nil
}

// WarehouseViews returns every embedded view, each after the views it
// reads, otherwise in name order: both engines check a view's query when it
// is created, so a view must not be created before one it reads.
func WarehouseViews() ([]WarehouseView, error) {
	names, err := fs.Glob(warehouseFiles, "warehouse/*.sql")
	if err != nil {
		return nil, fmt.Errorf("list embedded warehouse views: %w", err)
	}
	sort.Strings(names)
	views := make([]WarehouseView, 0, len(names))
	for _, n := range names {
		b, err := warehouseFiles.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("read embedded warehouse view %s: %w", n, err)
		}
		views = append(views, WarehouseView{Name: strings.TrimSuffix(path.Base(n), ".sql"), SQL: string(b)})
	}
	return orderViews(views)
}

// viewRef finds the dataset-qualified names a view's SQL reads.
var viewRef = regexp.MustCompile(regexp.QuoteMeta(datasetPlaceholder) + `\.([A-Za-z_][A-Za-z0-9_]*)`)

// orderViews sorts views (given in name order) so that each comes after
// the views it reads, keeping name order otherwise.
func orderViews(views []WarehouseView) ([]WarehouseView, error) {
	byName := map[string]int{}
	for i, v := range views {
		byName[v.Name] = i
	}
	const (
		unvisited = iota
		visiting
		done
	)
	state := make([]int, len(views))
	out := make([]WarehouseView, 0, len(views))
	var visit func(i int, chain []string) error
	visit = func(i int, chain []string) error {
		switch state[i] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("warehouse views read each other in a cycle: %s", strings.Join(append(chain, views[i].Name), " -> "))
		}
		state[i] = visiting
		for _, m := range viewRef.FindAllStringSubmatch(views[i].SQL, -1) {
			if j, ok := byName[m[1]]; ok && j != i {
				if err := visit(j, append(chain, views[i].Name)); err != nil {
					return err
				}
			}
		}
		state[i] = done
		out = append(out, views[i])
		return nil
	}
	for i := range views {
		if err := visit(i, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// datasetName is what both engines accept unquoted as a dataset or schema
// name; anything else is refused rather than quoted, since the view SQL is
// shared and the two engines quote differently.
var datasetName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func checkDataset(dataset string) error {
	if len(dataset) > 1024 || !datasetName.MatchString(dataset) {
		return fmt.Errorf("warehouse dataset %q: want up to 1024 letters, digits and underscores, not starting with a digit", dataset)
	}
	return nil
}

// WarehouseViewSQL returns the CREATE OR REPLACE VIEW statements of every
// embedded view with dataset substituted, in the order of WarehouseViews.
func WarehouseViewSQL(dataset string) ([]string, error) {
	if err := checkDataset(dataset); err != nil {
		return nil, err
	}
	views, err := WarehouseViews()
	if err != nil {
		return nil, err
	}
	stmts := make([]string, len(views))
	for i, v := range views {
		stmts[i] = strings.ReplaceAll(v.SQL, datasetPlaceholder, dataset)
	}
	return stmts, nil
}

// WarehouseDuckDBDDL renders the embedded table schemas as DuckDB statements
// (CREATE SCHEMA / CREATE TABLE IF NOT EXISTS) in schema dataset. Running
// them on a database that has the tables already changes nothing.
func WarehouseDuckDBDDL(dataset string) ([]string, error) {
	if err := checkDataset(dataset); err != nil {
		return nil, err
	}
	tables, err := WarehouseTables()
	if err != nil {
		return nil, err
	}
	stmts := []string{"CREATE SCHEMA IF NOT EXISTS " + dataset}
	for _, t := range tables {
		cols := make([]string, len(t.Fields))
		for i, f := range t.Fields {
			col, err := duckDBColumn(f)
			if err != nil {
				return nil, fmt.Errorf("warehouse table %s: %w", t.Name, err)
			}
			cols[i] = "  " + col
		}
		stmts = append(stmts, fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s (\n%s\n)", dataset, t.Name, strings.Join(cols, ",\n")))
	}
	return stmts, nil
}

// duckDBColumn renders one field as a DuckDB column definition.
func duckDBColumn(f WarehouseField) (string, error) {
	typ, err := duckDBType(f)
	if err != nil {
		return "", err
	}
	col := duckDBIdent(f.Name) + " " + typ
	if strings.EqualFold(f.Mode, "REQUIRED") {
		col += " NOT NULL"
	}
	return col, nil
}

// duckDBType maps a BigQuery field type to DuckDB's. BigQuery TIMESTAMP is an
// instant stored as UTC; DuckDB TIMESTAMP holds it the same way (the sinks
// write UTC), without needing the ICU extension TIMESTAMPTZ arithmetic does.
func duckDBType(f WarehouseField) (string, error) {
	var typ string
	switch strings.ToUpper(f.Type) {
	case "STRING":
		typ = "VARCHAR"
	case "BYTES":
		typ = "BLOB"
	case "INT64", "INTEGER":
		typ = "BIGINT"
	case "FLOAT64", "FLOAT":
		typ = "DOUBLE"
	case "BOOL", "BOOLEAN":
		typ = "BOOLEAN"
	case "TIMESTAMP":
		typ = "TIMESTAMP"
	case "DATE":
		typ = "DATE"
	case "NUMERIC":
		typ = "DECIMAL(38, 9)"
	case "RECORD", "STRUCT":
		if len(f.Fields) == 0 {
			return "", fmt.Errorf("field %q is a %s with no fields", f.Name, f.Type)
		}
		parts := make([]string, len(f.Fields))
		for i, sub := range f.Fields {
			t, err := duckDBType(sub)
			if err != nil {
				return "", fmt.Errorf("field %q: %w", f.Name, err)
			}
			parts[i] = duckDBIdent(sub.Name) + " " + t
		}
		typ = "STRUCT(" + strings.Join(parts, ", ") + ")"
	default:
		return "", fmt.Errorf("field %q has type %q, which has no DuckDB mapping", f.Name, f.Type)
	}
	switch strings.ToUpper(f.Mode) {
	case "", "NULLABLE", "REQUIRED":
	case "REPEATED":
		typ += "[]"
	default:
		return "", fmt.Errorf("field %q has mode %q; want NULLABLE, REQUIRED or REPEATED", f.Name, f.Mode)
	}
	return typ, nil
}

// duckDBIdent quotes a column name, keeping its case (payloadString) and
// allowing names that are keywords (timestamp).
func duckDBIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}
