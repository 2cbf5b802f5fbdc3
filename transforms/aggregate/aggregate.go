// Package aggregate summarizes telemetry per device, metric and event-time
// window (count, min, max, sum, mean, last), updating a window when late data arrives.
package aggregate

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/mtime"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/window"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/window/trigger"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/typex"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
)

func init() {
	register.DoFn2x0[schemas.Event, func(beam.EventTime, string, Partial)](&partialFn{})
	register.Emitter3[beam.EventTime, string, Partial]()
	register.DoFn6x1[context.Context, beam.PaneInfo, beam.Window, string, func(*Partial) bool, func(schemas.Aggregate), error](&paneFn{})
	register.Iter1[Partial]()
	register.Emitter1[schemas.Aggregate]()
	beam.RegisterType(reflect.TypeOf((*schemas.Event)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*schemas.Aggregate)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*Partial)(nil)).Elem())
}

// DefaultWindow is the window length when Config.Window is zero.
const DefaultWindow = time.Minute

// Config shapes the windows.
type Config struct {
	// Window is the length of the event-time fixed windows, aligned to the
	// Unix epoch (default 1 minute; whole milliseconds).
	Window time.Duration
	// AllowedLateness is how long after a window's end (as measured by the
	// watermark) its late readings are still counted, in a Late pane that
	// carries the window's full totals. Readings later than this are dropped
	// by the runner and appear in no aggregate. The default, zero, drops
	// every reading that arrives after the watermark passed its window's
	// end, and each window fires exactly once: use zero for batch backfills.
	// In streaming, where the source's watermark follows publish time, a
	// reading published just after its window ended can already be late, so
	// zero loses readings near window boundaries.
	AllowedLateness time.Duration
}

func (c Config) withDefaults() Config {
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	return c
}

func (c Config) validate() error {
	if c.Window <= 0 || c.Window%time.Millisecond != 0 {
		return fmt.Errorf("aggregate window %v: want a positive whole number of milliseconds", c.Window)
	}
	if c.AllowedLateness < 0 || c.AllowedLateness%time.Millisecond != 0 {
		return fmt.Errorf("aggregate allowed lateness %v: want zero or a positive whole number of milliseconds", c.AllowedLateness)
	}
	return nil
}

// PerMinute summarizes events (a PCollection of schemas.Event) into a
// PCollection of schemas.Aggregate: one per device, metric and event-time
// window of cfg.Window, with count, min, max, sum, mean and the value with
// the greatest (ts, seq). A reading counts once in its window however many
// copies of its (device, seq) arrive (see Accumulator), so events need not
// be deduplicated first; pipelines.Graph feeds it the readings before
// dedupe, whose grouping would leave no event time to window by in a
// bounded run.
//
// Events are re-timestamped to their event time (Event.TS) here, whatever
// timestamp they arrived with (the source stamps publish time). A window
// fires when the watermark passes its end (Late false). With
// cfg.AllowedLateness > 0, readings arriving after that fire it again with
// Late true. Panes accumulate, so every firing carries the window's full
// totals and replaces the previous one in a sink keyed by (device, metric,
// window start). Buffered is true when any reading counted so far was
// replayed by an edge agent.
//
// When late panes appear is the runner's business. Prism (measured, see the
// tests) holds accumulated windows until they expire and then fires one
// closing Late pane at end + AllowedLateness, carrying the late readings if
// any and repeating the totals if none; it also keeps every pending partial
// in memory until then, so keep the lateness short on a laptop.
//
// Readings whose window has expired (end + AllowedLateness behind the
// watermark) when they arrive are dropped by the runner, silently; the raw
// readings are stored elsewhere, so a batch backfill can recompute those
// windows.
//
// The work is per key and window, never per-element state: a Partial per
// device and window, holding an Accumulator per metric, is pre-combined
// within each bundle, grouped by device, and merged once per firing. This is combiner lifting done by hand:
// beam.CombinePerKey would do the same, but the Go SDK's combine drops the
// pane, so the Late flag could not be known after it (see
// TestCombinePerKeyLosesPaneInfo). PerMinute panics on a negative or
// sub-millisecond duration in cfg.
func PerMinute(s beam.Scope, events beam.PCollection, cfg Config) beam.PCollection {
	s = s.Scope("aggregate.PerMinute")
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		panic(err)
	}
	partials := beam.ParDo(s, &partialFn{WindowMillis: cfg.Window.Milliseconds()}, events)
	windowed := beam.WindowInto(s, window.NewFixedWindows(cfg.Window), partials,
		beam.Trigger(trigger.Default()),
		beam.AllowedLateness(cfg.AllowedLateness),
		beam.PanesAccumulate(),
	)
	return beam.ParDo(s, &paneFn{}, beam.GroupByKey(s, windowed))
}

// maxPartials bounds a bundle's pre-combine map; past it the partials are
// emitted early, so a huge batch bundle cannot exhaust memory.
const maxPartials = 20000

// partialFn folds a bundle's readings into one Partial per device and
// window, and emits each keyed by device and timestamped at its window's
// start, so the WindowInto that follows assigns it to the right window.
type partialFn struct {
	WindowMillis int64

	partials *Summary
}

func (fn *partialFn) ProcessElement(e schemas.Event, emit func(beam.EventTime, string, Partial)) {
	if fn.partials == nil {
		fn.partials = &Summary{size: fn.WindowMillis, partials: map[summaryKey]*Partial{}}
	}
	fn.partials.Add(e)
	if len(fn.partials.partials) >= maxPartials {
		fn.flush(emit)
	}
}

func (fn *partialFn) FinishBundle(emit func(beam.EventTime, string, Partial)) {
	fn.flush(emit)
}

func (fn *partialFn) flush(emit func(beam.EventTime, string, Partial)) {
	if fn.partials == nil {
		return
	}
	for k, p := range fn.partials.partials {
		emit(mtime.FromMilliseconds(k.start), k.device, *p)
	}
	clear(fn.partials.partials)
}

// paneFn merges a firing's partials of one device into its Aggregates, one
// per metric, completed with the window and pane timing.
type paneFn struct {
	onTime beam.Counter
	late   beam.Counter
}

func (fn *paneFn) Setup() {
	fn.onTime = beam.NewCounter("iotpipe.aggregate", "panes_on_time")
	fn.late = beam.NewCounter("iotpipe.aggregate", "panes_late")
}

func (fn *paneFn) ProcessElement(ctx context.Context, pn beam.PaneInfo, w beam.Window, device string, partials func(*Partial) bool, emit func(schemas.Aggregate)) error {
	iw, ok := w.(window.IntervalWindow)
	if !ok {
		return fmt.Errorf("aggregate: device %s is in window %v (%T); want a fixed window", device, w, w)
	}
	var total, p Partial
	for partials(&p) {
		total.Merge(p)
		p = Partial{}
	}
	late := pn.Timing == typex.PaneLate
	for _, agg := range total.appendAggregates(nil, device, mtime.Time(iw.Start).Milliseconds(), mtime.Time(iw.End).Milliseconds()) {
		agg.Late = late
		emit(agg)
	}
	if late {
		fn.late.Inc(ctx, int64(len(total.Metrics)))
	} else {
		fn.onTime.Inc(ctx, int64(len(total.Metrics)))
	}
	return nil
}
