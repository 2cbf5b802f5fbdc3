package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// TestEmbeddedSchemasCompile keeps the embedded schemas on the fast path: a
// keyword outside the compiled subset would quietly send a whole device
// class through the library, several times slower.
func TestEmbeddedSchemasCompile(t *testing.T) {
	r, err := LoadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	for _, class := range r.Classes() {
		for _, s := range r.versions[class] {
			if s.checker == nil {
				t.Errorf("%s validates with the library only: %v; extend telemetry_compile.go or keep the schema to its subset", s.id, s.notCompiled)
			}
		}
	}
}

// librarySchema is doc compiled both ways, for tests of schemas that are not embedded.
func librarySchema(t testing.TB, schema string) *telemetrySchema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
	if err != nil {
		t.Fatalf("schema %s: %v", schema, err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	const id = "iotpipe:test/schema"
	if err := c.AddResource(id, doc); err != nil {
		t.Fatal(err)
	}
	compiled, err := c.Compile(id)
	if err != nil {
		t.Fatalf("schema %s: %v", schema, err)
	}
	checker, notCompiled := compileTelemetrySchema(doc)
	return &telemetrySchema{id: id, compiled: compiled, checker: checker, notCompiled: notCompiled}
}

// sameAsLibrary fails t unless the compiled checks decide doc and report
// exactly the problems the library reports.
func sameAsLibrary(t testing.TB, s *telemetrySchema, doc any, input string) {
	t.Helper()
	if s.checker == nil {
		t.Fatalf("%s is not compiled: %v", s.id, s.notCompiled)
	}
	got, decided := s.checker.validate(doc)
	if !decided {
		t.Fatalf("%s: compiled checks left %s to the library", s.id, input)
	}
	var want []SchemaProblem
	switch err := s.validateLibrary(doc); {
	case err == nil:
	case errors.As(err, new(*SchemaViolation)):
		var sv *SchemaViolation
		errors.As(err, &sv)
		want = sv.Problems
	default:
		t.Fatalf("%s: library failed on %s: %v", s.id, input, err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s on %s:\ncompiled: %v\nlibrary:  %v", s.id, input, got, want)
	}
}

// compiledSubsetSchema uses every keyword of the compiled subset, with the
// bounds that are hard to get right in floating point: literals that are
// not float64s (0.1), floats whose shortest decimal is not the literal
// (2^-30 written out), and literals beyond the float64 range.
const compiledSubsetSchema = `{
  "type": ["object", "null"],
  "required": ["a", "w"],
  "minProperties": 1,
  "maxProperties": 6,
  "properties": {
    "a": {"type": "number", "minimum": 0.1, "maximum": 0.3},
    "b": {"exclusiveMinimum": 0, "exclusiveMaximum": 1e400},
    "c": {"minimum": 9.31322574615478515625e-10, "maximum": -1e-400},
    "i": {"type": "integer", "minimum": -1e400, "maximum": 9007199254740993},
    "x": false,
    "y": true,
    "s": {"type": ["string", "integer"], "minLength": 2, "maxLength": 3, "pattern": "^[a-zé]+$"},
    "e": {"enum": ["a", 1, 0.1, null, true]},
    "k": {"const": 0.1},
    "n": {"const": null},
    "arr": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "number", "exclusiveMaximum": 10}},
    "o": {"type": "object", "additionalProperties": false, "properties": {"p": {"type": "boolean"}}}
  },
  "additionalProperties": {"type": ["boolean", "string"], "maxLength": 1}
}`

// compiledSubsetPayloads are the edge cases of compiledSubsetSchema.
var compiledSubsetPayloads = []string{
	`null`, `true`, `"x"`, `1`, `[]`, `{}`,
	`{"a": 0.1, "w": true}`,
	`{"a": 0.09999999999999999, "w": "x"}`,
	`{"a": 0.3, "w": "xy"}`,
	`{"a": 0.30000000000000004, "w": 1}`,
	`{"a": 0.2, "w": false, "b": 0}`,
	`{"a": 0.2, "w": false, "b": -0}`,
	`{"a": 0.2, "w": false, "b": 5e-324}`,
	`{"a": 0.2, "w": false, "b": 1.7976931348623157e308}`,
	`{"a": 0.2, "w": false, "c": 9.313225746154785e-10}`,
	`{"a": 0.2, "w": false, "c": 9.313225746154786e-10}`,
	`{"a": 0.2, "w": false, "c": -1e-320}`,
	`{"a": 0.2, "w": false, "i": 9007199254740992}`,
	`{"a": 0.2, "w": false, "i": 9007199254740993}`,
	`{"a": 0.2, "w": false, "i": 9007199254740994}`,
	`{"a": 0.2, "w": false, "i": 1.5}`,
	`{"a": 0.2, "w": false, "i": 1e300}`,
	`{"a": 0.2, "w": false, "i": -1.7976931348623157e308}`,
	`{"a": 0.2, "w": false, "x": 1}`,
	`{"a": 0.2, "w": false, "y": {"anything": [1]}}`,
	`{"a": 0.2, "w": false, "s": "é"}`,
	`{"a": 0.2, "w": false, "s": "éé"}`,
	`{"a": 0.2, "w": false, "s": "abcd"}`,
	`{"a": 0.2, "w": false, "s": "AB"}`,
	`{"a": 0.2, "w": false, "s": 7}`,
	`{"a": 0.2, "w": false, "s": 7.5}`,
	`{"a": 0.2, "w": false, "e": "a"}`,
	`{"a": 0.2, "w": false, "e": 1.0}`,
	`{"a": 0.2, "w": false, "e": 0.1}`,
	`{"a": 0.2, "w": false, "e": 0.10000000000000001}`,
	`{"a": 0.2, "w": false, "e": null}`,
	`{"a": 0.2, "w": false, "e": false}`,
	`{"a": 0.2, "w": false, "e": "b"}`,
	`{"a": 0.2, "w": false, "k": 0.1}`,
	`{"a": 0.2, "w": false, "k": "0.1"}`,
	`{"a": 0.2, "w": false, "n": null}`,
	`{"a": 0.2, "w": false, "n": 0}`,
	`{"a": 0.2, "w": false, "arr": []}`,
	`{"a": 0.2, "w": false, "arr": [1, 10, "x", 9.999999999999998]}`,
	`{"a": 0.2, "w": false, "o": {"p": true}}`,
	`{"a": 0.2, "w": false, "o": {"p": 1, "q": 1, "r~/": 2}}`,
	`{"a": 0.2, "w": false, "o": []}`,
	`{"w": false, "z": "ab", "~/": 3, "": "", "b": 1e-7}`,
	`{"a": "x", "b": "y", "c": "z", "i": "w", "s": [], "w": {}, "more": 1}`,
}

func TestCompiledMatchesLibrary(t *testing.T) {
	r, err := LoadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	payloads := []string{
		`{"ts":1,"seq":0,"metrics":{"a":1,"b":-2.5e3}}`,
		`{"ts":1,"seq":0,"metrics":{"temperature":150,"humidity":0,"setpoint":-50},"buffered":true}`,
		`{"ts":1,"seq":0,"metrics":{"temperature":150.00000000000003,"humidity":-5e-324}}`,
		`{"ts":1,"seq":0,"metrics":{"power_w":0,"energy_wh":-0}}`,
		`{"ts":1,"seq":0,"metrics":{"power_w":-1e-300}}`,
		`{"ts":0,"seq":-1,"metrics":{}}`,
		`{"ts":1.5,"seq":1e300,"metrics":{"x":"y","temperature":null}}`,
		`{"ts":9007199254740991,"seq":9007199254740992,"metrics":{"x":1}}`,
		`{"ts":"1","seq":[0],"metrics":[],"buffered":"yes"}`,
		`{"seq":0,"metrics":{"humidity":101},"fw":"1.2","extra":{}}`,
		`{}`,
	}
	for _, class := range r.Classes() {
		for _, s := range r.versions[class] {
			for _, p := range payloads {
				doc, err := DecodePayload([]byte(p))
				if err != nil {
					t.Fatal(err)
				}
				sameAsLibrary(t, s, doc, p)
			}
		}
	}

	s := librarySchema(t, compiledSubsetSchema)
	for _, p := range compiledSubsetPayloads {
		var doc any
		if err := json.Unmarshal([]byte(p), &doc); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		sameAsLibrary(t, s, doc, p)
	}
}

// TestCompiledLeavesForeignValuesToTheLibrary: a caller may pass values
// DecodePayload never makes; the library has the last word on those.
func TestCompiledLeavesForeignValuesToTheLibrary(t *testing.T) {
	r, err := LoadSchemas()
	if err != nil {
		t.Fatal(err)
	}
	s := r.latest("thermostat")
	tests := []struct {
		name string
		doc  any
	}{
		{"int", map[string]any{"ts": 1, "seq": 0.0, "metrics": map[string]any{"temperature": 20.0}}},
		{"json.Number", map[string]any{"ts": json.Number("1"), "seq": 0.0, "metrics": map[string]any{"temperature": 20.0}}},
		{"NaN", map[string]any{"ts": 1.0, "seq": 0.0, "metrics": map[string]any{"temperature": math.NaN()}}},
		{"Inf", map[string]any{"ts": 1.0, "seq": 0.0, "metrics": map[string]any{"temperature": math.Inf(1)}}},
		{"map[string]float64", map[string]any{"ts": 1.0, "seq": 0.0, "metrics": map[string]float64{"temperature": 20}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, decided := s.checker.validate(tt.doc); decided {
				t.Errorf("compiled checks decided %#v; want the library to", tt.doc)
			}
			got, want := s.validate(tt.doc), s.validateLibrary(tt.doc)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("validate(%#v) = %v, library %v", tt.doc, got, want)
			}
		})
	}
}

func TestCompileRefusesUnsupportedKeywords(t *testing.T) {
	tests := []struct {
		name, schema, wantErr string
	}{
		{"ref", `{"$defs": {"n": {"type": "number"}}, "properties": {"a": {"$ref": "#/$defs/n"}}}`, `keyword "$defs" at /`},
		{"nested ref", `{"properties": {"a": {"$ref": "#"}}}`, `keyword "$ref" at /a`},
		{"allOf", `{"allOf": [{"type": "object"}]}`, `keyword "allOf" at /`},
		{"patternProperties", `{"properties": {"m": {"patternProperties": {"^x": true}}}}`, `keyword "patternProperties" at /m`},
		{"multipleOf", `{"properties": {"m": {"multipleOf": 0.5}}}`, `keyword "multipleOf" at /m`},
		{"format", `{"properties": {"m": {"format": "email"}}}`, `keyword "format" at /m`},
		{"nested $id", `{"properties": {"m": {"$id": "urn:iotpipe:nested"}}}`, `keyword "$id" at /m`},
		{"prefixItems", `{"items": {"prefixItems": [true]}}`, `keyword "prefixItems" at /[]`},
		{"in additionalProperties", `{"additionalProperties": {"not": {}}}`, `keyword "not" at /*`},
		{"object enum", `{"enum": [{"a": 1}]}`, `enum: value map[a:1]`},
		{"array const", `{"const": [1]}`, `const: value [1]`},
		{"unknown keyword", `{"properties": {"m": {"minimun": 0}}}`, `keyword "minimun" at /m`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := librarySchema(t, tt.schema)
			if s.checker != nil || s.notCompiled == nil || !strings.Contains(s.notCompiled.Error(), tt.wantErr) {
				t.Errorf("compiling %s: checker %v, error %v; want no checker and an error containing %q", tt.schema, s.checker != nil, s.notCompiled, tt.wantErr)
			}
		})
	}
}

// TestUncompiledSchemaValidatesWithTheLibrary: a registry schema outside the
// subset still loads and validates, through the library.
func TestUncompiledSchemaValidatesWithTheLibrary(t *testing.T) {
	generic := readEmbedded(t, "generic/1.0.json")
	withMultipleOf := bytes.Replace(generic, []byte(`"additionalProperties": {"type": "number"}`), []byte(`"additionalProperties": {"type": "number", "multipleOf": 0.5}`), 1)
	if bytes.Equal(withMultipleOf, generic) {
		t.Fatal("generic/1.0.json no longer has the additionalProperties this test edits")
	}
	r, err := loadSchemas(fstest.MapFS{"generic/1.0.json": {Data: withMultipleOf}})
	if err != nil {
		t.Fatal(err)
	}
	s := r.latest("generic")
	if s.checker != nil || !strings.Contains(fmt.Sprint(s.notCompiled), `keyword "multipleOf" at /metrics/*`) {
		t.Fatalf("checker %v, notCompiled %v; want the multipleOf named", s.checker != nil, s.notCompiled)
	}
	for payload, want := range map[string]string{
		`{"ts":1,"seq":0,"metrics":{"a":1.5}}`:  "",
		`{"ts":1,"seq":0,"metrics":{"a":1.25}}`: "/metrics/a: multipleOf: got 1.25, want 0.5",
	} {
		doc, err := DecodePayload([]byte(payload))
		if err != nil {
			t.Fatal(err)
		}
		_, err = r.Validate("generic", doc)
		if (err == nil) != (want == "") || err != nil && !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(%s) = %v, want %q", payload, err, want)
		}
	}
}

// TestBound checks bound.cmp against the library's arithmetic directly.
func TestBound(t *testing.T) {
	literals := []string{"0", "150", "-50", "0.1", "0.3", "9007199254740991", "9007199254740993",
		"9.31322574615478515625e-10", "1e400", "-1e400", "1e-400", "1.7976931348623157e308", "1.7976931348623158e308", "5e-324"}
	floats := []float64{0, math.Copysign(0, -1), 150, math.Nextafter(150, 200), -50, 0.1, math.Nextafter(0.1, 1), math.Nextafter(0.1, 0),
		0.3, 0.30000000000000004, 9007199254740991, 9007199254740992, 9007199254740994, 9.313225746154785e-10, 9.313225746154786e-10,
		math.MaxFloat64, -math.MaxFloat64, 5e-324, -5e-324, 1e-300}
	for _, lit := range literals {
		r, _ := new(big.Rat).SetString(lit)
		b := newBound(r)
		for _, f := range floats {
			if got, want := b.cmp(f), decimalOf(f).Cmp(r); got != want {
				t.Errorf("bound %s: cmp(%v) = %d, want %d", lit, f, got, want)
			}
		}
	}
}

// FuzzCompiledMatchesLibrary feeds payloads through the compiled checks and
// the library, for every embedded schema version and a schema that uses
// every compiled keyword: they must accept and refuse alike, with the same
// problems.
func FuzzCompiledMatchesLibrary(f *testing.F) {
	r, err := LoadSchemas()
	if err != nil {
		f.Fatal(err)
	}
	var all []*telemetrySchema
	for _, class := range r.Classes() {
		all = append(all, r.versions[class]...)
		for _, v := range r.versions[class] {
			var doc struct{ Examples []json.RawMessage }
			if err := json.Unmarshal(v.raw, &doc); err != nil {
				f.Fatal(err)
			}
			for _, ex := range doc.Examples {
				f.Add([]byte(ex))
			}
		}
	}
	subset := librarySchema(f, compiledSubsetSchema)
	for _, p := range compiledSubsetPayloads {
		f.Add([]byte(p))
	}
	f.Add([]byte(`{"ts":1.5,"seq":-0,"metrics":{"temperature":150.00000000000003,"humidity":1e-400,"":{}},"buffered":null}`))
	f.Add([]byte(`{"ts":9007199254740993,"seq":1e21,"metrics":{"power_w":-0.0,"energy_wh":1E+308},"x":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var doc any
		if err := json.Unmarshal(data, &doc); err != nil {
			return
		}
		for _, s := range all {
			sameAsLibrary(t, s, doc, string(data))
		}
		sameAsLibrary(t, subset, doc, string(data))
	})
}

// BenchmarkSchemaValidate is schema validation alone, on a decoded typical
// payload: the compiled checks against the library.
func BenchmarkSchemaValidate(b *testing.B) {
	r, err := LoadSchemas()
	if err != nil {
		b.Fatal(err)
	}
	payloads := []struct{ class, data string }{
		{"generic", `{"ts":1699999999000,"seq":123456,"metrics":{"temperature":21.5,"humidity":40.25,"rssi":-67,"battery":3.05}}`},
		{"thermostat", `{"ts":1699999999000,"seq":123456,"metrics":{"temperature":21.5,"humidity":40.25,"setpoint":22}}`},
		{"meter", `{"ts":1699999999000,"seq":123456,"metrics":{"power_w":1234.5,"energy_wh":98765432}}`},
	}
	for _, p := range payloads {
		doc, err := DecodePayload([]byte(p.data))
		if err != nil {
			b.Fatal(err)
		}
		s := r.latest(p.class)
		for _, path := range []struct {
			name     string
			validate func(any) error
		}{{"compiled", s.validate}, {"library", s.validateLibrary}} {
			b.Run(p.class+"/"+path.name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if err := path.validate(doc); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
