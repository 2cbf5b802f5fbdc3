package warehousesink

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"sync"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" database/sql driver

	"github.com/iotpipe/iotpipe/schemas"
)

// duckDBPath returns the database file a warehouse URL names, or why the URL
// is not one this sink can write to.
func duckDBPath(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("warehouse URL %q: %w", raw, err)
	}
	switch u.Scheme {
	case "duckdb":
	case "bigquery":
		return "", fmt.Errorf("warehouse URL %q: bigquery:// is not yet supported; use duckdb:///path/to/file.duckdb", raw)
	default:
		return "", fmt.Errorf("warehouse URL %q: scheme %q is not supported; want duckdb:///path/to/file.duckdb", raw, u.Scheme)
	}
	if u.Host != "" || u.Path == "" || u.Path == "/" {
		return "", fmt.Errorf("warehouse URL %q: want duckdb:///path/to/file.duckdb (an absolute path after three slashes)", raw)
	}
	return u.Path, nil
}

// DuckDB allows one writing process, and in that process one open database
// per file: every sink instance of the process (telemetry and dead letters,
// every bundle thread) shares a handle per file, opened by the first Setup
// and closed by the last Teardown.
var (
	sharedMu sync.Mutex
	shared   = map[string]*sharedDB{}
)

type sharedDB struct {
	db   *sql.DB
	refs int
	// ready holds the datasets whose tables and views exist in db.
	ready map[string]bool
}

// acquire opens (or shares) the database at path and makes sure the
// dataset's tables and views exist. Each successful acquire needs a release.
func acquire(ctx context.Context, path, dataset string) (*sql.DB, error) {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	s := shared[path]
	if s == nil {
		db, err := sql.Open("duckdb", path)
		if err != nil {
			return nil, fmt.Errorf("warehouse: open DuckDB %s: %w", path, err)
		}
		s = &sharedDB{db: db, ready: map[string]bool{}}
		shared[path] = s
	}
	s.refs++
	if !s.ready[dataset] {
		if err := createLayout(ctx, s.db, dataset); err != nil {
			releaseLocked(path)
			return nil, fmt.Errorf("warehouse: DuckDB %s: %w", path, err)
		}
		s.ready[dataset] = true
	}
	return s.db, nil
}

func release(path string) error {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	return releaseLocked(path)
}

func releaseLocked(path string) error {
	s := shared[path]
	if s == nil {
		return nil
	}
	s.refs--
	if s.refs > 0 {
		return nil
	}
	delete(shared, path)
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("warehouse: close DuckDB %s: %w", path, err)
	}
	return nil
}

// createLayout runs the DDL rendered from the schemas package's table
// schemas, then its views; both are safe to run on every start.
func createLayout(ctx context.Context, db *sql.DB, dataset string) error {
	ddl, err := schemas.WarehouseDuckDBDDL(dataset)
	if err != nil {
		return err
	}
	views, err := schemas.WarehouseViewSQL(dataset)
	if err != nil {
		return err
	}
	for _, stmt := range append(ddl, views...) {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("create layout in %s: %w\n%s", dataset, err, stmt)
		}
	}
	return nil
}
