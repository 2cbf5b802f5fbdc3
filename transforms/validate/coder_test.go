package validate

import (
	"bytes"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/coder"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/runtime/exec"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/typex"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"github.com/iotpipe/iotpipe/schemas"
)

func init() {
	register.Function1x1(eventFingerprint)
}

var eventType = reflect.TypeOf((*schemas.Event)(nil)).Elem()

// eventFingerprint prints every field; fmt sorts map keys, and prints NaN
// as NaN, so equal events print equally.
func eventFingerprint(e schemas.Event) string { return fmt.Sprintf("%#v", e) }

func TestEventCoderIsRegistered(t *testing.T) {
	c := beam.NewCoder(typex.New(eventType))
	if s := c.String(); !strings.Contains(s, "schemas.Event") || strings.HasPrefix(s, "R[") {
		t.Errorf("Beam codes schemas.Event with %s; want the custom coder of coder.go", s)
	}
}

// TestEventCoderAcrossStages sends events with the values a coder gets
// wrong (nil and empty maps, empty strings, extreme integers, NaN and
// infinities) through a reshuffle, a stage boundary on prism.
func TestEventCoderAcrossStages(t *testing.T) {
	events := []any{
		schemas.Event{},
		schemas.Event{DeviceID: "d", Metrics: schemas.MetricsOf(map[string]float64{})},
		schemas.Event{DeviceID: "d", TS: math.MaxInt64, Seq: math.MinInt64, PublishMillis: -1,
			Metrics: schemas.MetricsOf(map[string]float64{"nan": math.NaN(), "inf": math.Inf(1), "-inf": math.Inf(-1), "": 0})},
		schemas.Event{DeviceID: "dév", Registry: "r", Location: "l", Project: "p", SubFolder: "s", MessageID: "m", AckID: "a",
			DeviceClass: "thermostat", SchemaID: "iotpipe:telemetry/thermostat/1.1", Buffered: true, TS: 1, Seq: 2,
			Metrics: schemas.MetricsOf(map[string]float64{"temperature": 21.5}), Enrichment: schemas.Enrichment{Known: true, Site: "s", Location: "l", Owner: "o"}},
	}
	var want []any
	for _, e := range events {
		want = append(want, eventFingerprint(e.(schemas.Event)))
	}
	p, s := beam.NewPipelineWithRoot()
	got := beam.ParDo(s, eventFingerprint, beam.Reshuffle(s, beam.Create(s, events...)))
	passert.Equals(s, got, want...)
	ptest.RunAndValidate(t, p)
}

// BenchmarkEventCoder is one event encoded and decoded as Beam does between
// stages: the custom coder against the reflective row coder it replaces.
func BenchmarkEventCoder(b *testing.B) {
	e := schemas.Event{
		DeviceID: "dev-0001", Registry: "r", Location: "l", Project: "p", MessageID: "m123456",
		TS: 1_700_000_000_000, Seq: 123456, Metrics: schemas.MetricsOf(map[string]float64{"temperature": 21.5, "humidity": 40, "battery": 3.05}),
		PublishMillis: 1_700_000_000_123, DeviceClass: "generic", SchemaID: "iotpipe:telemetry/generic/1.0",
	}
	for _, c := range []struct {
		name  string
		coder *coder.Coder
	}{
		{"custom", coder.CoderFrom(coder.LookupCustomCoder(eventType))},
		{"row", &coder.Coder{Kind: coder.Row, T: typex.New(eventType)}},
	} {
		enc, dec := exec.MakeElementEncoder(c.coder), exec.MakeElementDecoder(c.coder)
		var buf bytes.Buffer
		if err := enc.Encode(&exec.FullValue{Elm: e}, &buf); err != nil {
			b.Fatal(err)
		}
		size := buf.Len()
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				if err := enc.Encode(&exec.FullValue{Elm: e}, &buf); err != nil {
					b.Fatal(err)
				}
				if _, err := dec.Decode(&buf); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(size), "encoded-bytes")
		})
	}
}
