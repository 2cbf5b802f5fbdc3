package schemas

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// The JSON Schema library walks a generic validator for every payload: about
// 5 µs of the pipeline's ~7 µs per message (BENCHMARKS.md). The telemetry
// schemas use a small, fixed part of JSON Schema (the versioning rule keeps
// them to typed properties, ranges and required fields), so LoadSchemas also
// compiles each schema into a tree of checks specialised to its keywords,
// which validates a decoded payload without allocating when it is valid.
//
// The library stays the reference. Its semantics are copied here exactly,
// including the quirks that decide edge cases: a number is compared as the
// shortest decimal that formats it (fmt's %v), and the problems it reports
// use the library's own error kinds, so the text of a dead letter is the same
// on both paths. A schema with any keyword outside the subset below is not
// compiled; it validates through the library (see compileTelemetrySchema).
// FuzzCompiledMatchesLibrary and TestCompiledMatchesLibrary hold the two
// paths to the same answers.

// annotations are keywords that never change a validation result.
var annotations = map[string]bool{
	"$comment": true, "title": true, "description": true, "examples": true,
	"default": true, "deprecated": true, "readOnly": true, "writeOnly": true,
}

// compiledKeywords is the subset of draft 2020-12 the compiled checker
// implements. Any other keyword ($ref, allOf, patternProperties, format,
// multipleOf, ...) sends its schema to the library.
var compiledKeywords = map[string]bool{
	"type": true, "enum": true, "const": true,
	"required": true, "properties": true, "additionalProperties": true,
	"minProperties": true, "maxProperties": true,
	"minimum": true, "maximum": true, "exclusiveMinimum": true, "exclusiveMaximum": true,
	"minLength": true, "maxLength": true, "pattern": true,
	"items": true, "minItems": true, "maxItems": true,
}

// jsonType is a set of JSON Schema types, in the library's order (which
// is the order of the "want" list of a type error).
type jsonType uint8

const (
	typeNull jsonType = 1 << iota
	typeBoolean
	typeNumber
	typeInteger
	typeString
	typeArray
	typeObject
)

var typeNames = []struct {
	t    jsonType
	name string
}{
	{typeNull, "null"}, {typeBoolean, "boolean"}, {typeNumber, "number"}, {typeInteger, "integer"},
	{typeString, "string"}, {typeArray, "array"}, {typeObject, "object"},
}

func (t jsonType) names() []string {
	var out []string
	for _, n := range typeNames {
		if t&n.t != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// checkNode is one compiled (sub)schema.
type checkNode struct {
	// always and never are the boolean schemas true and false.
	always, never bool

	types jsonType // 0: any type
	// enum and konst hold the allowed values (konst has at most one);
	// enumRaw and constRaw are the schema's own, for the error text.
	hasEnum, hasConst bool
	enum              []scalar
	enumRaw           []any
	konst             scalar
	constRaw          any

	// object
	minProps, maxProps int // -1: no bound
	required           []string
	// requiredOnly are the required names that have no properties entry.
	requiredOnly []string
	props        []propCheck
	// additional is nil when additionalProperties is absent or true.
	additional      *checkNode
	additionalFalse bool

	// array
	minItems, maxItems int
	items              *checkNode

	// string
	minLength, maxLength int
	pattern              *regexp.Regexp

	// number
	minimum, maximum, exclusiveMinimum, exclusiveMaximum *bound
}

type propCheck struct {
	name     string
	required bool
	node     *checkNode
}

// scalar is an enum or const value: null, a boolean, a string or a number.
type scalar struct {
	t   jsonType
	b   bool
	s   string
	num *bound
}

// bound is a number from a schema, kept so that a float64 payload value f
// compares with it as the library compares them: as the rational written by
// fmt.Sprint(f), against the exact rational of the schema's literal.
//
// lo and hi are the float64s closest to the literal from below and above
// (equal when it is one). A float below lo (above hi) formats to a decimal
// inside its own rounding interval, so it is below (above) the literal too;
// only lo and hi themselves can go either way. When the literal is a float
// whose shortest decimal is the literal itself (150, -50, 2^53-1, 0.5, not
// 0.1), that float compares equal; otherwise those two values take the exact
// rational comparison.
type bound struct {
	lo, hi   float64
	faithful bool
	rat      *big.Rat
}

func newBound(r *big.Rat) *bound {
	b := &bound{rat: r}
	f, exact := r.Float64()
	switch {
	case math.IsInf(f, 1):
		b.lo, b.hi = math.MaxFloat64, math.Inf(1)
	case math.IsInf(f, -1):
		b.lo, b.hi = math.Inf(-1), -math.MaxFloat64
	case exact:
		b.lo, b.hi = f, f
		b.faithful = decimalOf(f).Cmp(r) == 0
	case new(big.Rat).SetFloat64(f).Cmp(r) < 0:
		b.lo, b.hi = f, math.Nextafter(f, math.Inf(1))
	default:
		b.lo, b.hi = math.Nextafter(f, math.Inf(-1)), f
	}
	return b
}

// cmp compares the library's view of f (see bound) with the bound's literal.
func (b *bound) cmp(f float64) int {
	switch {
	case f < b.lo:
		return -1
	case f > b.hi:
		return 1
	case b.faithful:
		return 0
	}
	return decimalOf(f).Cmp(b.rat)
}

// decimalOf is the library's reading of a payload number: the rational of
// the decimal fmt.Sprint writes for f, which is finite.
func decimalOf(f float64) *big.Rat {
	r, _ := new(big.Rat).SetString(fmt.Sprint(f))
	return r
}

// compileTelemetrySchema compiles doc, a telemetry schema as
// jsonschema.UnmarshalJSON returns it (numbers are json.Number). The error
// names the first keyword outside the compiled subset, with its location;
// the caller then validates with the library instead.
func compileTelemetrySchema(doc any) (*checkNode, error) {
	return compileNode(doc, "", true)
}

func compileNode(doc any, at string, root bool) (*checkNode, error) {
	where := at
	if where == "" {
		where = "/"
	}
	switch doc := doc.(type) {
	case bool:
		return &checkNode{always: doc, never: !doc}, nil
	case map[string]any:
		n := &checkNode{minProps: -1, maxProps: -1, minItems: -1, maxItems: -1, minLength: -1, maxLength: -1}
		for _, k := range sortedKeys(doc) {
			switch {
			case annotations[k]:
			case root && (k == "$schema" || k == "$id"):
			case !compiledKeywords[k]:
				return nil, fmt.Errorf("keyword %q at %s is outside the compiled subset", k, where)
			}
		}
		if err := n.compileKeywords(doc, at); err != nil {
			return nil, fmt.Errorf("keyword at %s: %w", where, err)
		}
		return n, nil
	default:
		return nil, fmt.Errorf("schema at %s is a %T, not an object or boolean", where, doc)
	}
}

func (n *checkNode) compileKeywords(doc map[string]any, at string) error {
	var err error
	if v, ok := doc["type"]; ok {
		if n.types, err = compileTypes(v); err != nil {
			return err
		}
	}
	if v, ok := doc["enum"]; ok {
		list, isList := v.([]any)
		if !isList {
			return fmt.Errorf("enum is a %T, not an array", v)
		}
		n.hasEnum, n.enumRaw = true, list
		for _, x := range list {
			s, err := compileScalar(x)
			if err != nil {
				return fmt.Errorf("enum: %w", err)
			}
			n.enum = append(n.enum, s)
		}
	}
	if v, ok := doc["const"]; ok {
		if n.konst, err = compileScalar(v); err != nil {
			return fmt.Errorf("const: %w", err)
		}
		n.hasConst, n.constRaw = true, v
	}
	for _, c := range []struct {
		keyword string
		dst     *int
	}{
		{"minProperties", &n.minProps}, {"maxProperties", &n.maxProps},
		{"minItems", &n.minItems}, {"maxItems", &n.maxItems},
		{"minLength", &n.minLength}, {"maxLength", &n.maxLength},
	} {
		if v, ok := doc[c.keyword]; ok {
			if *c.dst, err = compileCount(v); err != nil {
				return fmt.Errorf("%s: %w", c.keyword, err)
			}
		}
	}
	for _, c := range []struct {
		keyword string
		dst     **bound
	}{
		{"minimum", &n.minimum}, {"maximum", &n.maximum},
		{"exclusiveMinimum", &n.exclusiveMinimum}, {"exclusiveMaximum", &n.exclusiveMaximum},
	} {
		if v, ok := doc[c.keyword]; ok {
			r, err := compileNumber(v)
			if err != nil {
				return fmt.Errorf("%s: %w", c.keyword, err)
			}
			*c.dst = newBound(r)
		}
	}
	if v, ok := doc["pattern"]; ok {
		s, isString := v.(string)
		if !isString {
			return fmt.Errorf("pattern is a %T, not a string", v)
		}
		// The library's default engine is Go's regexp, unanchored.
		if n.pattern, err = regexp.Compile(s); err != nil {
			return fmt.Errorf("pattern: %w", err)
		}
	}
	if v, ok := doc["required"]; ok {
		list, isList := v.([]any)
		if !isList {
			return fmt.Errorf("required is a %T, not an array", v)
		}
		for _, x := range list {
			s, isString := x.(string)
			if !isString {
				return fmt.Errorf("required lists a %T, not a string", x)
			}
			n.required = append(n.required, s)
		}
	}
	if v, ok := doc["properties"]; ok {
		props, isObject := v.(map[string]any)
		if !isObject {
			return fmt.Errorf("properties is a %T, not an object", v)
		}
		for _, name := range sortedKeys(props) {
			child, err := compileNode(props[name], at+"/"+jsonPointer([]string{name})[1:], false)
			if err != nil {
				return err
			}
			n.props = append(n.props, propCheck{name: name, required: slices.Contains(n.required, name), node: child})
		}
	}
	for _, r := range n.required {
		if !n.hasProp(r) && !slices.Contains(n.requiredOnly, r) {
			n.requiredOnly = append(n.requiredOnly, r)
		}
	}
	if v, ok := doc["additionalProperties"]; ok {
		child, err := compileNode(v, at+"/*", false)
		if err != nil {
			return err
		}
		switch {
		case child.never:
			n.additionalFalse = true
		case !child.always:
			n.additional = child
		}
	}
	if v, ok := doc["items"]; ok {
		child, err := compileNode(v, at+"/[]", false)
		if err != nil {
			return err
		}
		if !child.always {
			n.items = child
		}
	}
	return nil
}

func compileTypes(v any) (jsonType, error) {
	var list []any
	switch v := v.(type) {
	case string:
		list = []any{v}
	case []any:
		list = v
	default:
		return 0, fmt.Errorf("type is a %T, not a string or array", v)
	}
	var t jsonType
	for _, x := range list {
		name, _ := x.(string)
		i := slices.IndexFunc(typeNames, func(n struct {
			t    jsonType
			name string
		}) bool {
			return n.name == name
		})
		if i < 0 {
			return 0, fmt.Errorf("unknown type %v", x)
		}
		t |= typeNames[i].t
	}
	return t, nil
}

func compileScalar(v any) (scalar, error) {
	switch v := v.(type) {
	case nil:
		return scalar{t: typeNull}, nil
	case bool:
		return scalar{t: typeBoolean, b: v}, nil
	case string:
		return scalar{t: typeString, s: v}, nil
	case json.Number:
		r, err := compileNumber(v)
		if err != nil {
			return scalar{}, err
		}
		return scalar{t: typeNumber, num: newBound(r)}, nil
	}
	return scalar{}, fmt.Errorf("value %v is a %T: only null, boolean, string and number values are compiled", v, v)
}

func compileNumber(v any) (*big.Rat, error) {
	num, ok := v.(json.Number)
	if !ok {
		return nil, fmt.Errorf("%v is a %T, not a number", v, v)
	}
	r, ok := new(big.Rat).SetString(string(num))
	if !ok {
		return nil, fmt.Errorf("number %s does not parse", num)
	}
	return r, nil
}

func compileCount(v any) (int, error) {
	r, err := compileNumber(v)
	if err != nil {
		return 0, err
	}
	if !r.IsInt() || r.Sign() < 0 || !r.Num().IsInt64() || r.Num().Int64() > math.MaxInt32 {
		return 0, fmt.Errorf("%s is not a count", r.RatString())
	}
	return int(r.Num().Int64()), nil
}

func (n *checkNode) hasProp(name string) bool {
	for i := range n.props {
		if n.props[i].name == name {
			return true
		}
	}
	return false
}

// instanceLoc is the path to the value being checked, a chain on the
// stack: it becomes a JSON pointer only when a problem is reported.
type instanceLoc struct {
	parent *instanceLoc
	token  string
}

func (l *instanceLoc) pointer() string {
	var tokens []string
	for ; l != nil; l = l.parent {
		tokens = append(tokens, l.token)
	}
	slices.Reverse(tokens)
	return jsonPointer(tokens)
}

// child is the location of v's member token; nil when not reporting, so
// that the fast pass builds no locations.
func (st *checkState) child(at *instanceLoc, token string) *instanceLoc {
	if st == nil {
		return nil
	}
	return &instanceLoc{parent: at, token: token}
}

// checkState collects the problems of one validation. A nil *checkState is
// the fast pass: check stops at the first failure and reports nothing.
type checkState struct {
	problems []SchemaProblem
	// foreign is set on a value that is not one of the JSON types of a
	// decoded payload (or a non-finite float64): the library decides those.
	foreign bool
}

// fail records problem k at at, when reporting, and returns false.
func (st *checkState) fail(at *instanceLoc, k func() jsonschema.ErrorKind) bool {
	if st == nil {
		return false
	}
	e := k()
	keyword := strings.Join(e.KeywordPath(), "/")
	st.problems = append(st.problems, SchemaProblem{Field: at.pointer(), Keyword: keyword, Message: describe(e, keyword)})
	return false
}

// validate runs the fast pass, which allocates nothing, and only if that
// fails the reporting pass. decided is false when the library must decide
// (a foreign value, or the two passes disagreeing, which would be a bug).
func (n *checkNode) validate(doc any) (problems []SchemaProblem, decided bool) {
	if n.check(doc, nil, nil) {
		return nil, true
	}
	var st checkState
	n.check(doc, nil, &st)
	if st.foreign || len(st.problems) == 0 {
		return nil, false
	}
	sortProblems(st.problems)
	return st.problems, true
}

// check reports whether v is valid; with a non-nil st it also collects
// every problem, as the library does: keyword by keyword, a failed type,
// const or enum ending the checks of a value, every other failure
// collected.
func (n *checkNode) check(v any, at *instanceLoc, st *checkState) bool {
	if n.always {
		return true
	}
	if n.never {
		return st.fail(at, func() jsonschema.ErrorKind { return &kind.FalseSchema{} })
	}
	var t jsonType
	var f float64
	switch x := v.(type) {
	case nil:
		t = typeNull
	case bool:
		t = typeBoolean
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			if st != nil {
				st.foreign = true
			}
			return false
		}
		t, f = typeNumber, x
	case string:
		t = typeString
	case []any:
		t = typeArray
	case map[string]any:
		t = typeObject
	default:
		if st != nil {
			st.foreign = true
		}
		return false
	}
	if n.types != 0 && n.types&t == 0 && !(n.types&typeInteger != 0 && t == typeNumber && f == math.Trunc(f)) {
		return st.fail(at, func() jsonschema.ErrorKind { return &kind.Type{Got: t.names()[0], Want: n.types.names()} })
	}
	if n.hasConst && !n.konst.equals(v, t, f) {
		return st.fail(at, func() jsonschema.ErrorKind { return &kind.Const{Got: v, Want: n.constRaw} })
	}
	if n.hasEnum && !n.inEnum(v, t, f) {
		return st.fail(at, func() jsonschema.ErrorKind { return &kind.Enum{Got: v, Want: n.enumRaw} })
	}
	switch t {
	case typeObject:
		return n.checkObject(v.(map[string]any), at, st)
	case typeArray:
		return n.checkArray(v.([]any), at, st)
	case typeString:
		return n.checkString(v.(string), at, st)
	case typeNumber:
		return n.checkNumber(f, at, st)
	}
	return true
}

func (n *checkNode) inEnum(v any, t jsonType, f float64) bool {
	for _, s := range n.enum {
		if s.equals(v, t, f) {
			return true
		}
	}
	return false
}

func (s scalar) equals(v any, t jsonType, f float64) bool {
	if s.t != t {
		return false
	}
	switch t {
	case typeNull:
		return true
	case typeBoolean:
		return v.(bool) == s.b
	case typeString:
		return v.(string) == s.s
	case typeNumber:
		return s.num.cmp(f) == 0
	}
	return false
}

// checkObject checks the properties the schema names by looking each up,
// and walks the object only when it has others: the common valid payload
// costs one map lookup per property.
func (n *checkNode) checkObject(obj map[string]any, at *instanceLoc, st *checkState) bool {
	ok := true
	if n.minProps >= 0 && len(obj) < n.minProps {
		ok = st.fail(at, func() jsonschema.ErrorKind { return &kind.MinProperties{Got: len(obj), Want: n.minProps} })
	}
	if n.maxProps >= 0 && len(obj) > n.maxProps {
		ok = st.fail(at, func() jsonschema.ErrorKind { return &kind.MaxProperties{Got: len(obj), Want: n.maxProps} })
	}
	if !ok && st == nil {
		return false
	}
	matched, present := 0, 0
	for i := range n.props {
		p := &n.props[i]
		v, found := obj[p.name]
		if !found {
			continue
		}
		matched++
		if p.required {
			present++
		}
		if !p.node.check(v, st.child(at, p.name), st) {
			if st == nil {
				return false
			}
			ok = false
		}
	}
	for _, name := range n.requiredOnly {
		if _, found := obj[name]; found {
			present++
		}
	}
	if present < len(n.required) {
		ok = st.fail(at, func() jsonschema.ErrorKind {
			var missing []string
			for _, name := range n.required {
				if _, found := obj[name]; !found {
					missing = append(missing, name)
				}
			}
			return &kind.Required{Missing: missing}
		})
		if st == nil {
			return false
		}
	}
	if matched == len(obj) || (n.additional == nil && !n.additionalFalse) {
		return ok
	}
	var extra []string
	for name, v := range obj {
		if n.hasProp(name) {
			continue
		}
		if n.additionalFalse {
			if st == nil {
				return false
			}
			extra = append(extra, name)
			continue
		}
		if !n.additional.check(v, st.child(at, name), st) {
			if st == nil {
				return false
			}
			ok = false
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra) // the library lists them in map order
		ok = st.fail(at, func() jsonschema.ErrorKind { return &kind.AdditionalProperties{Properties: extra} })
	}
	return ok
}

func (n *checkNode) checkArray(arr []any, at *instanceLoc, st *checkState) bool {
	ok := true
	if n.minItems >= 0 && len(arr) < n.minItems {
		ok = st.fail(at, func() jsonschema.ErrorKind { return &kind.MinItems{Got: len(arr), Want: n.minItems} })
	}
	if n.maxItems >= 0 && len(arr) > n.maxItems {
		ok = st.fail(at, func() jsonschema.ErrorKind { return &kind.MaxItems{Got: len(arr), Want: n.maxItems} })
	}
	if n.items == nil || (!ok && st == nil) {
		return ok
	}
	for i, v := range arr {
		if !n.items.check(v, st.child(at, strconv.Itoa(i)), st) {
			if st == nil {
				return false
			}
			ok = false
		}
	}
	return ok
}

func (n *checkNode) checkString(s string, at *instanceLoc, st *checkState) bool {
	ok := true
	if n.minLength >= 0 || n.maxLength >= 0 {
		length := utf8.RuneCountInString(s)
		if n.minLength >= 0 && length < n.minLength {
			ok = st.fail(at, func() jsonschema.ErrorKind { return &kind.MinLength{Got: length, Want: n.minLength} })
		}
		if n.maxLength >= 0 && length > n.maxLength {
			ok = st.fail(at, func() jsonschema.ErrorKind { return &kind.MaxLength{Got: length, Want: n.maxLength} })
		}
	}
	if n.pattern != nil && !n.pattern.MatchString(s) {
		ok = st.fail(at, func() jsonschema.ErrorKind { return &kind.Pattern{Got: s, Want: n.pattern.String()} })
	}
	return ok
}

func (n *checkNode) checkNumber(f float64, at *instanceLoc, st *checkState) bool {
	ok := true
	if n.minimum != nil && n.minimum.cmp(f) < 0 {
		ok = st.fail(at, func() jsonschema.ErrorKind { return &kind.Minimum{Got: decimalOf(f), Want: n.minimum.rat} })
	}
	if n.maximum != nil && n.maximum.cmp(f) > 0 {
		ok = st.fail(at, func() jsonschema.ErrorKind { return &kind.Maximum{Got: decimalOf(f), Want: n.maximum.rat} })
	}
	if n.exclusiveMinimum != nil && n.exclusiveMinimum.cmp(f) <= 0 {
		ok = st.fail(at, func() jsonschema.ErrorKind {
			return &kind.ExclusiveMinimum{Got: decimalOf(f), Want: n.exclusiveMinimum.rat}
		})
	}
	if n.exclusiveMaximum != nil && n.exclusiveMaximum.cmp(f) >= 0 {
		ok = st.fail(at, func() jsonschema.ErrorKind {
			return &kind.ExclusiveMaximum{Got: decimalOf(f), Want: n.exclusiveMaximum.rat}
		})
	}
	return ok
}
