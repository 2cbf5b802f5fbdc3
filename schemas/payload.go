package schemas

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
)

// MaxExactInteger is the largest ts or seq a payload may carry: 2^53-1, the
// largest integer a float64 (and so every JSON reader) holds exactly. The
// telemetry schemas set it as the maximum of both.
const MaxExactInteger = 1<<53 - 1

// DecodePayload decodes a telemetry payload, once, into the generic form that
// schema validation (SchemaRegistry.Validate) and EventFromPayload both read:
// map[string]any, []any, string, float64, bool, nil. The data must be exactly
// one JSON object. Numbers become float64, which bounds the cost of checking
// them (the validator's exact arithmetic on a literal like 1e-999999 would not
// be) and is exact for every integer up to MaxExactInteger.
func DecodePayload(data []byte) (map[string]any, error) {
	return new(PayloadDecoder).Decode(data)
}

// PayloadDecoder is DecodePayload keeping its memory from one payload to the
// next: the maps a call returns are cleared and filled again by the next
// call, and object keys it has read before (metric names) are not allocated
// again. Two maps and the names were a third of the bytes a reading
// allocated on its way through the backfill, before any sink. What Decode
// returns is valid until the decoder's next call; a decoder is for one
// goroutine at a time. Its zero value is ready to use.
type PayloadDecoder struct {
	maps []map[string]any // the maps of the last call, to fill again
	used int              // how many of maps this call has handed out
	keys internSet
}

const (
	// maxKeptMaps and maxKeptMapLen bound what a decoder keeps: a payload's
	// objects beyond the first few, and big ones, are left to the collector.
	maxKeptMaps   = 8
	maxKeptMapLen = 64
)

// Decode is DecodePayload.
func (d *PayloadDecoder) Decode(data []byte) (map[string]any, error) {
	if len(data) > MaxTelemetryBytes {
		return nil, fmt.Errorf("payload is %d bytes, over the %d-byte telemetry limit", len(data), MaxTelemetryBytes)
	}
	d.used = 0
	if obj, ok := decodePayloadObject(data, d); ok {
		return obj, nil
	}
	var doc any
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("payload is not JSON: %w", err)
	}
	obj, ok := doc.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("payload is a JSON %s, not an object", jsonKind(doc))
	}
	return obj, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case float64:
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	default:
		return "object"
	}
}

// EventFromPayload builds the Event of a payload decoded by DecodePayload and
// the message attributes, with the checks every later stage relies on (device attribute,
// ts > 0, seq >= 0, at least one metric, named, numeric). It does not set
// MessageID, PublishMillis, DeviceClass or SchemaID.
func EventFromPayload(doc map[string]any, attrs map[string]string) (Event, error) {
	device := attrs[AttrDeviceID]
	if device == "" {
		return Event{}, errors.New("message has no " + AttrDeviceID + " attribute")
	}
	ts, err := payloadInteger(doc, "ts", 1)
	if err != nil {
		return Event{}, fmt.Errorf("payload of device %q: %w", device, err)
	}
	seq, err := payloadInteger(doc, "seq", 0)
	if err != nil {
		return Event{}, fmt.Errorf("payload of device %q: %w", device, err)
	}
	raw, ok := doc["metrics"].(map[string]any)
	if !ok || len(raw) == 0 {
		return Event{}, fmt.Errorf("payload of device %q has no metrics object with at least one metric", device)
	}
	metrics := make(Metrics, 0, len(raw))
	for name, v := range raw {
		f, ok := v.(float64)
		switch {
		case name == "":
			return Event{}, fmt.Errorf("payload of device %q has a metric with an empty name", device)
		case !ok:
			return Event{}, fmt.Errorf("payload of device %q: metric %q is a %s, not a number", device, name, jsonKind(v))
		case math.IsNaN(f) || math.IsInf(f, 0):
			return Event{}, fmt.Errorf("payload of device %q: metric %q is not finite", device, name)
		}
		metrics = append(metrics, Metric{name, f})
	}
	metrics.sort()
	buffered := false
	if b, present := doc["buffered"]; present {
		if buffered, ok = b.(bool); !ok {
			return Event{}, fmt.Errorf("payload of device %q: buffered is a %s, not a boolean", device, jsonKind(b))
		}
	}
	return Event{
		DeviceID:  device,
		Registry:  attrs[AttrRegistryID],
		Location:  attrs[AttrRegistryRegion],
		Project:   attrs[AttrProjectID],
		SubFolder: attrs[AttrSubFolder],
		TS:        ts,
		Seq:       seq,
		Metrics:   metrics,
		Buffered:  buffered,
	}, nil
}

// payloadInteger reads doc[name] as an integer in [min, MaxExactInteger].
func payloadInteger(doc map[string]any, name string, min int64) (int64, error) {
	v, present := doc[name]
	if !present {
		return 0, fmt.Errorf("no %q", name)
	}
	f, ok := v.(float64)
	if !ok {
		return 0, fmt.Errorf("%s is a %s, not an integer", name, jsonKind(v))
	}
	if f != math.Trunc(f) || f < float64(min) || f > MaxExactInteger {
		return 0, fmt.Errorf("%s is %v; want an integer in [%d, %d]", name, f, min, int64(MaxExactInteger))
	}
	return int64(f), nil
}
