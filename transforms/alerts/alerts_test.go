package alerts

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/metrics"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/teststream"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/enrich"
)

func TestMain(m *testing.M) { ptest.Main(m) }

func init() {
	register.Function1x1(alertSummary)
}

func alertSummary(a schemas.Alert) string {
	return fmt.Sprintf("%s#%d %s=%g %s %g site=%s owner=%s", a.DeviceID, a.Seq, a.Metric, a.Value, a.Kind, a.Threshold, a.Site, a.Owner)
}

const t0 = int64(1700000000000)

func refs() []schemas.Reference {
	return []schemas.Reference{
		{DeviceID: "d1", Site: "plant-a", Owner: "ops", Thresholds: map[string]schemas.Threshold{
			"temperature": {HasMin: true, Min: -10, HasMax: true, Max: 40},
			"humidity":    {HasMax: true, Max: 80},
			"pressure":    {HasMin: true, Min: 900},
		}},
		{DeviceID: "d2", Site: "plant-b", Owner: "facilities"}, // known, no thresholds
	}
}

// reading is a real-time event of device published 2 s after its event time.
func reading(device string, seq int64, metrics map[string]float64) schemas.Event {
	return schemas.Event{DeviceID: device, Seq: seq, TS: t0, PublishMillis: t0 + 2000, Metrics: schemas.MetricsOf(metrics)}
}

func TestCheck(t *testing.T) {
	ix, err := enrich.NewIndex(refs())
	if err != nil {
		t.Fatal(err)
	}
	c := Checker{Index: ix, MaxAge: 5 * time.Minute}
	alert := func(metric string, v float64, kind string, th float64) schemas.Alert {
		return schemas.Alert{DeviceID: "d1", Metric: metric, Value: v, TS: t0, Seq: 1, Kind: kind, Threshold: th, Site: "plant-a", Owner: "ops"}
	}
	stale := reading("d1", 1, map[string]float64{"temperature": 99})
	stale.PublishMillis = t0 + (5 * time.Minute).Milliseconds() + 1
	justInTime := reading("d1", 1, map[string]float64{"temperature": 99})
	justInTime.PublishMillis = t0 + (5 * time.Minute).Milliseconds()
	buffered := reading("d1", 1, map[string]float64{"temperature": 99})
	buffered.Buffered = true
	noPublish := reading("d1", 1, map[string]float64{"temperature": 99})
	noPublish.PublishMillis = 0
	future := reading("d1", 1, map[string]float64{"temperature": 99})
	future.PublishMillis = t0 - 60000 // device clock ahead of Pub/Sub: still real-time

	tests := []struct {
		name string
		e    schemas.Event
		want []schemas.Alert
		skip string
	}{
		{name: "above max", e: reading("d1", 1, map[string]float64{"temperature": 40.5}), want: []schemas.Alert{alert("temperature", 40.5, AboveMax, 40)}},
		{name: "below min", e: reading("d1", 1, map[string]float64{"temperature": -11}), want: []schemas.Alert{alert("temperature", -11, BelowMin, -10)}},
		{name: "on the bounds", e: reading("d1", 1, map[string]float64{"temperature": 40, "pressure": 900})},
		{name: "within", e: reading("d1", 1, map[string]float64{"temperature": 20, "humidity": 50})},
		{name: "max only, low value", e: reading("d1", 1, map[string]float64{"humidity": -1000})},
		{name: "min only, high value", e: reading("d1", 1, map[string]float64{"pressure": 1e9})},
		{name: "metric without threshold", e: reading("d1", 1, map[string]float64{"voltage": 1e6})},
		{name: "several, ordered by metric", e: reading("d1", 1, map[string]float64{"temperature": 50, "humidity": 90, "pressure": 1, "voltage": 3}),
			want: []schemas.Alert{alert("humidity", 90, AboveMax, 80), alert("pressure", 1, BelowMin, 900), alert("temperature", 50, AboveMax, 40)}},
		{name: "known device without thresholds", e: reading("d2", 1, map[string]float64{"temperature": 1e6})},
		{name: "unknown device", e: reading("ghost", 1, map[string]float64{"temperature": 1e6}), skip: SkipUnknownDevice},
		{name: "buffered", e: buffered, skip: SkipBuffered},
		{name: "stale", e: stale, skip: SkipStale},
		{name: "exactly MaxAge old", e: justInTime, want: []schemas.Alert{alert("temperature", 99, AboveMax, 40)}},
		{name: "event time after publish time", e: future, want: []schemas.Alert{alert("temperature", 99, AboveMax, 40)}},
		{name: "no publish time", e: noPublish, skip: SkipNoPublishTime},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []schemas.Alert{{DeviceID: "earlier"}}
			got, skip := c.Check(prefix, tt.e)
			if skip != tt.skip {
				t.Errorf("skip = %q, want %q", skip, tt.skip)
			}
			if !reflect.DeepEqual(got[0], prefix[0]) {
				t.Errorf("Check overwrote dst: %+v", got[0])
			}
			if got := got[1:]; !(len(got) == 0 && len(tt.want) == 0) && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("alerts =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestThresholds(t *testing.T) {
	p, s := beam.NewPipelineWithRoot()
	b := reading("d1", 5, map[string]float64{"temperature": 99})
	b.Buffered = true
	old := reading("d1", 6, map[string]float64{"temperature": 99})
	old.TS -= (10 * time.Minute).Milliseconds()
	events := beam.Create(s,
		reading("d1", 1, map[string]float64{"temperature": 45, "humidity": 85}),
		reading("d1", 2, map[string]float64{"temperature": -20}),
		reading("d1", 3, map[string]float64{"temperature": 20, "voltage": 1e6}),
		reading("d2", 4, map[string]float64{"temperature": 1e6}),
		reading("ghost", 7, map[string]float64{"temperature": 1e6}),
		b, old,
	)
	r := refsFile(t)
	// As in the pipeline: enrich first, then alert.
	alerts := Thresholds(s, enrich.Enrich(s, events, r), r, Config{})
	passert.Equals(s, beam.ParDo(s, alertSummary, alerts),
		"d1#1 temperature=45 above_max 40 site=plant-a owner=ops",
		"d1#1 humidity=85 above_max 80 site=plant-a owner=ops",
		"d1#2 temperature=-20 below_min -10 site=plant-a owner=ops",
	)
	res, err := ptest.RunWithMetrics(p)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"alerts_raised": 3, "skipped_buffered": 1, "skipped_stale": 1, "skipped_unknown_device": 1, "skipped_no_publish_time": 0}
	for name, n := range want {
		if got := counter(res, name); got != n {
			t.Errorf("iotpipe.alerts/%s = %d, want %d", name, got, n)
		}
	}
}

// TestThresholdsStreaming runs the enrich → alert path on an unbounded
// TestStream, the shape of the streaming job.
func TestThresholdsStreaming(t *testing.T) {
	c := teststream.NewConfig()
	for _, err := range []error{
		c.AddElements(t0+2000, reading("d1", 1, map[string]float64{"temperature": 45})),
		c.AdvanceWatermark(t0 + 60000),
		c.AddElements(t0+62000, reading("d1", 2, map[string]float64{"humidity": 81}), reading("ghost", 3, map[string]float64{"temperature": 99})),
		c.AdvanceWatermarkToInfinity(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	p, s := beam.NewPipelineWithRoot()
	events := teststream.Create(s, c) // a TestStream must be the pipeline's first transform
	r := refsFile(t)
	alerts := Thresholds(s, enrich.Enrich(s, events, r), r, Config{})
	passert.Equals(s, beam.ParDo(s, alertSummary, alerts),
		"d1#1 temperature=45 above_max 40 site=plant-a owner=ops",
		"d1#2 humidity=81 above_max 80 site=plant-a owner=ops",
	)
	if err := ptest.Run(p); err != nil {
		t.Fatal(err)
	}
}

func counter(res beam.PipelineResult, name string) int64 {
	var n int64
	for _, c := range res.Metrics().Query(func(r metrics.SingleResult) bool {
		return r.Namespace() == "iotpipe.alerts" && r.Name() == name
	}).Counters() {
		n += c.Result()
	}
	return n
}

// BenchmarkCheck is the plain-Go alert kernel per event: index lookup, the
// real-time gates and three thresholds, with one event in 50 out of bounds.
func BenchmarkCheck(b *testing.B) {
	const devices = 10000
	rs := make([]schemas.Reference, devices)
	for i := range rs {
		rs[i] = schemas.Reference{DeviceID: fmt.Sprintf("dev-%05d", i), Site: "s", Owner: "o", Thresholds: map[string]schemas.Threshold{
			"temperature": {HasMin: true, Min: -10, HasMax: true, Max: 40},
			"humidity":    {HasMax: true, Max: 80},
			"pressure":    {HasMin: true, Min: 900},
		}}
	}
	ix, err := enrich.NewIndex(rs)
	if err != nil {
		b.Fatal(err)
	}
	events := make([]schemas.Event, 4096)
	for i := range events {
		temp := 20.0
		if i%50 == 0 {
			temp = 45
		}
		events[i] = reading(rs[(i*7919)%devices].DeviceID, int64(i), map[string]float64{"temperature": temp, "humidity": 50, "pressure": 1013})
	}
	c := Checker{Index: ix, MaxAge: DefaultMaxAge}
	var buf []schemas.Alert
	raised := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		buf, _ = c.Check(buf[:0], events[i%len(events)])
		raised += len(buf)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if b.N >= 50 && raised == 0 {
		b.Fatal("no alert raised")
	}
}

// refsFile writes refs() as an NDJSON reference file and returns its path.
func refsFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "refs.ndjson")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := enrich.WriteNDJSON(f, refs()); err != nil {
		t.Fatal(err)
	}
	return path
}
