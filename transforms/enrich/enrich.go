// Package enrich joins telemetry events with the static reference data
// (Dataset B: site, location, owner, class and thresholds per device).
package enrich

import (
	"context"
	"fmt"
	"reflect"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/window"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
)

func init() {
	register.DoFn3x2[context.Context, schemas.Event, func(*schemas.Reference) bool, schemas.Event, error](&joinFn{})
	register.Iter1[schemas.Reference]()
	beam.RegisterType(reflect.TypeOf((*schemas.Event)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*schemas.Reference)(nil)).Elem())
}

// Reference loads the reference data at path (see LoadReference) now, while
// the pipeline is being built, and returns it as a PCollection of
// schemas.Reference in the global window. The rows travel inside the job
// graph, so a changed file takes effect when the job is restarted or updated,
// and the file must stay well under the runner's job-graph size limit
// (Dataflow: about 10 MB, i.e. some tens of thousands of devices).
func Reference(ctx context.Context, s beam.Scope, path string) (beam.PCollection, error) {
	refs, err := LoadReference(ctx, path)
	if err != nil {
		return beam.PCollection{}, err
	}
	s = s.Scope("enrich.Reference")
	return beam.CreateList(s, refs), nil
}

// Enrich joins events (a PCollection of schemas.Event) with refs (a
// PCollection of schemas.Reference in the global window, such as Reference
// returns), read as a side input. Each event gets its Enrichment, and its
// DeviceClass from the reference row when it had none. Events of devices
// missing from the reference data are kept with Enrichment.Known false and
// counted as iotpipe.enrich/unknown_devices.
//
// The side input is read into a map once per DoFn instance, not per element
// or bundle; that is correct because refs is static and globally windowed.
func Enrich(s beam.Scope, events, refs beam.PCollection) beam.PCollection {
	s = s.Scope("enrich.Enrich")
	RequireGlobal(refs, "enrich.Enrich")
	return beam.ParDo(s, &joinFn{}, events, beam.SideInput{Input: refs})
}

// RequireGlobal panics at construction time when refs is not in the global
// window: DoFns that cache the reference side input once per instance would
// otherwise serve one window's rows to every window.
func RequireGlobal(refs beam.PCollection, transform string) {
	if ws := refs.WindowingStrategy(); ws != nil && ws.Fn.Kind != window.GlobalWindows {
		panic(fmt.Sprintf("%s: reference data must be in the global window, is in %v", transform, ws.Fn))
	}
}

type joinFn struct {
	index   Index
	unknown beam.Counter
}

func (fn *joinFn) Setup() {
	fn.unknown = beam.NewCounter("iotpipe.enrich", "unknown_devices")
}

func (fn *joinFn) ProcessElement(ctx context.Context, e schemas.Event, refs func(*schemas.Reference) bool) (schemas.Event, error) {
	if fn.index == nil {
		ix, err := ReadIndex(refs)
		if err != nil {
			return schemas.Event{}, fmt.Errorf("enrich: %w", err)
		}
		fn.index = ix
	}
	e = fn.index.Join(e)
	if !e.Enrichment.Known {
		fn.unknown.Inc(ctx, 1)
	}
	return e, nil
}
