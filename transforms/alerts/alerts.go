// Package alerts raises real-time alerts for readings outside their device's
// thresholds; replayed and stale readings are skipped, never alerted on.
package alerts

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/enrich"
)

func init() {
	register.DoFn4x1[context.Context, schemas.Event, func(*schemas.Reference) bool, func(schemas.Alert), error](&checkFn{})
	register.Iter1[schemas.Reference]()
	register.Emitter1[schemas.Alert]()
	beam.RegisterType(reflect.TypeOf((*schemas.Event)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*schemas.Reference)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*schemas.Alert)(nil)).Elem())
}

// DefaultMaxAge is Config.MaxAge when it is zero.
const DefaultMaxAge = 5 * time.Minute

// Config tunes alerting.
type Config struct {
	// MaxAge is how much older than its publish time a reading may be and
	// still count as real-time (default 5 minutes). Older readings, such as
	// a device's backlog after an outage, are skipped.
	MaxAge time.Duration
}

// Thresholds checks events (a PCollection of schemas.Event, normally after
// enrich.Enrich) against the thresholds of their device in refs (a
// PCollection of schemas.Reference in the global window, read as a side
// input once per DoFn instance) and returns a PCollection of schemas.Alert:
// one per metric above its Max ("above_max") or below its Min ("below_min").
//
// Only real-time readings alert. Buffered replays, readings older than their
// publish time by more than cfg.MaxAge, readings without a publish time and
// devices missing from refs are skipped and counted by reason as
// iotpipe.alerts/skipped_<reason>; alerts raised are counted as
// iotpipe.alerts/alerts_raised.
func Thresholds(s beam.Scope, events, refs beam.PCollection, cfg Config) beam.PCollection {
	s = s.Scope("alerts.Thresholds")
	enrich.RequireGlobal(refs, "alerts.Thresholds")
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	return beam.ParDo(s, &checkFn{MaxAgeMillis: cfg.MaxAge.Milliseconds()}, events, beam.SideInput{Input: refs})
}

type checkFn struct {
	MaxAgeMillis int64

	checker *Checker
	buf     []schemas.Alert
	raised  beam.Counter
	skipped map[string]beam.Counter
}

func (fn *checkFn) Setup() {
	fn.raised = beam.NewCounter("iotpipe.alerts", "alerts_raised")
	fn.skipped = make(map[string]beam.Counter, len(SkipReasons))
	for _, r := range SkipReasons {
		fn.skipped[r] = beam.NewCounter("iotpipe.alerts", "skipped_"+r)
	}
}

func (fn *checkFn) ProcessElement(ctx context.Context, e schemas.Event, refs func(*schemas.Reference) bool, emit func(schemas.Alert)) error {
	if fn.checker == nil {
		ix, err := enrich.ReadIndex(refs)
		if err != nil {
			return fmt.Errorf("alerts: %w", err)
		}
		fn.checker = &Checker{Index: ix, MaxAge: time.Duration(fn.MaxAgeMillis) * time.Millisecond}
	}
	var skip string
	fn.buf, skip = fn.checker.Check(fn.buf[:0], e)
	if skip != "" {
		fn.skipped[skip].Inc(ctx, 1)
		return nil
	}
	for _, a := range fn.buf {
		emit(a)
	}
	if len(fn.buf) > 0 {
		fn.raised.Inc(ctx, int64(len(fn.buf)))
	}
	return nil
}
