package schemas

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/big"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// Telemetry payload schemas live in telemetry/{class}/{major}.{minor}.json,
// JSON Schema draft 2020-12, each with $id "iotpipe:telemetry/{class}/{major}.{minor}".
//
// Versioning rule: a minor version may only add optional properties to an
// object that refused unknown properties before; it may not remove, rename,
// retype or re-constrain a property, nor make one required or optional.
// Anything else needs a new major version. Under that rule the latest minor
// of a major accepts every payload any older minor of that major accepted, so
// the pipeline validates each message against the latest version of its class
// only: the latest minor of the newest major. (Publishing a new major thus
// switches every device of the class to it at once.) CheckMinorEvolution
// enforces the rule and LoadSchemas refuses a set that breaks it.
//
//go:embed telemetry
var telemetryFiles embed.FS

// DefaultDeviceClass is the class of a message without a deviceClass attribute.
const DefaultDeviceClass = "generic"

// SchemaDialect is the JSON Schema draft every telemetry schema declares.
const SchemaDialect = "https://json-schema.org/draft/2020-12/schema"

// TelemetrySchemaID is the $id of telemetry schema class/major.minor.
func TelemetrySchemaID(class string, major, minor int) string {
	return fmt.Sprintf("iotpipe:telemetry/%s/%d.%d", class, major, minor)
}

// ErrUnknownClass is wrapped by SchemaRegistry.Validate when the device class has no schema.
var ErrUnknownClass = errors.New("unknown device class")

// SchemaRegistry holds the compiled telemetry schemas of every device class.
// It is safe for concurrent use.
type SchemaRegistry struct {
	// versions lists each class's schemas in ascending version order.
	versions map[string][]*telemetrySchema
	classes  []string // sorted
}

type telemetrySchema struct {
	id           string
	class        string
	major, minor int
	raw          []byte
	compiled     *jsonschema.Schema
	// checker is the schema compiled to Go checks (telemetry_compile.go);
	// nil when the schema uses a keyword outside that subset, which
	// notCompiled then names, and the library validates alone.
	checker     *checkNode
	notCompiled error
}

// LoadSchemas compiles the embedded telemetry schemas, each twice: with the
// JSON Schema library, the reference, and into Go checks for the keyword
// subset the telemetry schemas use (telemetry_compile.go), which validate
// several times faster; a schema outside that subset validates with the
// library only. It fails if a file is
// misnamed, its $id or dialect is wrong, it does not compile, minor versions
// are not numbered 0, 1, 2, ... within a major, or a minor version breaks the
// versioning rule (see CheckMinorEvolution).
func LoadSchemas() (*SchemaRegistry, error) {
	sub, err := fs.Sub(telemetryFiles, "telemetry")
	if err != nil {
		return nil, fmt.Errorf("embedded telemetry schemas: %w", err)
	}
	return loadSchemas(sub)
}

var (
	classPattern   = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)
	versionPattern = regexp.MustCompile(`^(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.json$`)
)

// loadSchemas reads {class}/{major}.{minor}.json files from fsys.
func loadSchemas(fsys fs.FS) (*SchemaRegistry, error) {
	files, err := fs.Glob(fsys, "*/*.json")
	if err != nil {
		return nil, fmt.Errorf("listing telemetry schemas: %w", err)
	}
	r := &SchemaRegistry{versions: map[string][]*telemetrySchema{}}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	for _, name := range files {
		class, file := path.Split(name)
		class = strings.TrimSuffix(class, "/")
		m := versionPattern.FindStringSubmatch(file)
		if !classPattern.MatchString(class) || m == nil {
			return nil, fmt.Errorf("telemetry schema %s: want {class}/{major}.{minor}.json with a lower-case class", name)
		}
		major, _ := strconv.Atoi(m[1]) // the pattern bounds them to 6 digits
		minor, _ := strconv.Atoi(m[2])
		raw, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("telemetry schema %s: %w", name, err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("telemetry schema %s is not JSON: %w", name, err)
		}
		obj, _ := doc.(map[string]any)
		id := TelemetrySchemaID(class, major, minor)
		if got, _ := obj["$id"].(string); got != id {
			return nil, fmt.Errorf("telemetry schema %s has $id %q, want %q", name, got, id)
		}
		if got, _ := obj["$schema"].(string); got != SchemaDialect {
			return nil, fmt.Errorf("telemetry schema %s has $schema %q, want %q", name, got, SchemaDialect)
		}
		if err := c.AddResource(id, doc); err != nil {
			return nil, fmt.Errorf("telemetry schema %s: %w", name, err)
		}
		checker, notCompiled := compileTelemetrySchema(doc)
		r.versions[class] = append(r.versions[class], &telemetrySchema{
			id: id, class: class, major: major, minor: minor, raw: raw,
			checker: checker, notCompiled: notCompiled,
		})
	}
	for class, vs := range r.versions {
		sort.Slice(vs, func(i, j int) bool {
			return vs[i].major < vs[j].major || vs[i].major == vs[j].major && vs[i].minor < vs[j].minor
		})
		for i, v := range vs {
			if v.compiled, err = c.Compile(v.id); err != nil {
				return nil, fmt.Errorf("compiling telemetry schema %s: %w", v.id, err)
			}
			if i == 0 || vs[i-1].major != v.major {
				if v.minor != 0 {
					return nil, fmt.Errorf("telemetry schema %s: major %d of class %s starts at minor %d, want 0", v.id, v.major, class, v.minor)
				}
				continue
			}
			prev := vs[i-1]
			if v.minor != prev.minor+1 {
				return nil, fmt.Errorf("telemetry schema %s follows %s: minor versions must be consecutive", v.id, prev.id)
			}
			if err := CheckMinorEvolution(prev.raw, v.raw); err != nil {
				return nil, fmt.Errorf("telemetry schema %s is not a compatible minor version of %s: %w", v.id, prev.id, err)
			}
		}
		r.classes = append(r.classes, class)
	}
	sort.Strings(r.classes)
	if len(r.versions[DefaultDeviceClass]) == 0 {
		return nil, fmt.Errorf("no telemetry schema for the default class %q", DefaultDeviceClass)
	}
	return r, nil
}

// Classes returns the device classes that have a schema, sorted.
func (r *SchemaRegistry) Classes() []string { return append([]string(nil), r.classes...) }

// Versions returns the schema ids of class in ascending version order.
func (r *SchemaRegistry) Versions(class string) []string {
	var ids []string
	for _, v := range r.versions[class] {
		ids = append(ids, v.id)
	}
	return ids
}

// Latest returns the id of the newest schema of class: the latest minor of its newest major.
func (r *SchemaRegistry) Latest(class string) (id string, ok bool) {
	s := r.latest(class)
	if s == nil {
		return "", false
	}
	return s.id, true
}

func (r *SchemaRegistry) latest(class string) *telemetrySchema {
	vs := r.versions[class]
	if len(vs) == 0 {
		return nil
	}
	return vs[len(vs)-1]
}

// Validate checks doc, a payload decoded by DecodePayload (or any value made
// of map[string]any, []any, string, float64, bool and nil), against the
// latest schema of class and returns that schema's id. The error wraps
// ErrUnknownClass when class has no schema, and is a *SchemaViolation when
// doc does not match.
func (r *SchemaRegistry) Validate(class string, doc any) (schemaID string, err error) {
	s := r.latest(class)
	if s == nil {
		return "", fmt.Errorf("%w %q: known classes are %s", ErrUnknownClass, class, strings.Join(r.classes, ", "))
	}
	return s.id, s.validate(doc)
}

// validate checks doc with the compiled checks when the schema has them,
// and with the library otherwise, or when doc holds a value the compiled
// checks leave to the library (see checkNode.validate). Both give the same
// answer and the same problems.
func (s *telemetrySchema) validate(doc any) error {
	if s.checker == nil {
		return s.validateLibrary(doc)
	}
	problems, decided := s.checker.validate(doc)
	switch {
	case !decided:
		return s.validateLibrary(doc)
	case len(problems) > 0:
		return &SchemaViolation{SchemaID: s.id, Problems: problems}
	}
	return nil
}

// validateLibrary checks doc with the JSON Schema library: the reference
// the compiled checks are held to.
func (s *telemetrySchema) validateLibrary(doc any) error {
	err := s.compiled.Validate(doc)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return fmt.Errorf("validating against %s: %w", s.id, err)
	}
	return newSchemaViolation(s.id, ve)
}

// SchemaViolation says why a payload does not match its schema.
type SchemaViolation struct {
	SchemaID string
	// Problems lists every failed check, sorted by field then keyword.
	Problems []SchemaProblem
}

// SchemaProblem is one failed check of a schema.
type SchemaProblem struct {
	// Field is the JSON pointer of the offending value in the payload ("" is the whole payload).
	Field string
	// Keyword is the schema keyword that failed (type, required, maximum, ...).
	Keyword string
	// Message is the validator's description, e.g. "got 200, want 150" for maximum.
	Message string
}

func (p SchemaProblem) String() string {
	field := p.Field
	if field == "" {
		field = "/"
	}
	return fmt.Sprintf("%s: %s: %s", field, p.Keyword, p.Message)
}

// messagePrinter renders the validator's messages; English, like every other error here.
var messagePrinter = message.NewPrinter(language.English)

// describe says what failed. Numeric bounds are written as plain numbers:
// the localized printer would write 1e6 as "1×10⁰⁶" and 1000 as "1,000",
// which is awkward to read back from a dead-letter table.
func describe(k jsonschema.ErrorKind, keyword string) string {
	bound := func(got, want *big.Rat) string {
		return "got " + ratString(got) + ", want " + ratString(want)
	}
	ints := func(got, want int) string { return fmt.Sprintf("got %d, want %d", got, want) }
	switch k := k.(type) {
	case *kind.Minimum:
		return bound(k.Got, k.Want)
	case *kind.Maximum:
		return bound(k.Got, k.Want)
	case *kind.ExclusiveMinimum:
		return bound(k.Got, k.Want)
	case *kind.ExclusiveMaximum:
		return bound(k.Got, k.Want)
	case *kind.MultipleOf:
		return bound(k.Got, k.Want)
	case *kind.MinProperties:
		return ints(k.Got, k.Want)
	case *kind.MaxProperties:
		return ints(k.Got, k.Want)
	case *kind.MinLength:
		return ints(k.Got, k.Want)
	case *kind.MaxLength:
		return ints(k.Got, k.Want)
	case *kind.MinItems:
		return ints(k.Got, k.Want)
	case *kind.MaxItems:
		return ints(k.Got, k.Want)
	}
	return strings.TrimPrefix(k.LocalizedString(messagePrinter), keyword+": ")
}

func ratString(r *big.Rat) string {
	if r == nil {
		return "nothing"
	}
	if r.IsInt() && r.Num().BitLen() <= 64 {
		return r.Num().String()
	}
	f, _ := r.Float64()
	// As encoding/json writes numbers: plain unless very large or small.
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		return strconv.FormatFloat(f, 'g', -1, 64)
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// maxListedProblems bounds the error text of a payload with many faults.
const maxListedProblems = 5

func (v *SchemaViolation) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "payload does not match schema %s: ", v.SchemaID)
	for i, p := range v.Problems {
		if i == maxListedProblems {
			fmt.Fprintf(&b, " (and %d more)", len(v.Problems)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// newSchemaViolation keeps the leaves of the validator's error tree: they
// name the field and keyword; inner nodes only say "validation failed".
// Sorting makes the message independent of map iteration order, so a replay
// dead-letters a message with the same text.
func newSchemaViolation(id string, ve *jsonschema.ValidationError) *SchemaViolation {
	v := &SchemaViolation{SchemaID: id}
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		// A propertyNames failure's causes are about the name as a value of
		// its own, located at the root: the node itself says more. (jsonschema
		// v6.0.3 can report a wrong field for propertyNames, as it shares its
		// location slice; the telemetry schemas avoid that keyword.)
		if _, names := e.ErrorKind.(*kind.PropertyNames); len(e.Causes) > 0 && !names {
			for _, c := range e.Causes {
				walk(c)
			}
			return
		}
		if k, ok := e.ErrorKind.(*kind.AdditionalProperties); ok {
			sort.Strings(k.Properties) // listed in map order
		}
		keyword := strings.Join(e.ErrorKind.KeywordPath(), "/")
		v.Problems = append(v.Problems, SchemaProblem{
			Field:   jsonPointer(e.InstanceLocation),
			Keyword: keyword,
			Message: describe(e.ErrorKind, keyword),
		})
	}
	walk(ve)
	sortProblems(v.Problems)
	return v
}

// sortProblems orders problems by field, keyword, then message.
func sortProblems(ps []SchemaProblem) {
	sort.Slice(ps, func(i, j int) bool {
		a, b := ps[i], ps[j]
		if a.Field != b.Field {
			return a.Field < b.Field
		}
		if a.Keyword != b.Keyword {
			return a.Keyword < b.Keyword
		}
		return a.Message < b.Message
	})
}

func jsonPointer(tokens []string) string {
	var b strings.Builder
	for _, t := range tokens {
		b.WriteByte('/')
		b.WriteString(strings.ReplaceAll(strings.ReplaceAll(t, "~", "~0"), "/", "~1"))
	}
	return b.String()
}
