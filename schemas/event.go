// Package schemas holds iotpipe's data contracts: the telemetry event model and
// its parsing, the versioned telemetry JSON Schemas per device class, the
// dead-letter record, and the Bigtable layout every writer and reader shares.
package schemas

import (
	"slices"
	"strings"
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
	// Metrics are the reading's values, sorted by name.
	Metrics Metrics
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

// Metric is one named value of a reading.
type Metric struct {
	Name  string
	Value float64
}

// Metrics are a reading's values, sorted by name, each name once: every
// writer produces the same cells in the same order, and a reading's handful
// of values cost one allocation, where a map cost several.
type Metrics []Metric

// MetricsOf returns m as Metrics (nil for a nil map).
func MetricsOf(m map[string]float64) Metrics {
	if m == nil {
		return nil
	}
	ms := make(Metrics, 0, len(m))
	for name, v := range m {
		ms = append(ms, Metric{name, v})
	}
	ms.sort()
	return ms
}

// Get returns the value of the metric called name.
func (ms Metrics) Get(name string) (float64, bool) {
	for _, m := range ms {
		if m.Name == name {
			return m.Value, true
		}
	}
	return 0, false
}

// sort puts ms in name order.
func (ms Metrics) sort() {
	slices.SortFunc(ms, func(a, b Metric) int { return strings.Compare(a.Name, b.Name) })
}

// inOrder is ms in name order: ms itself, as EventFromPayload and the
// event coder build it, or a sorted copy of an event built out of order.
func (ms Metrics) inOrder() Metrics {
	if ms.sorted() {
		return ms
	}
	ms = slices.Clone(ms)
	ms.sort()
	return ms
}

// sorted reports whether ms is in strict name order.
func (ms Metrics) sorted() bool {
	for i := 1; i < len(ms); i++ {
		if ms[i-1].Name >= ms[i].Name {
			return false
		}
	}
	return true
}
