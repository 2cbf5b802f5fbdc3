// Package validate turns raw Pub/Sub messages into telemetry events checked
// against their device class's JSON Schema; any other message becomes a dead letter saying why.
package validate

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
	register.DoFn4x0[context.Context, pubsubsource.Message, func(schemas.Event), func(schemas.DeadLetter)](&validateFn{})
	register.Emitter1[schemas.Event]()
	register.Emitter1[schemas.DeadLetter]()
	beam.RegisterType(reflect.TypeOf((*schemas.Event)(nil)).Elem())
	beam.RegisterType(reflect.TypeOf((*schemas.DeadLetter)(nil)).Elem())
}

// Stage is the dead-letter stage name of this step.
const Stage = "validate"

// Namespace is the namespace of this step's counters: one per Reason, and
// events_valid.
const Namespace = "iotpipe.validate"

// Validate splits msgs (PCollection of pubsubsource.Message) into events
// (PCollection of schemas.Event, with DeviceClass and SchemaID set) and dead
// letters (PCollection of schemas.DeadLetter, stage "validate", errorMessage
// "reason: detail"). See Checker.Check for the checks and their order.
func Validate(s beam.Scope, msgs beam.PCollection, cfg Config) (events, deadLetters beam.PCollection) {
	s = s.Scope("validate.Validate")
	cfg = cfg.withDefaults()
	return beam.ParDo2(s, &validateFn{
		MaxFutureMillis: cfg.MaxFuture.Milliseconds(),
		MaxPastMillis:   cfg.MaxPast.Milliseconds(),
	}, msgs)
}

// logEvery bounds the warnings a flood of bad messages writes; the counters
// and the dead letters carry every one.
const logEvery = time.Minute

type validateFn struct {
	MaxFutureMillis int64
	MaxPastMillis   int64

	checker  *Checker
	valid    beam.Counter
	rejected map[string]beam.Counter
	lastLog  time.Time
}

func (fn *validateFn) Setup() error {
	var err error
	fn.checker, err = NewChecker(Config{
		MaxFuture: time.Duration(fn.MaxFutureMillis) * time.Millisecond,
		MaxPast:   time.Duration(fn.MaxPastMillis) * time.Millisecond,
	})
	if err != nil {
		return err
	}
	fn.valid = beam.NewCounter(Namespace, "events_valid")
	fn.rejected = make(map[string]beam.Counter, len(Reasons))
	for _, r := range Reasons {
		fn.rejected[r] = beam.NewCounter(Namespace, r)
	}
	return nil
}

func (fn *validateFn) ProcessElement(ctx context.Context, m pubsubsource.Message, events func(schemas.Event), dead func(schemas.DeadLetter)) {
	e, rej := fn.checker.Check(m)
	if rej == nil {
		fn.valid.Inc(ctx, 1)
		events(e)
		return
	}
	fn.rejected[rej.Reason].Inc(ctx, 1)
	if now := time.Now(); now.Sub(fn.lastLog) >= logEvery {
		fn.lastLog = now
		log.Warnf(ctx, "validate: message %s dead-lettered (further ones logged at most every %v): %v", m.ID, logEvery, rej)
	}
	d := schemas.NewDeadLetter(Stage, m.Data, m.Attributes, m.ID, m.AckID, m.PublishMillis, time.Now().UnixMilli(), rej)
	d.SchemaID = rej.SchemaID
	dead(d)
}
