package adminapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// fieldMask is the set of top-level device fields a response keeps; nil
// keeps them all.
type fieldMask map[string]bool

// deviceFields are the JSON names of a device's fields, what a fieldMask may name.
var deviceFields = jsonNames(reflect.TypeFor[deviceJSON]())

func jsonNames(t reflect.Type) map[string]bool {
	names := make(map[string]bool)
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if f.Anonymous && tag == "" {
			for n := range jsonNames(f.Type) {
				names[n] = true
			}
			continue
		}
		if name, _, _ := strings.Cut(tag, ","); name != "" && name != "-" {
			names[name] = true
		}
	}
	return names
}

// parseFieldMask parses a comma-separated fieldMask. Fields may be written
// in camelCase or, as IoT Core's documentation did, snake_case; a nested
// path (config.version) keeps its whole top-level field.
func parseFieldMask(s string) (fieldMask, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	m := fieldMask{}
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		top, _, _ := strings.Cut(f, ".")
		name := camelCase(top)
		if !deviceFields[name] {
			return nil, fmt.Errorf("fieldMask: %q is not a device field", f)
		}
		m[name] = true
	}
	return m, nil
}

// camelCase turns last_heartbeat_time into lastHeartbeatTime.
func camelCase(s string) string {
	parts := strings.Split(s, "_")
	for i := 1; i < len(parts); i++ {
		if p := parts[i]; p != "" {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(parts, "")
}

// withIDs adds the fields a list always returns.
func (m fieldMask) withIDs() fieldMask {
	out := fieldMask{"id": true, "numId": true}
	for k := range m {
		out[k] = true
	}
	return out
}

// apply returns d's JSON object with only the fields in m.
func (m fieldMask) apply(d deviceJSON) map[string]json.RawMessage {
	var obj map[string]json.RawMessage
	b, err := json.Marshal(d)
	if err == nil {
		err = json.Unmarshal(b, &obj)
	}
	if err != nil { // a deviceJSON always round-trips
		return map[string]json.RawMessage{}
	}
	for k := range obj {
		if m != nil && !m[k] {
			delete(obj, k)
		}
	}
	return obj
}

// int64Value is a proto3 JSON int64: a decimal string, or a number.
type int64Value int64

func (v *int64Value) UnmarshalJSON(b []byte) error {
	s := string(b)
	if s == "null" {
		return nil
	}
	if unq, err := strconv.Unquote(s); err == nil {
		s = unq
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return fmt.Errorf("%s is not an int64", clip(string(b)))
	}
	*v = int64Value(n)
	return nil
}

// bytesValue is a proto3 JSON bytes field: base64, standard or URL-safe,
// padded or not.
type bytesValue []byte

func (v *bytesValue) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("%s is not a base64 string", clip(string(b)))
	}
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		s = strings.NewReplacer("-", "+", "_", "/").Replace(s)
	}
	out, err := base64.RawStdEncoding.DecodeString(s)
	if err != nil {
		return fmt.Errorf("binaryData is not base64: %w", err)
	}
	*v = bytes.Clone(out)
	return nil
}

func clip(s string) string {
	const max = 40
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
