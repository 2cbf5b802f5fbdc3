package emulators

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" database/sql driver
)

// initWarehouse creates (or opens) the DuckDB file, proves it answers a query,
// and closes it again: DuckDB allows one writing process, and that is the
// warehouse sink, not us.
func (e *Emulators) initWarehouse(path string) error {
	if path == "" {
		dir, err := os.MkdirTemp("", "iotpipe-")
		if err != nil {
			return fmt.Errorf("warehouse: create temporary directory: %w", err)
		}
		e.warehouseTmpDir = dir
		path = filepath.Join(dir, "warehouse.duckdb")
	} else if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("warehouse: create directory for %s: %w", path, err)
	}
	e.WarehousePath = path

	db, err := sql.Open("duckdb", path)
	if err != nil {
		return fmt.Errorf("warehouse: open %s: %w", path, err)
	}
	var one int
	err = db.QueryRowContext(context.Background(), "SELECT 1").Scan(&one)
	if cerr := db.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		// The usual cause is another process holding DuckDB's write lock.
		return fmt.Errorf("warehouse: query %s (is another process using it? pass -warehouse): %w", path, err)
	}
	return nil
}
