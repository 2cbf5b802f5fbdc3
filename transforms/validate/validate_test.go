package validate

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/metrics"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

func TestMain(m *testing.M) { ptest.Main(m) }

func init() {
	register.Function1x1(eventSummary)
	register.Function1x1(deadLetterSummary)
	register.Function1x1(deadLetterRecord)
}

// eventSummary is what an event must carry beyond its metrics: identity,
// provenance, class and schema.
func eventSummary(e schemas.Event) string {
	return strings.Join([]string{e.MessageID, e.AckID, e.DeviceID, e.DeviceClass, e.SchemaID}, "|")
}

// deadLetterSummary keeps the reason, the first word of the error message.
func deadLetterSummary(d schemas.DeadLetter) string {
	reason, _, _ := strings.Cut(d.ErrorMessage, ": ")
	return strings.Join([]string{d.MessageID, d.AckID, d.Stage, reason, d.SchemaID}, "|")
}

func TestValidateSplitsEventsAndDeadLetters(t *testing.T) {
	var msgs []any
	var wantEvents, wantDead []any
	wantCounts := map[string]int64{}
	for _, c := range checkCases() {
		msgs = append(msgs, c.msg)
		if c.wantReason == "" {
			class := c.msg.Attributes[schemas.AttrDeviceClass]
			if class == "" {
				class = schemas.DefaultDeviceClass
			}
			wantEvents = append(wantEvents, strings.Join([]string{c.msg.ID, c.msg.AckID, "d1", class, c.wantSchema}, "|"))
			wantCounts["events_valid"]++
			continue
		}
		wantDead = append(wantDead, strings.Join([]string{c.msg.ID, c.msg.AckID, Stage, c.wantReason, c.wantSchema}, "|"))
		wantCounts[c.wantReason]++
	}

	p, s := beam.NewPipelineWithRoot()
	events, dead := Validate(s, beam.Create(s, msgs...), Config{MaxPast: 30 * 24 * time.Hour})
	passert.Equals(s, beam.ParDo(s, eventSummary, events), wantEvents...)
	passert.Equals(s, beam.ParDo(s, deadLetterSummary, dead), wantDead...)
	res, err := ptest.RunWithMetrics(p)
	if err != nil {
		t.Fatal(err)
	}

	got := map[string]int64{}
	for _, c := range res.Metrics().Query(func(r metrics.SingleResult) bool { return r.Namespace() == Namespace }).Counters() {
		got[c.Name()] += c.Result()
	}
	for name, want := range wantCounts {
		if got[name] != want {
			t.Errorf("counter %s/%s = %d, want %d", Namespace, name, got[name], want)
		}
	}
	for name, n := range got {
		if _, ok := wantCounts[name]; !ok && n != 0 {
			t.Errorf("counter %s/%s = %d, want 0", Namespace, name, n)
		}
	}
}

// TestDeadLetterKeepsTheMessage checks the dead-letter record itself: the
// payload, attributes and provenance of the refused message, and the reason.
func TestDeadLetterKeepsTheMessage(t *testing.T) {
	msg := pubsubsource.Message{ID: "hot", Data: payload(publish-1000, 1, `{"temperature":151}`), Attributes: attrs("thermostat"), PublishMillis: publish}
	p, s := beam.NewPipelineWithRoot()
	_, dead := Validate(s, beam.Create(s, msg), Config{})
	passert.Equals(s, beam.ParDo(s, deadLetterRecord, dead),
		"hot|"+string(msg.Data)+"|thermostat|1700000000000|validate|iotpipe:telemetry/thermostat/1.1|"+
			`schema_violation: device "d1" of class thermostat: payload does not match schema iotpipe:telemetry/thermostat/1.1: /metrics/temperature: maximum: got 151, want 150`)
	ptest.RunAndValidate(t, p)
}

func deadLetterRecord(d schemas.DeadLetter) string {
	ok := string(d.PayloadBytes) == d.PayloadString && d.TimestampMillis > 0
	if !ok {
		return "payload bytes and text differ, or no dead-letter time"
	}
	return strings.Join([]string{d.MessageID, d.PayloadString, d.Attributes[schemas.AttrDeviceClass],
		strconv.FormatInt(d.PublishMillis, 10), d.Stage, d.SchemaID, d.ErrorMessage}, "|")
}
