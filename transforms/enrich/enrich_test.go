package enrich

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/metrics"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"github.com/iotpipe/iotpipe/schemas"
)

func TestMain(m *testing.M) { ptest.Main(m) }

func init() {
	register.Function1x1(enrichedSummary)
}

func enrichedSummary(e schemas.Event) string {
	x := e.Enrichment
	return fmt.Sprintf("%s#%d known=%t site=%s loc=%s owner=%s class=%s", e.DeviceID, e.Seq, x.Known, x.Site, x.Location, x.Owner, e.DeviceClass)
}

func testRefs() []schemas.Reference {
	return []schemas.Reference{
		{DeviceID: "d1", Site: "plant-a", Location: "hall-1", DeviceClass: "thermostat", Owner: "ops",
			Thresholds: map[string]schemas.Threshold{"temperature": {HasMin: true, Min: -10, HasMax: true, Max: 40}}},
		{DeviceID: "d2", Site: "plant-b", Location: "roof", DeviceClass: "weather", Owner: "facilities"},
	}
}

func TestEnrichKnownAndUnknownDevices(t *testing.T) {
	p, s := beam.NewPipelineWithRoot()
	events := beam.Create(s,
		schemas.Event{DeviceID: "d1", Seq: 1, TS: 1700000000000, Metrics: schemas.MetricsOf(map[string]float64{"temperature": 21})},
		// The event's own class wins over the reference row's.
		schemas.Event{DeviceID: "d2", Seq: 2, TS: 1700000000000, Metrics: schemas.MetricsOf(map[string]float64{"wind": 3}), DeviceClass: "anemometer"},
		schemas.Event{DeviceID: "ghost", Seq: 3, TS: 1700000000000, Metrics: schemas.MetricsOf(map[string]float64{"t": 1})},
		schemas.Event{DeviceID: "ghost", Seq: 4, TS: 1700000000000, Metrics: schemas.MetricsOf(map[string]float64{"t": 1}), DeviceClass: "x"},
	)
	refs := writeRefs(t, testRefs())
	passert.Equals(s, beam.ParDo(s, enrichedSummary, Enrich(s, events, refs)),
		"d1#1 known=true site=plant-a loc=hall-1 owner=ops class=thermostat",
		"d2#2 known=true site=plant-b loc=roof owner=facilities class=anemometer",
		"ghost#3 known=false site= loc= owner= class=",
		"ghost#4 known=false site= loc= owner= class=x",
	)
	res, err := ptest.RunWithMetrics(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := counter(res, "iotpipe.enrich", "unknown_devices"); got != 2 {
		t.Errorf("unknown_devices = %d, want 2", got)
	}
}

func TestReferenceFromFile(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "ref.csv")
	empty := filepath.Join(dir, "empty.ndjson")
	if err := os.WriteFile(full, []byte(goodCSV), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, s := beam.NewPipelineWithRoot()
	events := beam.Create(s,
		schemas.Event{DeviceID: "d3", Seq: 1, TS: 1, Metrics: schemas.MetricsOf(map[string]float64{"t": 1})},
		schemas.Event{DeviceID: "d4", Seq: 2, TS: 1, Metrics: schemas.MetricsOf(map[string]float64{"t": 1})},
	)
	passert.Equals(s, beam.ParDo(s, enrichedSummary, Enrich(s, events, full)),
		"d3#1 known=true site=plant, with comma loc=x owner=z class=y",
		"d4#2 known=false site= loc= owner= class=",
	)
	// A reference file without rows is valid: every device is unknown.
	passert.Equals(s, beam.ParDo(s, enrichedSummary, Enrich(s.Scope("Empty"), events, empty)),
		"d3#1 known=false site= loc= owner= class=",
		"d4#2 known=false site= loc= owner= class=",
	)
	if err := ptest.Run(p); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadIndex(ctx, filepath.Join(dir, "missing.csv")); err == nil {
		t.Error("LoadIndex of a missing file succeeded")
	}
}

func TestEnrichFailsOnDuplicateReferenceRows(t *testing.T) {
	p, s := beam.NewPipelineWithRoot()
	events := beam.Create(s, schemas.Event{DeviceID: "d1", Seq: 1, TS: 1, Metrics: schemas.MetricsOf(map[string]float64{"t": 1})})
	refs := writeRefs(t, []schemas.Reference{{DeviceID: "d1"}, {DeviceID: "d1", Site: "other"}})
	Enrich(s, events, refs)
	if err := ptest.Run(p); err == nil {
		t.Fatal("pipeline with a duplicated reference row succeeded; want an error")
	}
}

func TestIndexJoin(t *testing.T) {
	ix, err := NewIndex(testRefs())
	if err != nil {
		t.Fatal(err)
	}
	got := ix.Join(schemas.Event{DeviceID: "d1", Enrichment: schemas.Enrichment{Known: true, Site: "stale"}})
	if want := (schemas.Enrichment{Known: true, Site: "plant-a", Location: "hall-1", Owner: "ops"}); got.Enrichment != want || got.DeviceClass != "thermostat" {
		t.Errorf("Join(d1) = %+v class %q, want %+v class thermostat", got.Enrichment, got.DeviceClass, want)
	}
	// A stale enrichment on an unknown device must not survive the join.
	got = ix.Join(schemas.Event{DeviceID: "nope", Enrichment: schemas.Enrichment{Known: true, Site: "stale"}})
	if got.Enrichment != (schemas.Enrichment{}) {
		t.Errorf("Join(unknown) enrichment = %+v, want zero", got.Enrichment)
	}
	if _, err := NewIndex([]schemas.Reference{{DeviceID: "a"}, {DeviceID: "a"}}); err == nil {
		t.Error("NewIndex with a duplicate device succeeded")
	}
}

// counter sums a user counter over all steps of a pipeline result.
func counter(res beam.PipelineResult, ns, name string) int64 {
	var n int64
	for _, c := range res.Metrics().Query(func(r metrics.SingleResult) bool {
		return r.Namespace() == ns && r.Name() == name
	}).Counters() {
		n += c.Result()
	}
	return n
}

func BenchmarkIndexJoin(b *testing.B) {
	const devices = 10000
	refs := make([]schemas.Reference, devices)
	for i := range refs {
		refs[i] = schemas.Reference{DeviceID: fmt.Sprintf("dev-%05d", i), Site: "site", Location: "loc", Owner: "owner", DeviceClass: "thermostat"}
	}
	ix, err := NewIndex(refs)
	if err != nil {
		b.Fatal(err)
	}
	events := make([]schemas.Event, 1024)
	for i := range events {
		// One in eight events comes from a device the reference data lacks.
		id := refs[(i*7919)%devices].DeviceID
		if i%8 == 0 {
			id = fmt.Sprintf("ghost-%d", i)
		}
		events[i] = schemas.Event{DeviceID: id, TS: int64(i), Seq: int64(i), Metrics: schemas.MetricsOf(map[string]float64{"temperature": 20})}
	}
	b.ReportAllocs()
	b.ResetTimer()
	known := 0
	for i := 0; i < b.N; i++ {
		if ix.Join(events[i%len(events)]).Enrichment.Known {
			known++
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	if b.N > 8 && known == 0 {
		b.Fatal("no event joined")
	}
}

// writeRefs writes refs as an NDJSON reference file and returns its path.
func writeRefs(t *testing.T, refs []schemas.Reference) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "refs.ndjson")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := WriteNDJSON(f, refs); err != nil {
		t.Fatal(err)
	}
	return path
}
