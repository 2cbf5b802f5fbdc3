package schemas

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

func TestLoadSchemas(t *testing.T) {
	r, err := LoadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Classes(), []string{"generic", "meter", "thermostat"}; !slices.Equal(got, want) {
		t.Errorf("Classes() = %v, want %v", got, want)
	}
	for class, want := range map[string]string{
		"generic":    "iotpipe:telemetry/generic/1.0",
		"thermostat": "iotpipe:telemetry/thermostat/1.1",
		"meter":      "iotpipe:telemetry/meter/1.0",
	} {
		if got, ok := r.Latest(class); !ok || got != want {
			t.Errorf("Latest(%q) = %q, %v; want %q", class, got, ok, want)
		}
	}
	if got, want := r.Versions("thermostat"), []string{"iotpipe:telemetry/thermostat/1.0", "iotpipe:telemetry/thermostat/1.1"}; !slices.Equal(got, want) {
		t.Errorf("Versions(thermostat) = %v, want %v", got, want)
	}
	if id, ok := r.Latest("toaster"); ok || id != "" {
		t.Errorf("Latest(toaster) = %q, %v; want no schema", id, ok)
	}
}

// TestExamplesValidateAgainstLaterMinors is the promise the versioning rule
// makes, checked on each schema's "examples": a payload valid under a
// version stays valid under every later minor of the same major.
func TestExamplesValidateAgainstLaterMinors(t *testing.T) {
	r, err := LoadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	for _, class := range r.Classes() {
		vs := r.versions[class]
		for i, v := range vs {
			var doc struct{ Examples []json.RawMessage }
			if err := json.Unmarshal(v.raw, &doc); err != nil {
				t.Fatal(err)
			}
			if len(doc.Examples) == 0 {
				t.Errorf("%s has no examples", v.id)
			}
			for j, ex := range doc.Examples {
				payload, err := DecodePayload(ex)
				if err != nil {
					t.Fatalf("%s example %d: %v", v.id, j, err)
				}
				for _, later := range vs[i:] {
					if later.major != v.major {
						break
					}
					if err := later.validate(payload); err != nil {
						t.Errorf("%s example %d %s is refused by %s: %v", v.id, j, ex, later.id, err)
					}
				}
			}
		}
	}
}

func TestValidate(t *testing.T) {
	r, err := LoadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, class, payload string
		wantID               string
		wantErr              []string // substrings; nil for a valid payload
	}{
		{name: "generic", class: "generic", payload: `{"ts":1,"seq":0,"metrics":{"a":1,"b":-2.5e3}}`, wantID: "iotpipe:telemetry/generic/1.0"},
		{name: "generic string metric", class: "generic", payload: `{"ts":1,"seq":0,"metrics":{"a":"x"}}`, wantID: "iotpipe:telemetry/generic/1.0",
			wantErr: []string{"schema iotpipe:telemetry/generic/1.0", "/metrics/a: type: got string, want number"}},
		{name: "generic no metrics", class: "generic", payload: `{"ts":1,"seq":0,"metrics":{}}`, wantID: "iotpipe:telemetry/generic/1.0",
			wantErr: []string{"/metrics: minProperties"}},
		{name: "thermostat 1.0 payload", class: "thermostat", payload: `{"ts":1,"seq":0,"metrics":{"temperature":20,"humidity":40}}`, wantID: "iotpipe:telemetry/thermostat/1.1"},
		{name: "thermostat setpoint", class: "thermostat", payload: `{"ts":1,"seq":0,"metrics":{"temperature":20,"setpoint":21},"buffered":true}`, wantID: "iotpipe:telemetry/thermostat/1.1"},
		{name: "thermostat too hot", class: "thermostat", payload: `{"ts":1,"seq":0,"metrics":{"temperature":150.5}}`, wantID: "iotpipe:telemetry/thermostat/1.1",
			wantErr: []string{"/metrics/temperature: maximum: got 150.5, want 150"}},
		{name: "thermostat missing temperature", class: "thermostat", payload: `{"ts":1,"seq":0,"metrics":{"humidity":40}}`, wantID: "iotpipe:telemetry/thermostat/1.1",
			wantErr: []string{"/metrics: required: missing property 'temperature'"}},
		{name: "thermostat unknown metric", class: "thermostat", payload: `{"ts":1,"seq":0,"metrics":{"temperature":20,"co2":400}}`, wantID: "iotpipe:telemetry/thermostat/1.1",
			wantErr: []string{"/metrics: additionalProperties"}},
		{name: "large number written plainly", class: "thermostat", payload: `{"ts":1,"seq":0,"metrics":{"temperature":1000000.5}}`, wantID: "iotpipe:telemetry/thermostat/1.1",
			wantErr: []string{"/metrics/temperature: maximum: got 1000000.5, want 150"}},
		{name: "huge number written plainly", class: "thermostat", payload: `{"ts":1,"seq":0,"metrics":{"temperature":-1e300}}`, wantID: "iotpipe:telemetry/thermostat/1.1",
			wantErr: []string{"/metrics/temperature: minimum: got -1e+300, want -50"}},
		{name: "meter", class: "meter", payload: `{"ts":1,"seq":0,"metrics":{"power_w":0,"energy_wh":12}}`, wantID: "iotpipe:telemetry/meter/1.0"},
		{name: "meter negative power", class: "meter", payload: `{"ts":1,"seq":0,"metrics":{"power_w":-1}}`, wantID: "iotpipe:telemetry/meter/1.0",
			wantErr: []string{"/metrics/power_w: minimum: got -1, want 0"}},
		{name: "no ts", class: "meter", payload: `{"seq":0,"metrics":{"power_w":1}}`, wantID: "iotpipe:telemetry/meter/1.0",
			wantErr: []string{"/: required: missing property 'ts'"}},
		{name: "fractional seq", class: "generic", payload: `{"ts":1,"seq":0.5,"metrics":{"a":1}}`, wantID: "iotpipe:telemetry/generic/1.0",
			wantErr: []string{"/seq: type: got number, want integer"}},
		{name: "ts beyond 2^53", class: "generic", payload: `{"ts":9007199254740993,"seq":0,"metrics":{"a":1}}`, wantID: "iotpipe:telemetry/generic/1.0",
			wantErr: []string{"/ts: maximum"}},
		{name: "unknown top-level field", class: "generic", payload: `{"ts":1,"seq":0,"metrics":{"a":1},"fw":"1.2"}`, wantID: "iotpipe:telemetry/generic/1.0",
			wantErr: []string{"/: additionalProperties"}},
		{name: "several problems sorted", class: "thermostat", payload: `{"ts":"x","seq":-1,"metrics":{"temperature":true}}`, wantID: "iotpipe:telemetry/thermostat/1.1",
			wantErr: []string{"/metrics/temperature: type: got boolean, want number; /seq: minimum: got -1, want 0; /ts: type: got string, want integer"}},
		{name: "unknown class", class: "toaster", payload: `{"ts":1,"seq":0,"metrics":{"a":1}}`,
			wantErr: []string{`unknown device class "toaster": known classes are generic, meter, thermostat`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, err := DecodePayload([]byte(tt.payload))
			if err != nil {
				t.Fatal(err)
			}
			id, err := r.Validate(tt.class, doc)
			if id != tt.wantID {
				t.Errorf("Validate(%q, %s) schema id = %q, want %q", tt.class, tt.payload, id, tt.wantID)
			}
			if tt.wantErr == nil {
				if err != nil {
					t.Errorf("Validate(%q, %s): %v", tt.class, tt.payload, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate(%q, %s) accepted the payload", tt.class, tt.payload)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate(%q, %s) error\n%v\nwant it to contain %q", tt.class, tt.payload, err, w)
				}
			}
			var sv *SchemaViolation
			if errors.Is(err, ErrUnknownClass) == errors.As(err, &sv) {
				t.Errorf("error %v should be exactly one of ErrUnknownClass and *SchemaViolation", err)
			}
		})
	}
}

func TestValidateBoundsTheMessage(t *testing.T) {
	r, err := LoadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString(`{"ts":1,"seq":0,"metrics":{`)
	for i := 0; i < 1000; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`"m` + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + `":"bad"`)
	}
	b.WriteString(`}}`)
	doc, err := DecodePayload([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Validate("generic", doc)
	var sv *SchemaViolation
	if !errors.As(err, &sv) || len(sv.Problems) < 100 {
		t.Fatalf("Validate = %v, want a violation per metric", err)
	}
	if len(err.Error()) > 1000 || !strings.Contains(err.Error(), "more)") {
		t.Errorf("error is %d bytes; want a short message that says how many problems it left out:\n%.300s", len(err.Error()), err)
	}
}

func TestLoadSchemasRejectsBadSets(t *testing.T) {
	generic := readEmbedded(t, "generic/1.0.json")
	thermo := readEmbedded(t, "thermostat/1.0.json")
	as := func(raw []byte, id string) []byte {
		return []byte(strings.Replace(string(raw), "iotpipe:telemetry/thermostat/1.0", id, 1))
	}
	tests := []struct {
		name    string
		files   fstest.MapFS
		wantErr string
	}{
		{"wrong id", fstest.MapFS{"generic/1.0.json": {Data: generic}, "thermostat/1.0.json": {Data: as(thermo, "iotpipe:telemetry/thermostat/1.1")}},
			`has $id "iotpipe:telemetry/thermostat/1.1", want "iotpipe:telemetry/thermostat/1.0"`},
		{"wrong dialect", fstest.MapFS{"generic/1.0.json": {Data: generic}, "thermostat/1.0.json": {Data: []byte(strings.Replace(string(thermo), "2020-12", "2019-09", 1))}},
			"has $schema"},
		{"bad file name", fstest.MapFS{"generic/1.0.json": {Data: generic}, "thermostat/v1.json": {Data: thermo}},
			"want {class}/{major}.{minor}.json"},
		{"upper-case class", fstest.MapFS{"generic/1.0.json": {Data: generic}, "Thermostat/1.0.json": {Data: thermo}},
			"want {class}/{major}.{minor}.json"},
		{"minor gap", fstest.MapFS{"generic/1.0.json": {Data: generic}, "thermostat/1.0.json": {Data: thermo}, "thermostat/1.2.json": {Data: as(thermo, "iotpipe:telemetry/thermostat/1.2")}},
			"minor versions must be consecutive"},
		{"major without .0", fstest.MapFS{"generic/1.0.json": {Data: generic}, "thermostat/2.1.json": {Data: as(thermo, "iotpipe:telemetry/thermostat/2.1")}},
			"starts at minor 1"},
		{"not JSON", fstest.MapFS{"generic/1.0.json": {Data: generic}, "thermostat/1.0.json": {Data: []byte(`{`)}},
			"is not JSON"},
		{"not a schema", fstest.MapFS{"generic/1.0.json": {Data: generic}, "thermostat/1.0.json": {Data: []byte(strings.Replace(string(thermo), `"type": "object"`, `"type": "thing"`, 1))}},
			"compiling telemetry schema iotpipe:telemetry/thermostat/1.0"},
		{"no generic class", fstest.MapFS{"thermostat/1.0.json": {Data: thermo}},
			`no telemetry schema for the default class "generic"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadSchemas(tt.files)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("loadSchemas error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
