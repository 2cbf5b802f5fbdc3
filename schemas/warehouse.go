package schemas

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strings"
)

// The warehouse layout is BigQuery table schemas in the JSON form bq and
// Terraform read (warehouse/<table>.json) and view SQL in the subset both
// BigQuery and DuckDB accept (warehouse/<view>.sql). DuckDB DDL is rendered
// from the same JSON, so the files are the single source for both engines.
// Table names are TelemetryTable and DeadLetterTable.

//go:embed warehouse
var warehouseFiles embed.FS

// TelemetryDedupView is the view of telemetry with one row per
// (device_id, seq, metric); readers use it, never the raw table.
const TelemetryDedupView = "telemetry_dedup"

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

// WarehouseTable is one table of the warehouse layout.
type WarehouseTable struct {
	Name   string
	Fields []WarehouseField
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
	b, err := warehouseFiles.ReadFile(path.Join("warehouse", table+".json"))
	if err != nil {
		return nil, fmt.Errorf("warehouse table %q has no embedded schema: %w", table, err)
	}
	return b, nil
}

// WarehouseTables parses every embedded table schema, in name order.
func WarehouseTables() ([]WarehouseTable, error) {
	names, err := fs.Glob(warehouseFiles, "warehouse/*.json")
	if err != nil {
		return nil, fmt.Errorf("list embedded warehouse schemas: %w", err)
	}
	sort.Strings(names)
	tables := make([]WarehouseTable, 0, len(names))
	for _, n := range names {
		name := strings.TrimSuffix(path.Base(n), ".json")
		b, err := WarehouseSchemaJSON(name)
		if err != nil {
			return nil, err
		}
		var fields []WarehouseField
		if err := json.Unmarshal(b, &fields); err != nil {
			return nil, fmt.Errorf("embedded warehouse schema %s: %w", n, err)
		}
		if len(fields) == 0 {
			return nil, fmt.Errorf("embedded warehouse schema %s has no fields", n)
		}
		tables = append(tables, WarehouseTable{Name: name, Fields: fields})
	}
	return tables, nil
}

// WarehouseViews returns every embedded view, in name order.
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
	return views, nil
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
// embedded view with dataset substituted, in name order.
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
