package validate

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

const publish = int64(1_700_000_000_000) // 2023-11-14T22:13:20Z

func attrs(class string) map[string]string {
	a := map[string]string{schemas.AttrDeviceID: "d1", schemas.AttrRegistryID: "reg", schemas.AttrRegistryRegion: "europe-west1", schemas.AttrProjectID: "proj", schemas.AttrSubFolder: "sf"}
	if class != "" {
		a[schemas.AttrDeviceClass] = class
	}
	return a
}

func payload(ts int64, seq int, metrics string) []byte {
	return []byte(fmt.Sprintf(`{"ts":%d,"seq":%d,"metrics":%s}`, ts, seq, metrics))
}

// checkCase is one message and what Check should make of it; the pipeline
// test reuses these cases.
type checkCase struct {
	name       string
	msg        pubsubsource.Message
	wantReason string // "" for a valid event
	wantSchema string
	wantErr    string // substring of the rejection's message
}

func checkCases() []checkCase {
	ts := publish - 1000
	msg := func(id string, data []byte, a map[string]string) pubsubsource.Message {
		return pubsubsource.Message{ID: id, Data: data, Attributes: a, PublishMillis: publish, AckID: "ack-" + id}
	}
	return []checkCase{
		{name: "generic without class attribute", msg: msg("g1", payload(ts, 1, `{"rssi":-67,"battery":3.1}`), attrs("")),
			wantSchema: "iotpipe:telemetry/generic/1.0"},
		{name: "thermostat 1.0 payload", msg: msg("t1", payload(ts, 2, `{"temperature":21.5,"humidity":40}`), attrs("thermostat")),
			wantSchema: "iotpipe:telemetry/thermostat/1.1"},
		{name: "thermostat 1.1 payload buffered a week ago", msg: msg("t2", []byte(fmt.Sprintf(`{"ts":%d,"seq":3,"metrics":{"temperature":19,"setpoint":21},"buffered":true}`, publish-7*24*3600*1000)), attrs("thermostat")),
			wantSchema: "iotpipe:telemetry/thermostat/1.1"},
		{name: "meter", msg: msg("m1", payload(ts, 4, `{"power_w":1200,"energy_wh":5e6}`), attrs("meter")),
			wantSchema: "iotpipe:telemetry/meter/1.0"},
		{name: "ts just inside future skew", msg: msg("f0", payload(publish+10*60*1000, 5, `{"x":1}`), attrs("")),
			wantSchema: "iotpipe:telemetry/generic/1.0"},

		{name: "oversized", msg: msg("big", []byte(`{"ts":1,"seq":1,"metrics":{"x":1},"pad":"`+strings.Repeat("x", schemas.MaxTelemetryBytes)+`"}`), attrs("")),
			wantReason: ReasonOversized, wantErr: "over the 262144-byte telemetry limit"},
		{name: "no device id", msg: msg("nodev", payload(ts, 1, `{"x":1}`), map[string]string{}),
			wantReason: ReasonNoDeviceID, wantErr: "message has no deviceId attribute"},
		{name: "unknown class", msg: msg("toaster", payload(ts, 1, `{"x":1}`), attrs("toaster")),
			wantReason: ReasonUnknownClass, wantErr: `unknown device class "toaster": known classes are generic, meter, thermostat`},
		{name: "not json", msg: msg("notjson", []byte(`temperature=21`), attrs("thermostat")),
			wantReason: ReasonMalformed, wantErr: "payload is not JSON"},
		{name: "json array", msg: msg("array", []byte(`[1,2]`), attrs("")),
			wantReason: ReasonMalformed, wantErr: "payload is a JSON array, not an object"},
		{name: "empty metric name", msg: msg("emptyname", payload(ts, 1, `{"":1}`), attrs("")),
			wantReason: ReasonMalformed, wantSchema: "iotpipe:telemetry/generic/1.0", wantErr: "metric with an empty name"},
		{name: "schema: temperature out of range", msg: msg("hot", payload(ts, 1, `{"temperature":151}`), attrs("thermostat")),
			wantReason: ReasonSchemaViolation, wantSchema: "iotpipe:telemetry/thermostat/1.1", wantErr: "/metrics/temperature: maximum: got 151, want 150"},
		{name: "schema: missing required metric", msg: msg("nopower", payload(ts, 1, `{"energy_wh":1}`), attrs("meter")),
			wantReason: ReasonSchemaViolation, wantSchema: "iotpipe:telemetry/meter/1.0", wantErr: "/metrics: required: missing property 'power_w'"},
		{name: "schema: no ts", msg: msg("nots", []byte(`{"seq":1,"metrics":{"x":1}}`), attrs("")),
			wantReason: ReasonSchemaViolation, wantSchema: "iotpipe:telemetry/generic/1.0", wantErr: "/: required: missing property 'ts'"},
		{name: "schema: string metric", msg: msg("strmetric", payload(ts, 1, `{"x":"hot"}`), attrs("")),
			wantReason: ReasonSchemaViolation, wantSchema: "iotpipe:telemetry/generic/1.0", wantErr: "/metrics/x: type: got string, want number"},
		{name: "ts in future", msg: msg("future", payload(publish+10*60*1000+1, 1, `{"x":1}`), attrs("")),
			wantReason: ReasonTSInFuture, wantSchema: "iotpipe:telemetry/generic/1.0", wantErr: "is 10m0.001s after the publish time 2023-11-14T22:13:20.000Z; at most 10m0s allowed"},
		{name: "ts too old", msg: msg("old", payload(publish-31*24*3600*1000, 1, `{"x":1}`), attrs("")),
			wantReason: ReasonTSTooOld, wantSchema: "iotpipe:telemetry/generic/1.0", wantErr: "is 744h0m0s before the publish time"},
		{name: "ts far in future", msg: msg("far", payload(schemas.MaxExactInteger, 1, `{"x":1}`), attrs("")),
			wantReason: ReasonTSInFuture, wantSchema: "iotpipe:telemetry/generic/1.0", wantErr: "days after the publish time"},
	}
}

func TestCheck(t *testing.T) {
	c, err := NewChecker(Config{MaxPast: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]bool{}
	for _, tt := range checkCases() {
		t.Run(tt.name, func(t *testing.T) {
			e, rej := c.Check(tt.msg)
			if tt.wantReason == "" {
				if rej != nil {
					t.Fatalf("Check(%s) refused a good message: %v", tt.msg.ID, rej)
				}
				a := tt.msg.Attributes
				if e.DeviceID != "d1" || e.Registry != a[schemas.AttrRegistryID] || e.Location != a[schemas.AttrRegistryRegion] ||
					e.Project != a[schemas.AttrProjectID] || e.SubFolder != a[schemas.AttrSubFolder] {
					t.Errorf("event %+v does not carry the message attributes %v", e, a)
				}
				if e.MessageID != tt.msg.ID || e.AckID != tt.msg.AckID || e.PublishMillis != publish || e.SchemaID != tt.wantSchema || e.TS <= 0 || len(e.Metrics) == 0 {
					t.Errorf("event %+v: want message id %s, ack id %s, publish %d, schema %s, ts and metrics", e, tt.msg.ID, tt.msg.AckID, publish, tt.wantSchema)
				}
				if want := a[schemas.AttrDeviceClass]; e.DeviceClass != want && !(want == "" && e.DeviceClass == schemas.DefaultDeviceClass) {
					t.Errorf("event class %q, want %q", e.DeviceClass, want)
				}
				return
			}
			reasons[tt.wantReason] = true
			if rej == nil {
				t.Fatalf("Check(%s) accepted %+v, want a %s rejection", tt.msg.ID, e, tt.wantReason)
			}
			if rej.Reason != tt.wantReason || rej.SchemaID != tt.wantSchema || !strings.Contains(rej.Error(), tt.wantErr) {
				t.Errorf("Check(%s) = %s (schema %q): %v\nwant %s (schema %q) with %q", tt.msg.ID, rej.Reason, rej.SchemaID, rej, tt.wantReason, tt.wantSchema, tt.wantErr)
			}
			if !strings.HasPrefix(rej.Error(), tt.wantReason+": ") {
				t.Errorf("rejection message %q should start with its reason", rej)
			}
		})
	}
	for _, r := range Reasons {
		if !reasons[r] {
			t.Errorf("no case for reason %s", r)
		}
	}
}

func TestCheckSkewIsConfigurable(t *testing.T) {
	c, err := NewChecker(Config{MaxFuture: time.Second, MaxPast: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ts         int64
		wantReason string
	}{
		{publish + 1000, ""},
		{publish + 1001, ReasonTSInFuture},
		{publish - 3600_000, ""},
		{publish - 3600_001, ReasonTSTooOld},
	}
	for _, tt := range tests {
		_, rej := c.Check(pubsubsource.Message{ID: "x", Data: payload(tt.ts, 1, `{"x":1}`), Attributes: attrs(""), PublishMillis: publish})
		got := ""
		if rej != nil {
			got = rej.Reason
		}
		if got != tt.wantReason {
			t.Errorf("ts = publish%+d ms: reason %q (%v), want %q", tt.ts-publish, got, rej, tt.wantReason)
		}
	}
	// Without a publish time there is no reference; the event passes.
	if _, rej := c.Check(pubsubsource.Message{ID: "x", Data: payload(1, 1, `{"x":1}`), Attributes: attrs("")}); rej != nil {
		t.Errorf("message without publish time: %v", rej)
	}
}

// TestCheckConcurrently backs the promise that a Checker is safe for
// concurrent use; it means most under -race.
func TestCheckConcurrently(t *testing.T) {
	c, err := NewChecker(Config{MaxPast: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for _, tt := range checkCases() {
				if _, rej := c.Check(tt.msg); (rej == nil) != (tt.wantReason == "") {
					t.Errorf("%s: rejection %v, want reason %q", tt.name, rej, tt.wantReason)
				}
			}
		})
	}
	wg.Wait()
}

// FuzzValidate feeds arbitrary payloads, classes and publish times to the
// core: it must never panic, and whatever it accepts must hold the
// invariants later stages rely on.
func FuzzValidate(f *testing.F) {
	for _, tt := range checkCases() {
		if len(tt.msg.Data) < 1024 {
			f.Add(tt.msg.Data, tt.msg.Attributes[schemas.AttrDeviceClass], tt.msg.PublishMillis)
		}
	}
	f.Add([]byte(`{"ts":1e-999999,"seq":1e999999,"metrics":{"x":1E+400}}`), "generic", publish)
	f.Add([]byte(`{"ts":1.0,"seq":0.0,"metrics":{"temperature":-50,"humidity":0,"setpoint":150},"buffered":false}`), "thermostat", int64(2))
	f.Add([]byte(`{"ts":1,"seq":1,"metrics":{"\u0000":1,"\ud800":2}}`), "", int64(math.MaxInt64))
	f.Add([]byte(`{"ts":1,"seq":1,"metrics":{"x":1},"metrics":{"x":{}}}`), "", int64(-1))
	f.Add([]byte(strings.Repeat("[", 20000)), "meter", publish)
	c, err := NewChecker(Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, class string, publishMillis int64) {
		a := map[string]string{schemas.AttrDeviceID: "d1", schemas.AttrDeviceClass: class}
		e, rej := c.Check(pubsubsource.Message{ID: "m", Data: data, Attributes: a, PublishMillis: publishMillis})
		if rej != nil {
			if !slices.Contains(Reasons, rej.Reason) || rej.Err == nil {
				t.Fatalf("rejection with unknown reason %q or no error: %+v", rej.Reason, rej)
			}
			return
		}
		if e.DeviceID != "d1" || e.SchemaID == "" || e.TS <= 0 || e.TS > schemas.MaxExactInteger || e.Seq < 0 || len(e.Metrics) == 0 {
			t.Fatalf("accepted %q as an event that breaks the invariants: %+v", data, e)
		}
		for i, m := range e.Metrics {
			if m.Name == "" || math.IsNaN(m.Value) || math.IsInf(m.Value, 0) {
				t.Fatalf("accepted %q with metric %q = %v", data, m.Name, m.Value)
			}
			if i > 0 && e.Metrics[i-1].Name >= m.Name {
				t.Fatalf("accepted %q with metrics out of order: %v", data, e.Metrics)
			}
		}
		if publishMillis > 0 && e.TS-publishMillis > DefaultMaxFuture.Milliseconds() {
			t.Fatalf("accepted ts %d outside the skew around publish time %d", e.TS, publishMillis)
		}
	})
}

// benchPayloads is one typical payload per class.
var benchPayloads = []struct{ class, data string }{
	{"generic", `{"ts":1699999999000,"seq":123456,"metrics":{"temperature":21.5,"humidity":40.25,"rssi":-67,"battery":3.05}}`},
	{"thermostat", `{"ts":1699999999000,"seq":123456,"metrics":{"temperature":21.5,"humidity":40.25,"setpoint":22}}`},
	{"meter", `{"ts":1699999999000,"seq":123456,"metrics":{"power_w":1234.5,"energy_wh":98765432}}`},
}

// BenchmarkValidate is the whole per-message cost of the core: decode once,
// schema validation, event construction, skew check.
func BenchmarkValidate(b *testing.B) {
	c, err := NewChecker(Config{})
	if err != nil {
		b.Fatal(err)
	}
	for _, p := range benchPayloads {
		b.Run(p.class, func(b *testing.B) {
			m := pubsubsource.Message{ID: "m", Data: []byte(p.data), Attributes: attrs(p.class), PublishMillis: publish}
			b.ReportAllocs()
			b.SetBytes(int64(len(m.Data)))
			for b.Loop() {
				if _, rej := c.Check(m); rej != nil {
					b.Fatal(rej)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkDecodeOnly is Validate's path without the schema: the generic
// decode and schemas.EventFromPayload. Validate minus this is the schema's cost.
func BenchmarkDecodeOnly(b *testing.B) {
	for _, p := range benchPayloads {
		b.Run(p.class, func(b *testing.B) {
			data, a := []byte(p.data), attrs(p.class)
			var dec schemas.PayloadDecoder // as the Checker decodes
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				doc, err := dec.Decode(data)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := schemas.EventFromPayload(doc, a); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
