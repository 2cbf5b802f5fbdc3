// Package schemas holds iotpipe's data contracts: the telemetry event model and
// its parsing, the versioned telemetry JSON Schemas per device class, the
// dead-letter record, and the Bigtable layout every writer and reader shares.
package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
)

// MaxTelemetryBytes is Cloud IoT Core's telemetry payload limit.
const MaxTelemetryBytes = 256 * 1024

// IoT Core Pub/Sub attribute names set by the bridge on every message.
const (
	AttrDeviceID       = "deviceId"
	AttrDeviceNumID    = "deviceNumId"
	AttrRegistryID     = "deviceRegistryId"
	AttrRegistryRegion = "deviceRegistryLocation"
	AttrProjectID      = "projectId"
	AttrSubFolder      = "subFolder"
	// AttrDeviceClass is iotpipe's own attribute: the device class the
	// registry knows for the device, which selects its payload schema.
	AttrDeviceClass = "deviceClass"
)

// Event is one telemetry reading after parsing: the device payload
// {"ts": <ms>, "seq": <n>, "metrics": {...}, "buffered": bool} joined with the
// IoT Core attributes the bridge attached to the Pub/Sub message.
type Event struct {
	DeviceID  string
	Registry  string
	Location  string
	Project   string
	SubFolder string
	// MessageID is the Pub/Sub message id (or archive record id): provenance only,
	// never identity; identity is (DeviceID, Seq).
	MessageID string
	// TS is the device's event time in Unix milliseconds.
	TS  int64
	Seq int64
	// Metrics maps metric name to value. Sorted iteration is via MetricNames.
	Metrics map[string]float64
	// Buffered is true for readings an edge agent replays from its buffer.
	Buffered bool
	// PublishMillis is when Pub/Sub accepted the message (Unix ms).
	PublishMillis int64

	// DeviceClass names the device's class (attribute deviceClass, set by the
	// bridge from the registry, or the reference data); SchemaID is the
	// versioned schema the payload was validated against, its $id
	// ("iotpipe:telemetry/thermostat/1.1", see TelemetrySchemaID).
	DeviceClass string
	SchemaID    string
	// Enrichment is filled by the reference join.
	Enrichment Enrichment

	// AckID is the source's receipt for the message, handed back once the
	// reading is written; empty where the runner acknowledges by itself.
	AckID string
}

// MetricNames returns the event's metric names in sorted order, so every
// writer produces the same cells in the same order.
func (e Event) MetricNames() []string {
	names := make([]string, 0, len(e.Metrics))
	for k := range e.Metrics {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

type payload struct {
	TS       *int64             `json:"ts"`
	Seq      *int64             `json:"seq"`
	Metrics  map[string]float64 `json:"metrics"`
	Buffered bool               `json:"buffered"`
}

// ParseEvent decodes a device payload and the message attributes into an Event.
// It checks only what every later stage relies on (shape, identity, finite
// values); schema validation per device class is a separate step.
func ParseEvent(data []byte, attrs map[string]string) (Event, error) {
	if len(data) > MaxTelemetryBytes {
		return Event{}, fmt.Errorf("payload is %d bytes, over the %d-byte telemetry limit", len(data), MaxTelemetryBytes)
	}
	device := attrs[AttrDeviceID]
	if device == "" {
		return Event{}, errors.New("message has no " + AttrDeviceID + " attribute")
	}
	var p payload
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&p); err != nil {
		return Event{}, fmt.Errorf("payload of device %q is not a telemetry JSON object: %w", device, err)
	}
	if dec.More() {
		return Event{}, fmt.Errorf("payload of device %q has trailing data after the JSON object", device)
	}
	switch {
	case p.TS == nil:
		return Event{}, fmt.Errorf("payload of device %q has no \"ts\"", device)
	case *p.TS <= 0:
		return Event{}, fmt.Errorf("payload of device %q has ts %d; want Unix milliseconds > 0", device, *p.TS)
	case p.Seq == nil:
		return Event{}, fmt.Errorf("payload of device %q has no \"seq\"", device)
	case *p.Seq < 0:
		return Event{}, fmt.Errorf("payload of device %q has negative seq %d", device, *p.Seq)
	case len(p.Metrics) == 0:
		return Event{}, fmt.Errorf("payload of device %q has no metrics", device)
	}
	for name, v := range p.Metrics {
		if name == "" {
			return Event{}, fmt.Errorf("payload of device %q has a metric with an empty name", device)
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return Event{}, fmt.Errorf("payload of device %q: metric %q is not finite", device, name)
		}
	}
	return Event{
		DeviceID:    device,
		Registry:    attrs[AttrRegistryID],
		Location:    attrs[AttrRegistryRegion],
		Project:     attrs[AttrProjectID],
		SubFolder:   attrs[AttrSubFolder],
		DeviceClass: attrs[AttrDeviceClass],
		TS:          *p.TS,
		Seq:         *p.Seq,
		Metrics:     p.Metrics,
		Buffered:    p.Buffered,
	}, nil
}
