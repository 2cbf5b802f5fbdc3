// Package bigtablesink writes schemas.Row values to a Bigtable table in bulk
// mutations of up to 1,000 rows, one in flight while the next is gathered;
// a bundle commits only after its rows are stored.
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

	client *bigtable.Client
	table  *bigtable.Table
	// rows is the call being gathered; spare is a finished call's, kept
	// for reuse.
	rows, spare *call
	// done delivers the call in flight once it is over; nil when none is.
	done    chan *call
	written beam.Counter
	failed  beam.Counter
}

// call is one MutateRows call: its rows and their receipts, and how it went.
type call struct {
	keys []string
	muts []*bigtable.Mutation
	acks []string
	// err is the call's first failure, of failed rows.
	err    error
	failed int
}

func (c *call) reset() *call {
	c.keys, c.muts, c.acks, c.err, c.failed = c.keys[:0], c.muts[:0], c.acks[:0], nil, 0
	return c
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
	fn.rows, fn.spare = &call{}, &call{}
	return nil
}

func (fn *writeFn) Teardown() error {
	if fn.done != nil {
		<-fn.done
	}
	if fn.client == nil {
		return nil
	}
	return fn.client.Close()
}

func (fn *writeFn) StartBundle(_ context.Context, _ func(string)) {
	if fn.done != nil { // left by a failed bundle: its rows are retried with it
		fn.spare = (<-fn.done).reset()
		fn.done = nil
	}
	fn.rows.reset()
}

func (fn *writeFn) ProcessElement(ctx context.Context, row schemas.Row, written func(string)) error {
	m := bigtable.NewMutation()
	for _, c := range row.Cells {
		m.Set(c.Family, c.Column, bigtable.Time(time.UnixMilli(c.Millis)), c.Value)
	}
	r := fn.rows
	r.keys = append(r.keys, row.Key)
	r.muts = append(r.muts, m)
	if row.AckID != "" {
		r.acks = append(r.acks, row.AckID)
	}
	if len(r.keys) >= maxRowsPerCall {
		return fn.send(ctx, written)
	}
	return nil
}

// FinishBundle returns once every row of the bundle is written, or with
// the first failure, so a bundle commits only with its rows stored.
func (fn *writeFn) FinishBundle(ctx context.Context, written func(string)) error {
	if len(fn.rows.keys) > 0 {
		if err := fn.send(ctx, written); err != nil {
			return err
		}
	}
	return fn.wait(ctx, written)
}

// send starts the MutateRows call of the rows gathered so far, once the
// call before it is over: one call is in flight while the next one's rows
// are gathered, so the bundle goes on while Bigtable works, and rows reach
// Bigtable in their order (a later pane of an aggregate is never
// overwritten by an earlier one).
func (fn *writeFn) send(ctx context.Context, written func(string)) error {
	if err := fn.wait(ctx, written); err != nil {
		return err
	}
	c := fn.rows
	fn.rows = fn.spare
	fn.spare = nil
	fn.done = make(chan *call, 1)
	go func(done chan<- *call) {
		ctx, cancel := context.WithTimeout(ctx, time.Duration(fn.TimeoutMillis)*time.Millisecond)
		defer cancel()
		errs, err := fn.table.ApplyBulk(ctx, c.keys, c.muts)
		if err != nil {
			c.err, c.failed = fmt.Errorf("bigtable write of %d rows to %s (first key %q): %w", len(c.keys), fn.Table, c.keys[0], err), len(c.keys)
		}
		for i, e := range errs {
			if e != nil {
				if c.failed++; c.err == nil {
					c.err = fmt.Errorf("bigtable write of row %q to %s: %w", c.keys[i], fn.Table, e)
				}
			}
		}
		done <- c
	}(fn.done)
	return nil
}

// wait waits for the call in flight, if any, and hands on its receipts.
func (fn *writeFn) wait(ctx context.Context, written func(string)) error {
	if fn.done == nil {
		return nil
	}
	c := <-fn.done
	fn.done = nil
	defer func() { fn.spare = c.reset() }()
	if c.err != nil {
		fn.failed.Inc(ctx, int64(c.failed))
		return c.err
	}
	fn.written.Inc(ctx, int64(len(c.keys)))
	for _, a := range c.acks {
		written(a)
	}
	return nil
}
