package schemas

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

// annotationKeywords change no validation result; the evolution check ignores them.
var annotationKeywords = map[string]bool{
	"$id": true, "$schema": true, "$comment": true, "title": true, "description": true,
	"examples": true, "default": true, "deprecated": true, "readOnly": true, "writeOnly": true,
}

// CheckMinorEvolution reports whether newer, a JSON Schema document, is a
// valid next minor version of older: it walks both along "properties" and
// allows only new optional properties on an object whose older version
// refused unknown properties ("additionalProperties": false) — or allowed
// them with exactly the schema the new property gets. Every other keyword of
// every existing node must be unchanged, "required" included (as a set), so a
// removed, renamed, retyped, re-constrained, newly required or newly optional
// property is an error. The error lists every violation with its path.
func CheckMinorEvolution(older, newer []byte) error {
	var o, n any
	if err := json.Unmarshal(older, &o); err != nil {
		return fmt.Errorf("older schema is not JSON: %w", err)
	}
	if err := json.Unmarshal(newer, &n); err != nil {
		return fmt.Errorf("newer schema is not JSON: %w", err)
	}
	var problems []string
	compareNodes("", o, n, &problems)
	if len(problems) == 0 {
		return nil
	}
	errs := make([]error, len(problems))
	for i, p := range problems {
		errs[i] = errors.New(p)
	}
	return errors.Join(errs...)
}

// compareNodes compares two schema nodes found at instance path at.
func compareNodes(at string, older, newer any, problems *[]string) {
	where := at
	if where == "" {
		where = "/"
	}
	add := func(format string, args ...any) {
		*problems = append(*problems, where+": "+fmt.Sprintf(format, args...))
	}
	o, oObj := older.(map[string]any)
	n, nObj := newer.(map[string]any)
	if !oObj || !nObj { // boolean schemas
		if !reflect.DeepEqual(older, newer) {
			add("schema changed from %s to %s", compact(older), compact(newer))
		}
		return
	}

	for _, k := range unionKeys(o, n) {
		if annotationKeywords[k] || k == "properties" || k == "required" {
			continue
		}
		ov, inOld := o[k]
		nv, inNew := n[k]
		ov, nv = stripAnnotations(ov), stripAnnotations(nv)
		switch {
		case reflect.DeepEqual(ov, nv) && inOld == inNew:
		case k == "type":
			add("type changed from %s to %s", compact(ov), compact(nv))
		case !inOld:
			add("keyword %q added (%s)", k, compact(nv))
		case !inNew:
			add("keyword %q removed (was %s)", k, compact(ov))
		default:
			add("keyword %q changed from %s to %s", k, compact(ov), compact(nv))
		}
	}

	oReq, nReq := stringSet(o["required"]), stringSet(n["required"])
	for _, name := range sortedKeys(nReq) {
		if !oReq[name] {
			add("property %q became required", name)
		}
	}
	for _, name := range sortedKeys(oReq) {
		if !nReq[name] {
			add("property %q is no longer required", name)
		}
	}

	oProps, _ := o["properties"].(map[string]any)
	nProps, _ := n["properties"].(map[string]any)
	var added []string
	for _, name := range sortedKeys(nProps) {
		if _, ok := oProps[name]; !ok {
			added = append(added, name)
		}
	}
	for _, name := range sortedKeys(oProps) {
		nv, ok := nProps[name]
		if !ok {
			if len(added) > 0 {
				add("property %q removed or renamed (added here: %s)", name, strings.Join(added, ", "))
			} else {
				add("property %q removed", name)
			}
			continue
		}
		compareNodes(at+"/"+name, oProps[name], nv, problems)
	}
	oAdditional, closed := o["additionalProperties"].(bool)
	closed = closed && !oAdditional
	for _, name := range added {
		if closed || reflect.DeepEqual(stripAnnotations(o["additionalProperties"]), stripAnnotations(nProps[name])) {
			continue
		}
		add("property %q added to an object that accepted other properties (additionalProperties is not false), so older payloads may carry %q with values the new schema refuses", name, name)
	}
}

// stripAnnotations returns v without annotation keywords at any depth.
func stripAnnotations(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			if !annotationKeywords[k] {
				out[k] = stripAnnotations(x)
			}
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = stripAnnotations(x)
		}
		return out
	default:
		return v
	}
}

func unionKeys(a, b map[string]any) []string {
	set := map[string]bool{}
	for k := range a {
		set[k] = true
	}
	for k := range b {
		set[k] = true
	}
	return sortedKeys(set)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func stringSet(v any) map[string]bool {
	set := map[string]bool{}
	list, _ := v.([]any)
	for _, x := range list {
		if s, ok := x.(string); ok {
			set[s] = true
		}
	}
	return set
}

func compact(v any) string {
	if v == nil {
		return "nothing"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
