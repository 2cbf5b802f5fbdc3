package warehousesink

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" database/sql driver

	"github.com/iotpipe/iotpipe/schemas"
)

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

// maxRowsPerInsert bounds one multi-row INSERT (and so its parameter count).
const maxRowsPerInsert = 500

// duckDBTable holds one bundle's transaction: rows go out in multi-row
// INSERTs as they accumulate, and commit commits.
type duckDBTable struct {
	path   string
	table  string // dataset-qualified
	insert string // INSERT INTO table (columns) VALUES
	// records holds, for each REPEATED RECORD column, its field names in
	// schema order; nil for the other columns.
	records [][]string
	plain   string // the tuple of a row without records: (?, ?, ...)
	db      *sql.DB
	tx      *sql.Tx
	tuples  []string
	args    []any
	rows    int64 // rows inserted in tx
}

func openDuckDBTable(ctx context.Context, t target, table string, columns []string) (*duckDBTable, error) {
	records, err := columnRecords(table, columns)
	if err != nil {
		return nil, err
	}
	db, err := acquire(ctx, t.path, t.dataset)
	if err != nil {
		return nil, err
	}
	w := &duckDBTable{path: t.path, table: t.dataset + "." + table, records: records, db: db}
	quoted := make([]string, len(columns))
	for i, c := range columns {
		quoted[i] = `"` + c + `"`
	}
	w.insert = "INSERT INTO " + w.table + " (" + strings.Join(quoted, ", ") + ") VALUES "
	w.plain = "(" + strings.TrimSuffix(strings.Repeat("?, ", len(columns)), ", ") + ")"
	return w, nil
}

// columnRecords checks that columns are table's columns in schema order,
// and returns the field names of its REPEATED RECORD columns.
func columnRecords(table string, columns []string) ([][]string, error) {
	tables, err := schemas.WarehouseTables()
	if err != nil {
		return nil, err
	}
	for _, tb := range tables {
		if tb.Name != table {
			continue
		}
		names := make([]string, len(tb.Fields))
		records := make([][]string, len(tb.Fields))
		for i, f := range tb.Fields {
			names[i] = f.Name
			if f.Type == "RECORD" || f.Type == "STRUCT" {
				for _, sub := range f.Fields {
					records[i] = append(records[i], sub.Name)
				}
			}
		}
		if strings.Join(names, ",") != strings.Join(columns, ",") {
			return nil, fmt.Errorf("warehouse table %s has columns %v; the sink writes %v", table, names, columns)
		}
		return records, nil
	}
	return nil, fmt.Errorf("warehouse table %s is not in the schemas package", table)
}

func (w *duckDBTable) add(ctx context.Context, row []any) error {
	if len(row) != len(w.records) {
		return fmt.Errorf("warehouse: row of %d values for %s, which has %d columns", len(row), w.table, len(w.records))
	}
	hasRecords := false
	for i, v := range row {
		_, isRecords := v.([]record)
		if isRecords != (w.records[i] != nil) && v != nil {
			return fmt.Errorf("warehouse: %s column %d: %T does not suit the column's type", w.table, i, v)
		}
		hasRecords = hasRecords || w.records[i] != nil
	}
	if hasRecords {
		w.tuples = append(w.tuples, w.recordTuple(row))
	} else {
		w.tuples = append(w.tuples, w.plain)
		w.args = append(w.args, row...)
	}
	if len(w.tuples) < maxRowsPerInsert {
		return nil
	}
	return w.flush(ctx)
}

// recordTuple spells the row with each list of records as a DuckDB list
// literal of bound fields, which avoids relying on the driver to bind nested
// types, and appends the row's parameters.
func (w *duckDBTable) recordTuple(row []any) string {
	var sb strings.Builder
	sb.WriteByte('(')
	for i, v := range row {
		if i > 0 {
			sb.WriteString(", ")
		}
		fields := w.records[i]
		if fields == nil {
			sb.WriteByte('?')
			w.args = append(w.args, v)
			continue
		}
		recs, _ := v.([]record)
		if recs == nil {
			// BigQuery stores no NULL list, only an empty one.
			sb.WriteString("[]")
			continue
		}
		sb.WriteByte('[')
		for j, r := range recs {
			if j > 0 {
				sb.WriteString(", ")
			}
			sb.WriteByte('{')
			for k, f := range fields {
				if k > 0 {
					sb.WriteString(", ")
				}
				sb.WriteString("'" + f + "': ?")
				w.args = append(w.args, r[f])
			}
			sb.WriteByte('}')
		}
		sb.WriteByte(']')
	}
	sb.WriteByte(')')
	return sb.String()
}

// flush inserts the pending rows inside the bundle's transaction.
func (w *duckDBTable) flush(ctx context.Context) error {
	if len(w.tuples) == 0 {
		return nil
	}
	n := len(w.tuples)
	if w.tx == nil {
		// database/sql rolls a transaction back when its context ends; this
		// one must live until FinishBundle, whatever the element's context.
		tx, err := w.db.BeginTx(context.WithoutCancel(ctx), nil)
		if err != nil {
			return fmt.Errorf("warehouse: begin transaction on %s: %w", w.path, err)
		}
		w.tx = tx
	}
	if _, err := w.tx.ExecContext(ctx, w.insert+strings.Join(w.tuples, ", "), w.args...); err != nil {
		return fmt.Errorf("warehouse: insert %d rows into %s in %s: %w", n, w.table, w.path, err)
	}
	w.rows += int64(n)
	w.tuples, w.args = w.tuples[:0], w.args[:0]
	return nil
}

func (w *duckDBTable) commit(ctx context.Context) error {
	if err := w.flush(ctx); err != nil {
		return err
	}
	if w.tx == nil {
		return nil
	}
	err := w.tx.Commit()
	w.tx = nil
	if err != nil {
		return fmt.Errorf("warehouse: commit %d rows to %s in %s: %w", w.rows, w.table, w.path, err)
	}
	w.rows = 0
	return nil
}

func (w *duckDBTable) abort() {
	if w.tx != nil {
		_ = w.tx.Rollback() // the bundle failed already; its error is the one reported
		w.tx = nil
	}
	w.tuples, w.args, w.rows = w.tuples[:0], w.args[:0], 0
}

func (w *duckDBTable) close() error {
	w.abort()
	if w.db == nil {
		return nil
	}
	w.db = nil
	return release(w.path)
}
