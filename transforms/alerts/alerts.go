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
	register.DoFn3x0[context.Context, schemas.Event, func(schemas.Alert)](&checkFn{})
	register.Emitter1[schemas.Alert]()
	beam.RegisterType(reflect.TypeOf((*schemas.Event)(nil)).Elem())
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
// enrich.Enrich) against the thresholds of their device in the reference
// data at referencePath (see enrich.LoadReference) and returns a
// PCollection of schemas.Alert:
// one per metric above its Max ("above_max") or below its Min ("below_min").
//
// Only real-time readings alert. Buffered replays, readings older than their
// publish time by more than cfg.MaxAge, readings without a publish time and
// devices missing from the reference data are skipped and counted by reason as
// iotpipe.alerts/skipped_<reason>; alerts raised are counted as
// iotpipe.alerts/alerts_raised.
//
// Like enrich.Enrich, every worker loads the reference data once, in Setup.
func Thresholds(s beam.Scope, events beam.PCollection, referencePath string, cfg Config) beam.PCollection {
	s = s.Scope("alerts.Thresholds")
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	return beam.ParDo(s, &checkFn{ReferencePath: referencePath, MaxAgeMillis: cfg.MaxAge.Milliseconds()}, events)
}

type checkFn struct {
	ReferencePath string
	MaxAgeMillis  int64

	checker *Checker
	buf     []schemas.Alert
	raised  beam.Counter
	skipped map[string]beam.Counter
}

func (fn *checkFn) Setup(ctx context.Context) error {
	ix, err := enrich.LoadIndex(ctx, fn.ReferencePath)
	if err != nil {
		return fmt.Errorf("alerts: %w", err)
	}
	fn.checker = &Checker{Index: ix, MaxAge: time.Duration(fn.MaxAgeMillis) * time.Millisecond}
	fn.raised = beam.NewCounter("iotpipe.alerts", "alerts_raised")
	fn.skipped = make(map[string]beam.Counter, len(SkipReasons))
	for _, r := range SkipReasons {
		fn.skipped[r] = beam.NewCounter("iotpipe.alerts", "skipped_"+r)
	}
	return nil
}

func (fn *checkFn) ProcessElement(ctx context.Context, e schemas.Event, emit func(schemas.Alert)) {
	var skip string
	fn.buf, skip = fn.checker.Check(fn.buf[:0], e)
	if skip != "" {
		fn.skipped[skip].Inc(ctx, 1)
		return
	}
	for _, a := range fn.buf {
		emit(a)
	}
	if len(fn.buf) > 0 {
		fn.raised.Inc(ctx, int64(len(fn.buf)))
	}
}
