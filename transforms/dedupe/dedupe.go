// Package dedupe drops repeated readings exactly: a reading is identified by
// (device_id, seq), and each identity passes once within an event-time horizon.
package dedupe

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/window"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/state"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/timers"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
)

func init() {
	register.DoFn3x0[beam.EventTime, schemas.Event, func(beam.EventTime, string, Batch)](&shardFn{})
	register.Emitter3[beam.EventTime, string, Batch]()
	register.Function1x1(encodeBatch)
	register.Function1x2(decodeBatch)
	beam.RegisterCoder(reflect.TypeOf((*Batch)(nil)).Elem(), encodeBatch, decodeBatch)
	register.DoFn8x1[context.Context, beam.EventTime, state.Provider, timers.Provider, string, Batch, func(schemas.Event), func(string), error](&dedupeFn{})
	register.Emitter1[schemas.Event]()
	register.Emitter1[string]()
	beam.RegisterType(reflect.TypeOf((*SeenSet)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*ShardSeen)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*DeviceSeen)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*Run)(nil)).Elem())
}

// Config tunes the deduplication.
type Config struct {
	// Horizon is how long, in event time, a (device, seq) is remembered
	// (default 24 h).
	Horizon time.Duration
	// Shards is how many groups devices are hashed into (default 64). A
	// shard is one key of the state: its devices' seen-sets are read and
	// written once per batch of its readings, never per reading (per-element
	// state collapses on prism under a backlog, DESIGN.md), and on prism a
	// key is the unit a bundle holds, so a key per device drowned the runner
	// in bundles once a backlog of a thousand devices was read (measured:
	// stalls of 20 to 40 s, 1.6k events/s).
	Shards int
}

func (c Config) withDefaults() Config {
	if c.Horizon <= 0 {
		c.Horizon = 24 * time.Hour
	}
	if c.Shards <= 0 {
		c.Shards = 64
	}
	return c
}

// Dedupe returns the events (PCollection of schemas.Event) with every
// repeat of a (DeviceID, Seq) removed, within cfg.Horizon of event time, and
// the receipts (Event.AckID, PCollection of string) of the repeats it dropped:
// a repeat needs no write, so it can be acknowledged at once.
// It has no false positives: a reading is dropped only if its exact identity
// passed before. Both outputs are in the global window; a reading comes
// out stamped with the oldest timestamp of the batch it came in.
//
// The seen-sets live in Beam state keyed by shard of devices, so they last
// as long as the job's state does; a restarted prism job starts empty, and
// the sinks' deterministic keys absorb what it lets through again. An
// event-time timer forgets a shard whose devices have all gone quiet for a
// whole horizon.
//
// The events reach the state in batches, one per shard per bundle (see
// Batch), never one by one, and with no grouping or trigger in between: a
// stateful stage takes whatever is pending for its keys, whatever the
// watermark, so a redelivered message, or a backlog read while the
// watermark holds at its oldest publish time, is neither dropped as late
// nor kept waiting for the watermark. A batch carries its oldest publish
// time because prism holds back every element of a key behind a timer the
// watermark has not reached: stamped so, a batch comes before its shard's
// GC timer unless it was published more than a horizon after the shard's
// newest reading, when a watermark that follows publish time has passed
// the timer already. (In a backfill of more than a horizon of archive, such
// batches wait for the end of the read.) A grouping would stamp them at the
// end of the global window, behind every timer: each shard stopped after
// its first batch (TestStreamingWritesCurrentReadingsOneAfterAnother in
// pipelines).
func Dedupe(s beam.Scope, events beam.PCollection, cfg Config) (unique, repeatReceipts beam.PCollection) {
	s = s.Scope("dedupe.Dedupe")
	cfg = cfg.withDefaults()
	keyed := beam.WindowInto(s, window.NewGlobalWindows(), beam.ParDo(s, &shardFn{Shards: cfg.Shards}, events))
	return beam.ParDo2(s, &dedupeFn{
		HorizonMillis: cfg.Horizon.Milliseconds(),
		GC:            timers.InEventTime("gc"),
	}, keyed)
}

// maxBundleBatch bounds a batch: a bundle's events of a shard are cut into
// batches of at most this many.
const maxBundleBatch = 500

// Batch is events of one shard from one bundle: the unit dedupe moves
// between stages. A runner's cost of moving data is per element, so moving
// the events one by one cost more than the deduplication itself
// (BenchmarkPrismGrouping in pipelines measures prism's cost of both).
type Batch struct {
	Events []schemas.Event
	// encoded, if set, is the batch in its coder's form already, and
	// Events is empty: shardFn writes each event in it as it comes, so
	// the events are neither kept nor gone over again to be encoded.
	encoded []byte
}

// encodeBatch is the Batch coder: each event's length and binary form
// (schemas.AppendEventBinary), one after the other.
func encodeBatch(b Batch) []byte {
	if b.encoded != nil {
		return b.encoded
	}
	var out, ev []byte
	for _, e := range b.Events {
		ev = schemas.AppendEventBinary(ev[:0], e)
		out = appendEncoded(out, ev)
	}
	return out
}

// appendEncoded appends an event's binary form, ev, to a batch's.
func appendEncoded(batch, ev []byte) []byte {
	return append(binary.AppendUvarint(batch, uint64(len(ev))), ev...)
}

func decodeBatch(data []byte) (Batch, error) {
	// Count first, to allocate the events once.
	n := 0
	for rest := data; len(rest) > 0; n++ {
		size, k := binary.Uvarint(rest)
		if k <= 0 || size > uint64(len(rest)-k) {
			return Batch{}, fmt.Errorf("dedupe: malformed batch: event %d is cut short", n+1)
		}
		rest = rest[k+int(size):]
	}
	b := Batch{Events: make([]schemas.Event, n)}
	whole := string(data) // one copy for the strings of all the events
	for i := range b.Events {
		size, k := binary.Uvarint(data)
		e, err := schemas.DecodeEventBinaryString(whole[k : k+int(size)])
		if err != nil {
			return Batch{}, fmt.Errorf("dedupe: malformed batch: event %d of %d: %w", i+1, n, err)
		}
		b.Events[i] = e
		data, whole = data[k+int(size):], whole[k+int(size):]
	}
	return b, nil
}

// shardFn gathers a bundle's events into one Batch per shard of devices,
// keyed by the shard and stamped with the oldest event timestamp in it, so
// the batch holds the watermark no further than its events did.
type shardFn struct {
	Shards int

	open map[int]*openBatch
	ev   []byte
}

type openBatch struct {
	encoded []byte
	n       int
	oldest  beam.EventTime
}

func (fn *shardFn) ProcessElement(ts beam.EventTime, e schemas.Event, emit func(beam.EventTime, string, Batch)) {
	if fn.open == nil {
		fn.open = map[int]*openBatch{}
	}
	shard := shardOf(e.DeviceID, fn.Shards)
	b := fn.open[shard]
	if b == nil {
		b = &openBatch{}
		fn.open[shard] = b
	}
	if b.n == 0 || ts < b.oldest {
		b.oldest = ts
	}
	fn.ev = schemas.AppendEventBinary(fn.ev[:0], e)
	if b.encoded == nil {
		b.encoded = make([]byte, 0, 64<<10)
	}
	b.encoded = appendEncoded(b.encoded, fn.ev)
	if b.n++; b.n >= maxBundleBatch {
		b.emit(shard, emit)
	}
}

func (fn *shardFn) FinishBundle(emit func(beam.EventTime, string, Batch)) {
	for shard, b := range fn.open {
		if b.n > 0 {
			b.emit(shard, emit)
		}
	}
}

func (b *openBatch) emit(shard int, emit func(beam.EventTime, string, Batch)) {
	emit(b.oldest, strconv.Itoa(shard), Batch{encoded: b.encoded})
	b.encoded, b.n = nil, 0 // emit may keep the buffer
}

// shardOf hashes a device id (FNV-1a) to one of n shards.
func shardOf(device string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(device); i++ {
		h ^= uint32(device[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// ShardSeen is the state of one shard: the seen-set of each of its devices,
// sorted by device id.
type ShardSeen struct {
	Devices []DeviceSeen
}

// DeviceSeen is one device's seen-set in a shard's state.
type DeviceSeen struct {
	Device string
	Seen   SeenSet
}

type dedupeFn struct {
	HorizonMillis int64
	Seen          state.Value[ShardSeen]
	GC            timers.EventTime

	unique    beam.Counter
	duplicate beam.Counter
}

func (fn *dedupeFn) Setup() {
	fn.unique = beam.NewCounter("iotpipe.dedupe", "unique")
	fn.duplicate = beam.NewCounter("iotpipe.dedupe", "duplicates_dropped")
}

func (fn *dedupeFn) ProcessElement(ctx context.Context, _ beam.EventTime, sp state.Provider, tp timers.Provider, shard string, batch Batch, emit func(schemas.Event), repeat func(string)) error {
	st, _, err := fn.Seen.Read(sp)
	if err != nil {
		return fmt.Errorf("dedupe: reading seen-sets of shard %s: %w", shard, err)
	}
	kept, dups := FilterShard(&st, batch.Events, fn.HorizonMillis)
	for _, e := range kept {
		emit(e)
	}
	for _, a := range dups {
		if a != "" {
			repeat(a)
		}
	}
	if err := fn.Seen.Write(sp, st); err != nil {
		return fmt.Errorf("dedupe: writing seen-sets of shard %s: %w", shard, err)
	}
	// Forget a shard whose devices have all gone quiet for a whole horizon
	// of event time.
	fn.GC.Set(tp, time.UnixMilli(st.newestTS()+fn.HorizonMillis), timers.WithNoOutputTimestamp())
	fn.unique.Inc(ctx, int64(len(kept)))
	fn.duplicate.Inc(ctx, int64(len(dups)))
	return nil
}

func (fn *dedupeFn) OnTimer(ctx context.Context, sp state.Provider, _ timers.Provider, shard string, t timers.Context, _ func(schemas.Event), _ func(string)) error {
	if t.Family != fn.GC.Family {
		return fmt.Errorf("dedupe: unexpected timer family %q for shard %s", t.Family, shard)
	}
	return fn.Seen.Clear(sp)
}

// FilterShard is Filter over a batch of several devices of one shard: each
// device's events are filtered against its own seen-set in st, which gains
// the devices new to it; devices whose newest reading is a horizon older
// than the shard's newest are forgotten. The kept events come device by
// device, in Filter's order; batch itself is left as it is.
func FilterShard(st *ShardSeen, batch []schemas.Event, horizonMillis int64) (kept []schemas.Event, repeats []string) {
	order := sortedOrder(batch, true)
	kept = make([]schemas.Event, 0, len(batch))
	for len(order) > 0 {
		device := batch[order[0]].DeviceID
		n := 1
		for n < len(order) && batch[order[n]].DeviceID == device {
			n++
		}
		i, found := sort.Find(len(st.Devices), func(i int) int { return strings.Compare(device, st.Devices[i].Device) })
		if !found {
			// A copy: the event's string may share memory with its whole batch.
			st.Devices = slices.Insert(st.Devices, i, DeviceSeen{Device: strings.Clone(device)})
		}
		kept, repeats = filterInOrder(&st.Devices[i].Seen, batch, order[:n], horizonMillis, kept, repeats)
		order = order[n:]
	}
	if newest := st.newestTS(); newest > 0 {
		st.Devices = slices.DeleteFunc(st.Devices, func(d DeviceSeen) bool { return d.Seen.NewestTS() < newest-horizonMillis })
	}
	return kept, repeats
}

// newestTS is the newest event time any device of the shard has seen.
func (st *ShardSeen) newestTS() int64 {
	var ts int64
	for i := range st.Devices {
		ts = max(ts, st.Devices[i].Seen.NewestTS())
	}
	return ts
}

// Filter is the plain-Go core of Dedupe: it returns the events of batch whose
// (DeviceID, Seq) seen has not recorded, in (TS, Seq) order, records them, and
// prunes what fell out of the horizon; and the AckIDs of the repeats. All
// events must be of one device. Of copies of one identity in a batch, the
// first published is kept, so a replay of the same messages keeps the same
// copy. batch itself is left as it is.
func Filter(seen *SeenSet, batch []schemas.Event, horizonMillis int64) (kept []schemas.Event, repeats []string) {
	return filterInOrder(seen, batch, sortedOrder(batch, false), horizonMillis, make([]schemas.Event, 0, len(batch)), nil)
}

// filterInOrder is Filter over the events of batch at order, which lists
// them in Filter's order, appending to kept and repeats.
func filterInOrder(seen *SeenSet, batch []schemas.Event, order []int32, horizonMillis int64, kept []schemas.Event, repeats []string) ([]schemas.Event, []string) {
	for _, i := range order {
		if e := &batch[i]; seen.Add(e.Seq, e.TS) {
			kept = append(kept, *e)
		} else {
			repeats = append(repeats, e.AckID)
		}
	}
	if newest := seen.NewestTS(); newest > 0 {
		seen.Prune(newest - horizonMillis)
	}
	return kept, repeats
}

// sortedOrder is the indexes of batch in Filter's order, (TS, Seq,
// PublishMillis, MessageID), by device first if byDevice. Sorting indexes
// leaves the events, hundreds of bytes each, where they are.
func sortedOrder(batch []schemas.Event, byDevice bool) []int32 {
	order := make([]int32, len(batch))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortStableFunc(order, func(i, j int32) int {
		a, b := &batch[i], &batch[j]
		if byDevice {
			if c := strings.Compare(a.DeviceID, b.DeviceID); c != 0 {
				return c
			}
		}
		if c := cmp.Compare(a.TS, b.TS); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Seq, b.Seq); c != 0 {
			return c
		}
		if c := cmp.Compare(a.PublishMillis, b.PublishMillis); c != 0 {
			return c
		}
		return strings.Compare(a.MessageID, b.MessageID)
	})
	return order
}
