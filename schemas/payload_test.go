package schemas

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestEventFromPayload(t *testing.T) {
	attrs := map[string]string{AttrDeviceID: "d1", AttrRegistryID: "r", AttrRegistryRegion: "l", AttrProjectID: "p", AttrSubFolder: "x", AttrDeviceClass: "thermostat"}
	tests := []struct {
		name    string
		data    string
		attrs   map[string]string
		want    Event
		wantErr string
	}{
		{name: "good", data: `{"ts":1700000000000,"seq":1,"metrics":{"temperature":21.5}}`, attrs: attrs,
			want: Event{DeviceID: "d1", Registry: "r", Location: "l", Project: "p", SubFolder: "x", TS: 1700000000000, Seq: 1, Metrics: MetricsOf(map[string]float64{"temperature": 21.5})}},
		{name: "buffered", data: `{"ts":1700000000000,"seq":2,"metrics":{"t":1},"buffered":true}`, attrs: attrs,
			want: Event{DeviceID: "d1", Registry: "r", Location: "l", Project: "p", SubFolder: "x", TS: 1700000000000, Seq: 2, Metrics: MetricsOf(map[string]float64{"t": 1}), Buffered: true}},
		{name: "largest exact seq", data: `{"ts":1700000000000,"seq":9007199254740991,"metrics":{"t":1}}`, attrs: attrs,
			want: Event{DeviceID: "d1", Registry: "r", Location: "l", Project: "p", SubFolder: "x", TS: 1700000000000, Seq: 9007199254740991, Metrics: MetricsOf(map[string]float64{"t": 1})}},
		{name: "not json", data: `hello`, attrs: attrs, wantErr: "payload is not JSON"},
		{name: "array", data: `[1,2]`, attrs: attrs, wantErr: "payload is a JSON array, not an object"},
		{name: "null", data: `null`, attrs: attrs, wantErr: "payload is a JSON null, not an object"},
		{name: "trailing", data: `{"ts":1,"seq":1,"metrics":{"t":1}} {}`, attrs: attrs, wantErr: "payload is not JSON"},
		{name: "trailing brace", data: `{"ts":1,"seq":1,"metrics":{"t":1}} }`, attrs: attrs, wantErr: "payload is not JSON"},
		{name: "number overflow", data: `{"ts":1,"seq":1,"metrics":{"t":1e400}}`, attrs: attrs, wantErr: "payload is not JSON"},
		{name: "oversized", data: `{"pad":"` + strings.Repeat("x", MaxTelemetryBytes) + `"}`, attrs: attrs, wantErr: "telemetry limit"},
		{name: "no ts", data: `{"seq":1,"metrics":{"t":1}}`, attrs: attrs, wantErr: `no "ts"`},
		{name: "zero ts", data: `{"ts":0,"seq":1,"metrics":{"t":1}}`, attrs: attrs, wantErr: "ts is 0; want an integer in [1, 9007199254740991]"},
		{name: "fractional ts", data: `{"ts":1.5,"seq":1,"metrics":{"t":1}}`, attrs: attrs, wantErr: "ts is 1.5"},
		{name: "string ts", data: `{"ts":"1","seq":1,"metrics":{"t":1}}`, attrs: attrs, wantErr: "ts is a string, not an integer"},
		{name: "no seq", data: `{"ts":1,"metrics":{"t":1}}`, attrs: attrs, wantErr: `no "seq"`},
		{name: "negative seq", data: `{"ts":1,"seq":-1,"metrics":{"t":1}}`, attrs: attrs, wantErr: "seq is -1"},
		{name: "seq beyond 2^53", data: `{"ts":1,"seq":9007199254740993,"metrics":{"t":1}}`, attrs: attrs, wantErr: "seq is 9.007199254740992e+15"},
		{name: "no metrics", data: `{"ts":1,"seq":1,"metrics":{}}`, attrs: attrs, wantErr: "no metrics object"},
		{name: "metrics not an object", data: `{"ts":1,"seq":1,"metrics":[1]}`, attrs: attrs, wantErr: "no metrics object"},
		{name: "string metric", data: `{"ts":1,"seq":1,"metrics":{"t":"hot"}}`, attrs: attrs, wantErr: `metric "t" is a string, not a number`},
		{name: "empty metric name", data: `{"ts":1,"seq":1,"metrics":{"":1}}`, attrs: attrs, wantErr: "empty name"},
		{name: "buffered not bool", data: `{"ts":1,"seq":1,"metrics":{"t":1},"buffered":1}`, attrs: attrs, wantErr: "buffered is a number"},
		{name: "no device attribute", data: `{"ts":1,"seq":1,"metrics":{"t":1}}`, attrs: map[string]string{}, wantErr: "no deviceId attribute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, err := DecodePayload([]byte(tt.data))
			var e Event
			if err == nil {
				e, err = EventFromPayload(doc, tt.attrs)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("payload %.60q: error = %v, want one containing %q", tt.data, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("payload %q: %v", tt.data, err)
			}
			// EventFromPayload leaves the class to the validator.
			if !reflect.DeepEqual(e, tt.want) {
				t.Errorf("EventFromPayload(%q) =\n%+v\nwant\n%+v", tt.data, e, tt.want)
			}
		})
	}
}

var payloadSamples = []string{
	`{"ts":1700000000000,"seq":42,"metrics":{"temperature":21.5,"humidity":40,"battery":3.07}}`,
	`{"ts":1700000000000,"seq":0,"metrics":{"kwh":1.25e3,"v":-0.5},"buffered":true}`,
	` { "ts" : 1 , "seq" : 2 , "metrics" : { "t" : 1E+2 } , "note" : null, "nested": {"a": {"b": {}}} } `,
	`{"ts":1,"seq":1,"metrics":{"t":1},"ts":2}`,
	`{"ts":1,"seq":1,"metrics":{"é✓":1}}`,
	`{"ts":1,"seq":1,"metrics":{"t":[1,2]}}`,
	`{"ts":"x\"y","seq":1,"metrics":{}}`,
	`{"ts":01}`,
	`{"ts":1.}`,
	`{"ts":1e999}`,
	`{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}`,
	`[1]`,
	`{"ts":1,}`,
	"{\"t\":\"\xff\"}",
}

// Wherever the hand-written reader answers, encoding/json reads the same
// document; wherever encoding/json refuses a payload, DecodePayload does.
func FuzzDecodePayload(f *testing.F) {
	for _, s := range payloadSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var want any
		jsonErr := json.Unmarshal(data, &want)
		if got, ok := decodePayloadObject(data, nil); ok {
			if jsonErr != nil {
				t.Fatalf("decodePayloadObject read %q, which encoding/json refuses: %v", data, jsonErr)
			}
			if !reflect.DeepEqual(any(got), want) {
				t.Fatalf("decodePayloadObject(%q) = %#v, encoding/json %#v", data, got, want)
			}
		}
		fresh, freshErr := DecodePayload(data)
		if jsonErr != nil && freshErr == nil {
			t.Fatalf("DecodePayload(%q) accepted what encoding/json refuses: %v", data, jsonErr)
		}
		// A decoder that read other payloads before reads this one as a
		// fresh one does, and again after it.
		var dec PayloadDecoder
		for _, other := range payloadSamples {
			dec.Decode([]byte(other))
		}
		for range 2 {
			got, err := dec.Decode(data)
			if (err == nil) != (freshErr == nil) || !reflect.DeepEqual(got, fresh) {
				t.Fatalf("PayloadDecoder.Decode(%q) after others = %#v, %v; DecodePayload gives %#v, %v", data, got, err, fresh, freshErr)
			}
		}
	})
}

func BenchmarkDecodePayload(b *testing.B) {
	data := []byte(payloadSamples[0])
	b.Run("iotpipe", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodePayload(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("iotpipe-reused", func(b *testing.B) {
		var dec PayloadDecoder
		b.ReportAllocs()
		for b.Loop() {
			if _, err := dec.Decode(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var doc any
			if err := json.Unmarshal(data, &doc); err != nil {
				b.Fatal(err)
			}
		}
	})
}
