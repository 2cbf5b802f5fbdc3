package dedupe

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/mtime"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/teststream"

	"github.com/iotpipe/iotpipe/schemas"
)

func TestMain(m *testing.M) { ptest.Main(m) }

func init() {
	register.Function1x1(identity)
	register.Function2x0(stampPublishTime)
}

func identity(e schemas.Event) string { return fmt.Sprintf("%s/%d", e.DeviceID, e.Seq) }

// stampPublishTime gives each event its publish time as element timestamp,
// as the Pub/Sub source does.
func stampPublishTime(e schemas.Event, emit func(beam.EventTime, schemas.Event)) {
	emit(mtime.FromMilliseconds(e.PublishMillis), e)
}

func ev(device string, seq, ts, publish int64) schemas.Event {
	return schemas.Event{DeviceID: device, Seq: seq, TS: ts, PublishMillis: publish, Metrics: schemas.MetricsOf(map[string]float64{"t": float64(seq)})}
}

func TestDedupeBatch(t *testing.T) {
	p, s := beam.NewPipelineWithRoot()
	in := beam.Create(s,
		ev("a", 1, 1000, 1000), ev("a", 2, 2000, 2000), ev("a", 1, 1000, 9000), // repeat in a later batch window
		ev("b", 1, 1000, 1000), ev("b", 1, 1000, 1001), // repeat in the same batch window
		ev("a", 3, 3000, 3000),
	)
	out, _ := Dedupe(s, beam.ParDo(s, stampPublishTime, in), Config{})
	passert.Equals(s, beam.ParDo(s, identity, out), "a/1", "a/2", "a/3", "b/1")
	ptest.RunAndValidate(t, p)
}

// Streaming: duplicates that arrive in different batch windows, out of order,
// and a replay long after the first copy (within the horizon) all collapse
// to one reading per identity.
func TestDedupeStreaming(t *testing.T) {
	base := int64(1_700_000_000_000)
	cfg := teststream.NewConfig()
	cfg.AddElements(base, ev("a", 2, base, base), ev("a", 1, base-10, base))
	cfg.AdvanceWatermark(base + 1000)
	cfg.AddElements(base+1000, ev("a", 1, base-10, base+1000), ev("a", 3, base+5, base+1000), ev("c", 7, base, base+1000))
	cfg.AdvanceWatermark(base + 60_000)
	cfg.AddElements(base+60_000, ev("a", 2, base, base+60_000), ev("c", 7, base, base+60_000))
	cfg.AdvanceWatermarkToInfinity()

	p, s := beam.NewPipelineWithRoot()
	in := teststream.Create(s, cfg)
	out, _ := Dedupe(s, in, Config{Horizon: time.Hour})
	passert.Equals(s, beam.ParDo(s, identity, out), "a/1", "a/2", "a/3", "c/7")
	ptest.RunAndValidate(t, p)
}

// shardFn writes a shard's events in the coder's form as they come; they
// decode to the events it was given, in their order, one batch per shard,
// stamped with the oldest timestamp.
func TestShardFnBatches(t *testing.T) {
	fn := &shardFn{Shards: 2}
	in := []schemas.Event{ev("a", 1, 1000, 1000), ev("b", 2, 2000, 2001), ev("a", 3, 900, 3000), ev("b", 1, 1000, 1000)}
	got := map[string][]schemas.Event{}
	oldest := map[string]beam.EventTime{}
	emit := func(ts beam.EventTime, shard string, b Batch) {
		d, err := decodeBatch(encodeBatch(b))
		if err != nil {
			t.Fatal(err)
		}
		got[shard] = append(got[shard], d.Events...)
		oldest[shard] = ts
	}
	for i, e := range in {
		fn.ProcessElement(beam.EventTime(10-i), e, emit)
	}
	fn.FinishBundle(emit)
	want := map[string][]schemas.Event{}
	for _, e := range in {
		shard := strconv.Itoa(shardOf(e.DeviceID, 2))
		want[shard] = append(want[shard], e)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("batches = %+v, want %+v", got, want)
	}
	sa, sb := strconv.Itoa(shardOf("a", 2)), strconv.Itoa(shardOf("b", 2))
	if sa == sb {
		t.Fatalf("devices a and b share shard %s; the test needs them apart", sa)
	}
	if oldest[sa] != 8 || oldest[sb] != 7 {
		t.Errorf("oldest stamps = %v, want shard of a at 8 and of b at 7", oldest)
	}
}

// The Batch coder gives back what it was given, and refuses cut or padded
// input with an error rather than a short batch.
func TestBatchCoder(t *testing.T) {
	in := Batch{Events: []schemas.Event{ev("a", 1, 1000, 1000), ev("b", 2, 2000, 2001), {DeviceID: "c", AckID: "ack", Buffered: true}}}
	data := encodeBatch(in)
	out, err := decodeBatch(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("decode(encode(b)) = %+v, want %+v", out, in)
	}
	if empty, err := decodeBatch(encodeBatch(Batch{})); err != nil || len(empty.Events) != 0 {
		t.Errorf("empty batch: got %+v, %v", empty, err)
	}
	for _, bad := range [][]byte{data[:len(data)-1], data[:1], append(slices.Clone(data), 0)} {
		if b, err := decodeBatch(bad); err == nil {
			t.Errorf("decodeBatch(%d bytes of %d) = %d events, want an error", len(bad), len(data), len(b.Events))
		}
	}
}
