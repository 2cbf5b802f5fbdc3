package aggregate

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/window"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/window/trigger"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/teststream"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/transforms/stats"

	"github.com/iotpipe/iotpipe/schemas"
)

func TestMain(m *testing.M) { ptest.Main(m) }

func init() {
	register.Function1x1(aggSummary)
	register.Function2x0(keyedOne)
	register.Emitter2[string, float64]()
	register.Function4x0(gbkPaneTiming)
	register.Function4x0(combinePaneTiming)
	register.Emitter1[string]()
}

// w0 is the start of a minute window; test times are offsets from it.
const w0 = int64(1700000040000)

const (
	sec    = int64(1000)
	minute = 60 * sec
)

// aggSummary renders an aggregate with times relative to w0, in seconds.
func aggSummary(a schemas.Aggregate) string {
	return fmt.Sprintf("%s/%s [%+d,%+d) n=%d min=%g max=%g sum=%g mean=%g last=%g@%+d late=%t buffered=%t",
		a.DeviceID, a.Metric, (a.WindowStart-w0)/sec, (a.WindowEnd-w0)/sec, a.Count, a.Min, a.Max, a.Sum, a.Mean, a.Last, (a.LastTS-w0)/sec, a.Late, a.Buffered)
}

func ev(device string, at, seq int64, metrics map[string]float64) schemas.Event {
	return schemas.Event{DeviceID: device, TS: w0 + at, Seq: seq, Metrics: schemas.MetricsOf(metrics), PublishMillis: w0 + at + 500}
}

func temp(v float64) map[string]float64 { return map[string]float64{"temperature": v} }

func buffered(e schemas.Event) schemas.Event {
	e.Buffered = true
	return e
}

// step is one TestStream action: add events published at time at (their
// element timestamp, as the Pub/Sub source gives it), or move the watermark.
type step struct {
	at        int64
	events    []schemas.Event
	watermark bool
}

func publish(at int64, events ...schemas.Event) step { return step{at: at, events: events} }
func watermark(at int64) step                        { return step{at: at, watermark: true} }

// streamAggregates runs PerMinute over a TestStream and returns the summaries of
// every pane, in the global window so passert sees all of them.
func streamAggregates(t *testing.T, s beam.Scope, cfg Config, steps []step) beam.PCollection {
	t.Helper()
	c := teststream.NewConfig()
	for _, st := range steps {
		var err error
		if st.watermark {
			err = c.AdvanceWatermark(w0 + st.at)
		} else {
			err = c.AddElementList(w0+st.at, st.events)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := c.AdvanceWatermarkToInfinity(); err != nil {
		t.Fatal(err)
	}
	aggs := PerMinute(s, teststream.Create(s, c), cfg)
	return global(s, beam.ParDo(s, aggSummary, aggs))
}

// global re-windows panes into the global window, where passert reads them all.
func global(s beam.Scope, col beam.PCollection) beam.PCollection {
	return beam.WindowInto(s, window.NewGlobalWindows(), col)
}

// TestPerMinuteStreaming pins down what PerMinute emits on prism for
// streaming input, including prism's own pane behaviour: accumulated late
// readings come out in one closing Late pane when the window expires
// (end + allowed lateness), and that closing pane repeats the totals even
// when nothing late arrived.
func TestPerMinuteStreaming(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		steps []step
		want  []string
	}{{
		name: "out of order within one window",
		steps: []step{
			publish(35*sec, ev("d1", 30*sec, 3, temp(3)), ev("d1", 10*sec, 1, temp(1))),
			publish(55*sec, ev("d1", 50*sec, 5, temp(5)), ev("d1", 20*sec, 2, temp(-2))),
			// Same ts as seq 5, lower seq, arriving last: must not become "last".
			publish(58*sec, ev("d1", 50*sec, 4, temp(4))),
			watermark(61 * sec),
		},
		want: []string{"d1/temperature [+0,+60) n=5 min=-2 max=5 sum=11 mean=2.2 last=5@+50 late=false buffered=false"},
	}, {
		name: "same device and metric in two windows, two metrics, two devices",
		steps: []step{
			publish(15*sec, ev("d1", 10*sec, 1, map[string]float64{"temperature": 20, "humidity": 40})),
			publish(16*sec, ev("d2", 11*sec, 1, temp(30))),
			publish(75*sec, ev("d1", 70*sec, 2, map[string]float64{"temperature": 22, "humidity": 41})),
			watermark(200 * sec),
		},
		want: []string{
			"d1/temperature [+0,+60) n=1 min=20 max=20 sum=20 mean=20 last=20@+10 late=false buffered=false",
			"d1/humidity [+0,+60) n=1 min=40 max=40 sum=40 mean=40 last=40@+10 late=false buffered=false",
			"d2/temperature [+0,+60) n=1 min=30 max=30 sum=30 mean=30 last=30@+11 late=false buffered=false",
			"d1/temperature [+60,+120) n=1 min=22 max=22 sum=22 mean=22 last=22@+70 late=false buffered=false",
			"d1/humidity [+60,+120) n=1 min=41 max=41 sum=41 mean=41 last=41@+70 late=false buffered=false",
		},
	}, {
		name: "late reading without allowed lateness is dropped",
		steps: []step{
			publish(35*sec, ev("d1", 10*sec, 1, temp(1)), ev("d1", 30*sec, 3, temp(3))),
			watermark(61 * sec),
			publish(90*sec, ev("d1", 20*sec, 2, temp(100))),
			watermark(120 * sec),
		},
		want: []string{"d1/temperature [+0,+60) n=2 min=1 max=3 sum=4 mean=2 last=3@+30 late=false buffered=false"},
	}, {
		name: "late reading within allowed lateness updates the window in a Late pane",
		cfg:  Config{AllowedLateness: 10 * time.Minute},
		steps: []step{
			publish(35*sec, ev("d1", 10*sec, 1, temp(1)), ev("d1", 30*sec, 3, temp(3))),
			watermark(61 * sec),
			publish(5*minute, ev("d1", 20*sec, 2, temp(100))),
			watermark(20 * minute),
		},
		want: []string{
			"d1/temperature [+0,+60) n=2 min=1 max=3 sum=4 mean=2 last=3@+30 late=false buffered=false",
			"d1/temperature [+0,+60) n=3 min=1 max=100 sum=104 mean=34.666666666666664 last=3@+30 late=true buffered=false",
		},
	}, {
		// Prism fires one closing pane at expiry with both late readings;
		// a runner firing per late reading would add an n=3 pane.
		name: "two late readings at different times: prism emits one closing pane",
		cfg:  Config{AllowedLateness: 10 * time.Minute},
		steps: []step{
			publish(35*sec, ev("d1", 10*sec, 1, temp(1)), ev("d1", 30*sec, 3, temp(3))),
			watermark(61 * sec),
			publish(2*minute, ev("d1", 20*sec, 2, temp(2))),
			watermark(3 * minute),
			publish(4*minute, ev("d1", 40*sec, 4, temp(4))),
			watermark(5 * minute),
		},
		want: []string{
			"d1/temperature [+0,+60) n=2 min=1 max=3 sum=4 mean=2 last=3@+30 late=false buffered=false",
			"d1/temperature [+0,+60) n=4 min=1 max=4 sum=10 mean=2.5 last=4@+40 late=true buffered=false",
		},
	}, {
		name: "reading beyond allowed lateness is dropped; prism still closes the window with a repeated Late pane",
		cfg:  Config{AllowedLateness: time.Minute},
		steps: []step{
			publish(35*sec, ev("d1", 10*sec, 1, temp(1)), ev("d1", 30*sec, 3, temp(3))),
			watermark(61 * sec),
			watermark(2*minute + 1*sec), // end + lateness passed: the window expired
			publish(3*minute, ev("d1", 20*sec, 2, temp(100))),
			watermark(4 * minute),
		},
		want: []string{
			"d1/temperature [+0,+60) n=2 min=1 max=3 sum=4 mean=2 last=3@+30 late=false buffered=false",
			"d1/temperature [+0,+60) n=2 min=1 max=3 sum=4 mean=2 last=3@+30 late=true buffered=false",
		},
	}, {
		// Aggregates read the readings before dedupe: a copy of a reading
		// already counted (a redelivery after the window fired, a replay)
		// must leave the totals as they were.
		name: "repeats on time and late count once",
		cfg:  Config{AllowedLateness: 10 * time.Minute},
		steps: []step{
			publish(35*sec, ev("d1", 10*sec, 1, temp(1)), ev("d1", 30*sec, 3, temp(3)), ev("d1", 10*sec, 1, temp(1))),
			watermark(61 * sec),
			publish(2*minute, ev("d1", 30*sec, 3, temp(3)), buffered(ev("d1", 10*sec, 1, temp(1)))),
			watermark(20 * minute),
		},
		want: []string{
			"d1/temperature [+0,+60) n=2 min=1 max=3 sum=4 mean=2 last=3@+30 late=false buffered=false",
			"d1/temperature [+0,+60) n=2 min=1 max=3 sum=4 mean=2 last=3@+30 late=true buffered=false",
		},
	}, {
		name: "buffered replay marks the pane buffered",
		cfg:  Config{AllowedLateness: 10 * time.Minute},
		steps: []step{
			publish(35*sec, ev("d1", 10*sec, 1, temp(1))),
			watermark(61 * sec),
			// An edge agent replays two readings: one on time for the next
			// window, one late for the first.
			publish(100*sec, buffered(ev("d1", 90*sec, 7, temp(9))), buffered(ev("d1", 20*sec, 2, temp(2)))),
			watermark(130 * sec),
		},
		want: []string{
			"d1/temperature [+0,+60) n=1 min=1 max=1 sum=1 mean=1 last=1@+10 late=false buffered=false",
			"d1/temperature [+0,+60) n=2 min=1 max=2 sum=3 mean=1.5 last=2@+20 late=true buffered=true",
			"d1/temperature [+60,+120) n=1 min=9 max=9 sum=9 mean=9 last=9@+90 late=false buffered=true",
			"d1/temperature [+60,+120) n=1 min=9 max=9 sum=9 mean=9 last=9@+90 late=true buffered=true",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, s := beam.NewPipelineWithRoot()
			passert.Equals(s, streamAggregates(t, s, tt.cfg, tt.steps), toAny(tt.want)...)
			if err := ptest.Run(p); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// batchEvents covers out-of-order data, two windows, two metrics, two
// devices, a buffered reading and repeats.
func batchEvents() []schemas.Event {
	return []schemas.Event{
		ev("d1", 30*sec, 3, temp(3)),
		ev("d1", 10*sec, 1, map[string]float64{"temperature": 1, "humidity": 50}),
		ev("d1", 50*sec, 5, temp(5)),
		ev("d1", 50*sec, 4, temp(4)),
		ev("d1", 70*sec, 6, temp(-6)),
		buffered(ev("d2", 15*sec, 1, temp(20))),
		ev("d2", 16*sec, 2, temp(21)),
		// Repeats of readings above (a retry, a redelivery) count once.
		ev("d1", 30*sec, 3, temp(3)),
		ev("d2", 16*sec, 2, temp(21)),
	}
}

func TestPerMinuteBatch(t *testing.T) {
	want := []string{
		"d1/temperature [+0,+60) n=4 min=1 max=5 sum=13 mean=3.25 last=5@+50 late=false buffered=false",
		"d1/humidity [+0,+60) n=1 min=50 max=50 sum=50 mean=50 last=50@+10 late=false buffered=false",
		"d1/temperature [+60,+120) n=1 min=-6 max=-6 sum=-6 mean=-6 last=-6@+70 late=false buffered=false",
		"d2/temperature [+0,+60) n=2 min=20 max=21 sum=41 mean=20.5 last=21@+16 late=false buffered=true",
	}

	// The plain-Go Summary is the oracle the Beam transform must match.
	sum := NewSummary(time.Minute)
	for _, e := range batchEvents() {
		sum.Add(e)
	}
	var got []string
	for _, a := range sum.Aggregates() {
		got = append(got, aggSummary(a))
	}
	if fmt.Sprint(got) != fmt.Sprint([]string{want[1], want[0], want[2], want[3]}) {
		t.Errorf("Summary =\n%q\nwant\n%q", got, want)
	}

	p, s := beam.NewPipelineWithRoot()
	aggs := PerMinute(s, beam.CreateList(s, batchEvents()), Config{})
	passert.Equals(s, global(s, beam.ParDo(s, aggSummary, aggs)), toAny(want)...)
	res, err := ptest.RunWithMetrics(p)
	if err != nil {
		t.Fatal(err)
	}
	if on, late := counter(res, "panes_on_time"), counter(res, "panes_late"); on != 4 || late != 0 {
		t.Errorf("panes on time / late = %d / %d, want 4 / 0", on, late)
	}
}

// TestPerMinuteBatchWithLateness records that on prism a bounded run with
// allowed lateness emits every window twice: on time, then a closing Late
// pane with the same totals. Backfills should use zero lateness.
func TestPerMinuteBatchWithLateness(t *testing.T) {
	p, s := beam.NewPipelineWithRoot()
	events := beam.Create(s, ev("d1", 10*sec, 1, temp(1)), ev("d1", 30*sec, 3, temp(3)))
	aggs := PerMinute(s, events, Config{AllowedLateness: time.Hour})
	passert.Equals(s, global(s, beam.ParDo(s, aggSummary, aggs)),
		"d1/temperature [+0,+60) n=2 min=1 max=3 sum=4 mean=2 last=3@+30 late=false buffered=false",
		"d1/temperature [+0,+60) n=2 min=1 max=3 sum=4 mean=2 last=3@+30 late=true buffered=false",
	)
	if err := ptest.Run(p); err != nil {
		t.Fatal(err)
	}
}

func keyedOne(v float64, emit func(string, float64)) { emit("k", v) }

func gbkPaneTiming(pn beam.PaneInfo, _ string, values func(*float64) bool, emit func(string)) {
	n := 0
	var v float64
	for values(&v) {
		n++
	}
	emit(fmt.Sprintf("gbk %s n=%d", pn.Timing, n))
}

func combinePaneTiming(pn beam.PaneInfo, _ string, sum float64, emit func(string)) {
	emit(fmt.Sprintf("combine %s sum=%g", pn.Timing, sum))
}

// TestCombinePerKeyLosesPaneInfo records why PerMinute groups by key instead
// of calling beam.CombinePerKey: after a GroupByKey a DoFn sees the pane
// timing (on time, then late), but after a combine it sees the zero PaneInfo
// (timing "early", index 0) for every pane, because the Go SDK's combine
// nodes (core/runtime/exec/combine.go) emit values without the pane.
func TestCombinePerKeyLosesPaneInfo(t *testing.T) {
	c := teststream.NewConfig()
	for _, err := range []error{
		c.AddElements(w0+5*sec, 1.0, 2.0),
		c.AdvanceWatermark(w0 + 61*sec),
		c.AddElements(w0+5*sec, 4.0), // late, within the lateness
		c.AdvanceWatermarkToInfinity(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	p, s := beam.NewPipelineWithRoot()
	kv := beam.ParDo(s, keyedOne, teststream.Create(s, c))
	windowed := beam.WindowInto(s, window.NewFixedWindows(time.Minute), kv,
		beam.Trigger(trigger.Default()), beam.AllowedLateness(time.Hour), beam.PanesAccumulate())
	gbk := beam.ParDo(s, gbkPaneTiming, beam.GroupByKey(s, windowed))
	combined := beam.ParDo(s, combinePaneTiming, stats.SumPerKey(s, windowed))
	out := beam.WindowInto(s, window.NewGlobalWindows(), beam.Flatten(s, gbk, combined))
	passert.Equals(s, out, "gbk ontime n=2", "gbk late n=3", "combine early sum=3", "combine early sum=7")
	if err := ptest.Run(p); err != nil {
		t.Fatal(err)
	}
}

func TestAccumulator(t *testing.T) {
	rs := []Reading{{TS: 30, Seq: 3, Value: 3}, {TS: 10, Seq: 1, Value: 1}, {TS: 50, Seq: 5, Value: 5}, {TS: 50, Seq: 4, Value: 4, Buffered: true}, {TS: 20, Seq: 2, Value: -2}}
	want := schemas.Aggregate{Count: 5, Min: -2, Max: 5, Sum: 11, Mean: 2.2, Last: 5, LastTS: 50, Buffered: true}
	var all Accumulator
	for _, r := range rs {
		all.Add(r)
	}
	if got := all.Result(); got != want {
		t.Errorf("Add over all = %+v, want %+v", got, want)
	}
	// Any split into partials merges to the same result, empties included,
	// and so does any split whose partials both saw some of the readings
	// (a redelivery): a reading counts once.
	for cut := 0; cut <= len(rs); cut++ {
		for overlap := 0; overlap <= cut; overlap++ {
			var a, b Accumulator
			for _, r := range rs[:cut] {
				a.Add(r)
			}
			for _, r := range rs[cut-overlap:] {
				b.Add(r)
			}
			ab, ba := a, b
			ab.Readings, ba.Readings = slices.Clone(a.Readings), slices.Clone(b.Readings)
			ab.Merge(b)
			ba.Merge(a)
			if ab.Result() != want || ba.Result() != want {
				t.Errorf("cut %d overlap %d: a.Merge(b) = %+v, b.Merge(a) = %+v, want %+v", cut, overlap, ab.Result(), ba.Result(), want)
			}
		}
	}
	// Of two copies of one seq, the same one stays whichever came first.
	first, second := Reading{TS: 10, Seq: 7, Value: 1}, Reading{TS: 10, Seq: 7, Value: 2, Buffered: true}
	var x, y Accumulator
	x.Add(first)
	x.Add(second)
	y.Add(second)
	y.Add(first)
	if gx, gy := x.Result(), y.Result(); gx != gy || gx.Count != 1 || gx.Sum != 1 || gx.Buffered {
		t.Errorf("copies of seq 7: %+v and %+v, want the same, counting the unbuffered copy once", gx, gy)
	}
	if got := (Accumulator{}).Result(); got != (schemas.Aggregate{}) {
		t.Errorf("empty Result = %+v, want zero", got)
	}
}

// Partials of one device and window with different metrics merge metric
// by metric, a reading both saw counting once, in either order.
func TestPartialMerge(t *testing.T) {
	var x, y Partial
	x.Add(ev("d1", 1*sec, 1, map[string]float64{"temperature": 1, "humidity": 50}))
	x.Add(ev("d1", 2*sec, 2, temp(2)))
	y.Add(ev("d1", 2*sec, 2, temp(2)))
	y.Add(ev("d1", 3*sec, 3, map[string]float64{"battery": 3.1, "temperature": 3}))
	xy, yx := Partial{}, Partial{}
	xy.Merge(x)
	xy.Merge(y)
	yx.Merge(y)
	yx.Merge(x)
	var got []string
	for _, a := range xy.appendAggregates(nil, "d1", w0, w0+minute) {
		got = append(got, aggSummary(a))
	}
	want := []string{
		"d1/battery [+0,+60) n=1 min=3.1 max=3.1 sum=3.1 mean=3.1 last=3.1@+3 late=false buffered=false",
		"d1/humidity [+0,+60) n=1 min=50 max=50 sum=50 mean=50 last=50@+1 late=false buffered=false",
		"d1/temperature [+0,+60) n=3 min=1 max=3 sum=6 mean=2 last=3@+3 late=false buffered=false",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("merged =\n%q\nwant\n%q", got, want)
	}
	if !reflect.DeepEqual(xy, yx) {
		t.Errorf("merge order matters: %+v against %+v", xy, yx)
	}
}

func TestWindowStart(t *testing.T) {
	for _, tt := range []struct{ ts, size, want int64 }{
		{w0, minute, w0}, {w0 + 59999, minute, w0}, {w0 + 60000, minute, w0 + minute}, {-1, minute, -minute}, {0, minute, 0},
	} {
		if got := windowStart(tt.ts, tt.size); got != tt.want {
			t.Errorf("windowStart(%d, %d) = %d, want %d", tt.ts, tt.size, got, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tt := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{}.withDefaults(), true},
		{Config{Window: 5 * time.Minute, AllowedLateness: time.Hour}, true},
		{Config{Window: -time.Minute}, false},
		{Config{Window: time.Microsecond}, false},
		{Config{Window: time.Minute, AllowedLateness: -time.Second}, false},
	} {
		if err := tt.cfg.validate(); (err == nil) != tt.ok {
			t.Errorf("%+v.validate() = %v, want ok=%t", tt.cfg, err, tt.ok)
		}
	}
}

func counter(res beam.PipelineResult, name string) int64 {
	var n int64
	for _, c := range res.Metrics().AllMetrics().Counters() {
		if c.Namespace() == "iotpipe.aggregate" && c.Name() == name {
			n += c.Result()
		}
	}
	return n
}

// BenchmarkSummaryAdd is the plain-Go aggregation kernel: 10,000 devices
// reporting three metrics once a second, folded into per-minute
// accumulators; closed windows are dropped as a sink would flush them.
func BenchmarkSummaryAdd(b *testing.B) {
	const devices = 10000
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
	}
	metrics := map[string]float64{"temperature": 21.5, "humidity": 50, "pressure": 1013}
	sum := NewSummary(time.Minute)
	lastWindow := int64(-1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e := schemas.Event{DeviceID: ids[i%devices], TS: w0 + int64(i/devices)*sec, Seq: int64(i / devices), Metrics: schemas.MetricsOf(metrics)}
		if w := windowStart(e.TS, minute); w != lastWindow {
			clear(sum.partials)
			lastWindow = w
		}
		sum.Add(e)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAccumulatorAdd is the per-reading fold alone.
func BenchmarkAccumulatorAdd(b *testing.B) {
	var a Accumulator
	for i := 0; i < b.N; i++ {
		a.Add(Reading{TS: int64(i), Seq: int64(i), Value: float64(i & 63)})
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "readings/s")
	if len(a.Readings) != b.N {
		b.Fatal("lost readings")
	}
}
