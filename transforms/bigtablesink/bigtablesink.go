// Package bigtablesink writes schemas.Row values to a Bigtable table in one
// bulk mutation per bundle, so a bundle commits only after its rows are stored.
package bigtablesink

import (
	"context"
	"fmt"
	"time"

	"cloud.google.com/go/bigtable"
	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
)

func init() {
	register.DoFn3x1[context.Context, schemas.Row, func(string), error](&writeFn{})
	register.Emitter1[string]()
}

// Config names the table and bounds the retries.
type Config struct {
	Project  string
	Instance string
	Table    string
	// WriteTimeout bounds one bundle's write, retries included (default 30 s).
	// The Bigtable client retries retryable failures (Unavailable,
	// DeadlineExceeded, Aborted) until then; past it the bundle fails, so the
	// runner does not commit it and the source does not ack its messages.
	WriteTimeout time.Duration
}

// maxRowsPerCall keeps one MutateRows call well under Bigtable's 100,000
// mutations per request.
const maxRowsPerCall = 1000

// Write stores every row of rows (a PCollection of schemas.Row) in cfg.Table
// and returns the rows' receipts (Row.AckID, a PCollection of string) once
// they are written, for the source to acknowledge.
// Writes are idempotent: rows carry deterministic keys and explicit cell
// timestamps, so a retried or replayed bundle rewrites the same cells.
func Write(s beam.Scope, cfg Config, rows beam.PCollection) beam.PCollection {
	s = s.Scope("bigtablesink.Write")
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 30 * time.Second
	}
	return beam.ParDo(s, &writeFn{
		Project:       cfg.Project,
		Instance:      cfg.Instance,
		Table:         cfg.Table,
		TimeoutMillis: cfg.WriteTimeout.Milliseconds(),
	}, rows)
}

type writeFn struct {
	Project       string
	Instance      string
	Table         string
	TimeoutMillis int64

	client  *bigtable.Client
	table   *bigtable.Table
	keys    []string
	muts    []*bigtable.Mutation
	acks    []string
	written beam.Counter
	failed  beam.Counter
}

func (fn *writeFn) Setup(ctx context.Context) error {
	var err error
	// bigtable.NewClient honours BIGTABLE_EMULATOR_HOST.
	fn.client, err = bigtable.NewClient(ctx, fn.Project, fn.Instance)
	if err != nil {
		return fmt.Errorf("bigtable client for projects/%s/instances/%s: %w", fn.Project, fn.Instance, err)
	}
	fn.table = fn.client.Open(fn.Table)
	fn.written = beam.NewCounter("iotpipe.bigtable", fn.Table+"_rows_written")
	fn.failed = beam.NewCounter("iotpipe.bigtable", fn.Table+"_write_failures")
	return nil
}

func (fn *writeFn) Teardown() error {
	if fn.client == nil {
		return nil
	}
	return fn.client.Close()
}

func (fn *writeFn) StartBundle(_ context.Context, _ func(string)) {
	fn.keys, fn.muts, fn.acks = fn.keys[:0], fn.muts[:0], fn.acks[:0]
}

func (fn *writeFn) ProcessElement(ctx context.Context, row schemas.Row, written func(string)) error {
	m := bigtable.NewMutation()
	for _, c := range row.Cells {
		m.Set(c.Family, c.Column, bigtable.Time(time.UnixMilli(c.Millis)), c.Value)
	}
	fn.keys = append(fn.keys, row.Key)
	fn.muts = append(fn.muts, m)
	if row.AckID != "" {
		fn.acks = append(fn.acks, row.AckID)
	}
	if len(fn.keys) >= maxRowsPerCall {
		return fn.flush(ctx, written)
	}
	return nil
}

func (fn *writeFn) FinishBundle(ctx context.Context, written func(string)) error {
	return fn.flush(ctx, written)
}

func (fn *writeFn) flush(ctx context.Context, written func(string)) error {
	if len(fn.keys) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(fn.TimeoutMillis)*time.Millisecond)
	defer cancel()
	errs, err := fn.table.ApplyBulk(ctx, fn.keys, fn.muts)
	if err != nil {
		fn.failed.Inc(ctx, int64(len(fn.keys)))
		return fmt.Errorf("bigtable write of %d rows to %s (first key %q): %w", len(fn.keys), fn.Table, fn.keys[0], err)
	}
	for i, e := range errs {
		if e != nil {
			fn.failed.Inc(ctx, 1)
			return fmt.Errorf("bigtable write of row %q to %s: %w", fn.keys[i], fn.Table, e)
		}
	}
	fn.written.Inc(ctx, int64(len(fn.keys)))
	for _, a := range fn.acks {
		written(a)
	}
	fn.keys, fn.muts, fn.acks = fn.keys[:0], fn.muts[:0], fn.acks[:0]
	return nil
}
