// Package parse turns raw Pub/Sub messages into telemetry events; a message
// that cannot be parsed becomes a dead letter carrying the reason, never a crash.
package parse

import (
	"context"
	"reflect"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/log"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

func init() {
	register.DoFn4x0[context.Context, pubsubsource.Message, func(schemas.Event), func(schemas.DeadLetter)](&parseFn{})
	register.Emitter1[schemas.Event]()
	register.Emitter1[schemas.DeadLetter]()
	beam.RegisterType(reflect.TypeOf((*schemas.Event)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*schemas.DeadLetter)(nil)).Elem())
}

// Stage is the dead-letter stage name of this step.
const Stage = "parse"

// Parse splits messages (PCollection of pubsubsource.Message) into events
// (PCollection of schemas.Event) and dead letters (PCollection of schemas.DeadLetter).
func Parse(s beam.Scope, msgs beam.PCollection) (events, deadLetters beam.PCollection) {
	s = s.Scope("parse.Parse")
	return beam.ParDo2(s, &parseFn{}, msgs)
}

type parseFn struct {
	parsed beam.Counter
	bad    beam.Counter
}

func (fn *parseFn) Setup() {
	fn.parsed = beam.NewCounter("iotpipe.parse", "events_parsed")
	fn.bad = beam.NewCounter("iotpipe.parse", "events_dead_lettered")
}

func (fn *parseFn) ProcessElement(ctx context.Context, m pubsubsource.Message, events func(schemas.Event), dead func(schemas.DeadLetter)) {
	e, err := schemas.ParseEvent(m.Data, m.Attributes)
	if err != nil {
		fn.bad.Inc(ctx, 1)
		log.Warnf(ctx, "parse: message %s dead-lettered: %v", m.ID, err)
		dead(schemas.NewDeadLetter(Stage, m.Data, m.Attributes, m.ID, m.AckID, m.PublishMillis, time.Now().UnixMilli(), err))
		return
	}
	e.MessageID = m.ID
	e.PublishMillis = m.PublishMillis
	e.AckID = m.AckID
	fn.parsed.Inc(ctx, 1)
	events(e)
}
