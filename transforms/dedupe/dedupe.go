// Package dedupe drops repeated readings exactly: a reading is identified by
// (device_id, seq), and each identity passes once within an event-time horizon.
package dedupe

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/window"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/window/trigger"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/state"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/timers"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
)

func init() {
	register.Function1x2(keyByDevice)
	register.Function2x2(collectBatch)
	register.DoFn8x1[context.Context, beam.EventTime, state.Provider, timers.Provider, string, []schemas.Event, func(schemas.Event), func(string), error](&dedupeFn{})
	register.Emitter1[schemas.Event]()
	register.Emitter1[string]()
	register.Iter1[schemas.Event]()
	beam.RegisterType(reflect.TypeOf((*SeenSet)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*Run)(nil)).Elem())
}

// Config tunes the deduplication.
type Config struct {
	// Horizon is how long, in event time, a (device, seq) is remembered
	// (default 24 h).
	Horizon time.Duration
	// Batch is how long, in processing time, a device's readings gather
	// before its state is touched (default 250 ms). State is read and written once
	// per device per batch, never per reading: per-element state collapses on
	// prism under a backlog (DESIGN.md).
	Batch time.Duration
}

func (c Config) withDefaults() Config {
	if c.Horizon <= 0 {
		c.Horizon = 24 * time.Hour
	}
	if c.Batch <= 0 {
		c.Batch = 250 * time.Millisecond
	}
	return c
}

// Dedupe returns the events (PCollection of schemas.Event) with every
// repeat of a (DeviceID, Seq) removed, within cfg.Horizon of event time, and
// the receipts (Event.AckID, PCollection of string) of the repeats it dropped:
// a repeat needs no write, so it can be acknowledged at once.
// It has no false positives: a reading is dropped only if its exact identity
// passed before. Output is in the global window, timestamped at its end.
// In a bounded run that end is where the watermark already stands, so an
// event-time window downstream of Dedupe has expired before its readings
// arrive and the runner drops them: window by event time upstream (as
// pipelines.Graph does for aggregates).
//
// The seen-set lives in Beam state keyed by device, so it lasts as long as
// the job's state does; a restarted prism job starts empty, and the sinks'
// deterministic keys absorb what it lets through again.
func Dedupe(s beam.Scope, events beam.PCollection, cfg Config) (unique, repeatReceipts beam.PCollection) {
	s = s.Scope("dedupe.Dedupe")
	cfg = cfg.withDefaults()
	keyed := beam.ParDo(s, keyByDevice, events)
	// Batches close on processing time, or at a size cap under a backlog,
	// never on the watermark: a redelivered message, or a backlog read while
	// the watermark holds at its oldest publish time, must neither be dropped
	// as late nor wait for the watermark.
	batched := beam.WindowInto(s, window.NewGlobalWindows(), keyed,
		beam.Trigger(trigger.Repeat(trigger.AfterAny([]trigger.Trigger{
			trigger.AfterProcessingTime().PlusDelay(cfg.Batch),
			trigger.AfterCount(maxBatch),
		}))),
		beam.PanesDiscard())
	grouped := beam.ParDo(s, collectBatch, beam.GroupByKey(s, batched))
	unique, repeatReceipts = beam.ParDo2(s, &dedupeFn{
		HorizonMillis: cfg.Horizon.Milliseconds(),
		GC:            timers.InEventTime("gc"),
	}, grouped)
	// Hand on plain global-window collections: the batching trigger is this
	// transform's business, not its consumers'.
	return beam.WindowInto(s, window.NewGlobalWindows(), unique), beam.WindowInto(s, window.NewGlobalWindows(), repeatReceipts)
}

// maxBatch caps one device's batch under a backlog.
const maxBatch = 10_000

func keyByDevice(e schemas.Event) (string, schemas.Event) { return e.DeviceID, e }

func collectBatch(device string, events func(*schemas.Event) bool) (string, []schemas.Event) {
	var batch []schemas.Event
	var e schemas.Event
	for events(&e) {
		batch = append(batch, e)
	}
	return device, batch
}

type dedupeFn struct {
	HorizonMillis int64
	Seen          state.Value[SeenSet]
	GC            timers.EventTime

	unique    beam.Counter
	duplicate beam.Counter
}

func (fn *dedupeFn) Setup() {
	fn.unique = beam.NewCounter("iotpipe.dedupe", "unique")
	fn.duplicate = beam.NewCounter("iotpipe.dedupe", "duplicates_dropped")
}

func (fn *dedupeFn) ProcessElement(ctx context.Context, ts beam.EventTime, sp state.Provider, tp timers.Provider, device string, batch []schemas.Event, emit func(schemas.Event), repeat func(string)) error {
	seen, _, err := fn.Seen.Read(sp)
	if err != nil {
		return fmt.Errorf("dedupe: reading seen-set of device %q: %w", device, err)
	}
	kept, dups := Filter(&seen, batch, fn.HorizonMillis)
	for _, e := range kept {
		emit(e)
	}
	for _, a := range dups {
		if a != "" {
			repeat(a)
		}
	}
	if err := fn.Seen.Write(sp, seen); err != nil {
		return fmt.Errorf("dedupe: writing seen-set of device %q: %w", device, err)
	}
	// Forget a device that has gone quiet for a whole horizon of event time.
	fn.GC.Set(tp, time.UnixMilli(seen.NewestTS()+fn.HorizonMillis), timers.WithNoOutputTimestamp())
	fn.unique.Inc(ctx, int64(len(kept)))
	fn.duplicate.Inc(ctx, int64(len(dups)))
	return nil
}

func (fn *dedupeFn) OnTimer(ctx context.Context, sp state.Provider, _ timers.Provider, device string, t timers.Context, _ func(schemas.Event), _ func(string)) error {
	if t.Family != fn.GC.Family {
		return fmt.Errorf("dedupe: unexpected timer family %q for device %q", t.Family, device)
	}
	return fn.Seen.Clear(sp)
}

// Filter is the plain-Go core of Dedupe: it returns the events of batch whose
// (DeviceID, Seq) seen has not recorded, in (TS, Seq) order, records them, and
// prunes what fell out of the horizon; and the AckIDs of the repeats. All
// events must be of one device.
func Filter(seen *SeenSet, batch []schemas.Event, horizonMillis int64) (kept []schemas.Event, repeats []string) {
	// Of copies of one identity in a batch, the first published is kept, so
	// a replay of the same messages keeps the same copy.
	sort.Slice(batch, func(i, j int) bool {
		a, b := &batch[i], &batch[j]
		if a.TS != b.TS {
			return a.TS < b.TS
		}
		if a.Seq != b.Seq {
			return a.Seq < b.Seq
		}
		if a.PublishMillis != b.PublishMillis {
			return a.PublishMillis < b.PublishMillis
		}
		return a.MessageID < b.MessageID
	})
	kept = batch[:0:0]
	for _, e := range batch {
		if seen.Add(e.Seq, e.TS) {
			kept = append(kept, e)
		} else {
			repeats = append(repeats, e.AckID)
		}
	}
	if newest := seen.NewestTS(); newest > 0 {
		seen.Prune(newest - horizonMillis)
	}
	return kept, repeats
}
