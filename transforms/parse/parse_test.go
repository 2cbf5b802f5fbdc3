package parse

import (
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

func TestMain(m *testing.M) { ptest.Main(m) }

func init() {
	register.Function1x1(eventKey)
	register.Function1x1(deadLetterSummary)
}

func eventKey(e schemas.Event) string {
	return schemas.TelemetryKey(e.DeviceID, e.TS, e.Seq) + "/" + e.MessageID
}

func deadLetterSummary(d schemas.DeadLetter) string {
	return d.MessageID + ":" + d.Stage + ":" + d.PayloadString
}

func TestParseSplitsEventsAndDeadLetters(t *testing.T) {
	attrs := map[string]string{schemas.AttrDeviceID: "d1", schemas.AttrRegistryID: "r"}
	p, s := beam.NewPipelineWithRoot()
	msgs := beam.Create(s,
		pubsubsource.Message{ID: "1", Data: []byte(`{"ts":1700000000000,"seq":1,"metrics":{"temperature":21.5}}`), Attributes: attrs, PublishMillis: 1700000000100},
		pubsubsource.Message{ID: "2", Data: []byte(`not json`), Attributes: attrs, PublishMillis: 1700000000200},
		pubsubsource.Message{ID: "3", Data: []byte(`{"ts":1700000001000,"seq":2,"metrics":{"temperature":22}}`), Attributes: map[string]string{}, PublishMillis: 1700000000300},
	)
	events, dead := Parse(s, msgs)
	passert.Equals(s, beam.ParDo(s, eventKey, events),
		"d1#1700000000000#1/1")
	passert.Equals(s, beam.ParDo(s, deadLetterSummary, dead),
		"2:parse:not json", "3:parse:"+`{"ts":1700000001000,"seq":2,"metrics":{"temperature":22}}`)
	if err := ptest.Run(p); err != nil {
		t.Fatal(err)
	}
}
