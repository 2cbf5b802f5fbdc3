// Package enrich joins telemetry events with the static reference data
// (Dataset B: site, location, owner, class and thresholds per device).
package enrich

import (
	"context"
	"fmt"
	"reflect"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
)

func init() {
	register.DoFn2x2[context.Context, schemas.Event, schemas.Event, error](&joinFn{})
	beam.RegisterType(reflect.TypeOf((*schemas.Event)(nil)).Elem())
}

// Enrich joins events (a PCollection of schemas.Event) with the reference
// data at referencePath (see LoadReference; "" means none). Each event gets
// its Enrichment, and its DeviceClass from the reference row when it had
// none. Events of devices missing from the reference data are kept with
// Enrichment.Known false and counted as iotpipe.enrich/unknown_devices.
//
// Every worker loads the file once, in Setup, into a map. The join takes no
// side input on purpose: prism schedules a stage that reads a side input
// only when the watermark moves, which stalls a stage fed by a backlog.
func Enrich(s beam.Scope, events beam.PCollection, referencePath string) beam.PCollection {
	s = s.Scope("enrich.Enrich")
	return beam.ParDo(s, &joinFn{ReferencePath: referencePath}, events)
}

// LoadIndex loads the reference data at path into an Index; "" gives an
// empty one.
func LoadIndex(ctx context.Context, path string) (Index, error) {
	if path == "" {
		return Index{}, nil
	}
	refs, err := LoadReference(ctx, path)
	if err != nil {
		return nil, err
	}
	return NewIndex(refs)
}

type joinFn struct {
	ReferencePath string

	index   Index
	unknown beam.Counter
}

func (fn *joinFn) Setup(ctx context.Context) error {
	fn.unknown = beam.NewCounter("iotpipe.enrich", "unknown_devices")
	ix, err := LoadIndex(ctx, fn.ReferencePath)
	if err != nil {
		return fmt.Errorf("enrich: %w", err)
	}
	fn.index = ix
	return nil
}

func (fn *joinFn) ProcessElement(ctx context.Context, e schemas.Event) (schemas.Event, error) {
	e = fn.index.Join(e)
	if !e.Enrichment.Known {
		fn.unknown.Inc(ctx, 1)
	}
	return e, nil
}
