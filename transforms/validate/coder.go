package validate

import (
	"reflect"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
)

// Events cross every stage boundary of the graph (dedupe's grouping, the
// sinks, enrich, aggregate), where Beam would otherwise code them with its
// reflective row coder. This package makes the events, so registering here
// covers every pipeline that has any. The functions get generated callers
// first (register.Function*), so the coder calls them without reflection.
func init() {
	register.Function1x1(encodeEvent)
	register.Function1x2(decodeEvent)
	beam.RegisterCoder(reflect.TypeOf((*schemas.Event)(nil)).Elem(), encodeEvent, decodeEvent)
}

func encodeEvent(e schemas.Event) []byte { return schemas.AppendEventBinary(nil, e) }

func decodeEvent(data []byte) (schemas.Event, error) { return schemas.DecodeEventBinary(data) }
