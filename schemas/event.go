// Package schemas holds iotpipe's data contracts: the telemetry event model and
// its parsing, the versioned telemetry JSON Schemas per device class, the
// dead-letter record, and the Bigtable layout every writer and reader shares.
package schemas

import (
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
