package schemas

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Bigtable table names.
const (
	TelemetryTable  = "telemetry"
	DeadLetterTable = "deadletter"
	// AggregatesTable holds per-minute summaries per device and metric.
	AggregatesTable = "aggregates"
	// AlertsTable holds threshold alerts.
	AlertsTable = "alerts"
	// DevicesTable is the device registry (ingress/registry documents its rows).
	DevicesTable = "devices"
)

// Column families.
const (
	// FamilyMetrics holds one cell per metric: qualifier = metric name,
	// value = the number as shortest decimal text, cell time = event time.
	FamilyMetrics = "m"
	// FamilyEnvelope holds where the reading came from (registry, subfolder, message id, ...).
	FamilyEnvelope = "e"
	// FamilyDeadLetter holds a dead-lettered message and its error.
	FamilyDeadLetter = "d"
	// FamilyAggregate holds one window's summary (count, min, max, ...).
	FamilyAggregate = "a"
	// FamilyAlert holds one alert.
	FamilyAlert = "x"

	// Families of DevicesTable. Each column holds one live cell: the
	// registry replaces a column (delete, then set) in the same atomic
	// mutation, so reads never depend on garbage collection having run.

	// FamilyDeviceFields holds a device's fields, one column per field, so a
	// patch rewrites only the fields in its update mask.
	FamilyDeviceFields = "d"
	// FamilyDeviceConfig holds the current config version (a decimal, the
	// cell that optimistic concurrency checks) and the current config.
	FamilyDeviceConfig = "c"
	// FamilyConfigHistory holds the last config versions, one column each.
	FamilyConfigHistory = "h"
	// FamilyRegistry holds a registry's record, on the registry's own row.
	FamilyRegistry = "r"
	// FamilyNumID holds the device a numeric id belongs to, on the id's
	// own row, so that each generated numId is claimed exactly once.
	FamilyNumID = "n"
	// FamilyPresence holds which bridge instance holds a device's MQTT
	// connection, on a row of its own so that a connection never makes a
	// device row exist, and what it subscribed to; ingress/devicebus routes
	// config updates and commands by it.
	FamilyPresence = "p"
)

// HotRetention is how long raw readings stay in Bigtable before garbage collection.
const HotRetention = 7 * 24 * time.Hour

// BigtableFamily is a column family and its garbage-collection policy.
// A zero MaxAge means no age limit.
type BigtableFamily struct {
	Name        string
	MaxAge      time.Duration
	MaxVersions int
}

// BigtableTable is one table of the layout.
type BigtableTable struct {
	Name     string
	Families []BigtableFamily
}

// BigtableLayout is every table iotpipe writes, with its families. Local
// provisioning and the Terraform tests read it; it is the single source.
var BigtableLayout = []BigtableTable{
	{Name: TelemetryTable, Families: []BigtableFamily{
		{Name: FamilyMetrics, MaxAge: HotRetention, MaxVersions: 1},
		{Name: FamilyEnvelope, MaxAge: HotRetention, MaxVersions: 1},
	}},
	{Name: DeadLetterTable, Families: []BigtableFamily{
		{Name: FamilyDeadLetter, MaxAge: 30 * 24 * time.Hour, MaxVersions: 1},
	}},
	{Name: AggregatesTable, Families: []BigtableFamily{
		{Name: FamilyAggregate, MaxAge: 90 * 24 * time.Hour, MaxVersions: 1},
	}},
	{Name: AlertsTable, Families: []BigtableFamily{
		{Name: FamilyAlert, MaxAge: 30 * 24 * time.Hour, MaxVersions: 1},
	}},
	// Registry data lives until deleted: no age limit.
	{Name: DevicesTable, Families: []BigtableFamily{
		{Name: FamilyDeviceFields, MaxVersions: 1},
		{Name: FamilyDeviceConfig, MaxVersions: 1},
		{Name: FamilyConfigHistory, MaxVersions: 1},
		{Name: FamilyRegistry, MaxVersions: 1},
		{Name: FamilyNumID, MaxVersions: 1},
		// A connection lasts at most a JWT's 24 h plus the clock skew allowed,
		// so a presence cell older than two days was left by a bridge that
		// died without clearing it.
		{Name: FamilyPresence, MaxAge: 48 * time.Hour, MaxVersions: 1},
	}},
}

// Row is a Bigtable row as the sinks write it: a key and its cells. Every cell
// carries an explicit timestamp derived from the data, so writing the same
// row twice leaves the table unchanged.
type Row struct {
	Key   string
	Cells []Cell
	// AckID is the receipt of the message the row came from; it is not
	// stored, the sink hands it on once the row is written.
	AckID string
}

// Cell is one value of a Row.
type Cell struct {
	Family string
	Column string
	// Millis is the cell timestamp in Unix milliseconds (Bigtable's granularity).
	Millis int64
	Value  []byte
}

// TelemetryKey is the row key of a reading: device, then zero-padded event
// time, then seq. Keys lead with the device id so writes from many devices
// spread over the key space and one device's readings for a time range are
// one contiguous scan (see bigtable.md).
func TelemetryKey(device string, tsMillis, seq int64) string {
	if tsMillis < 0 {
		return fmt.Sprintf("%s#%013d#%d", device, tsMillis, seq)
	}
	// As the Sprintf above, without its cost on every reading.
	b := make([]byte, 0, len(device)+2+13+20)
	b = append(append(b, device...), '#')
	var digits [20]byte
	ts := strconv.AppendInt(digits[:0], tsMillis, 10)
	for range 13 - len(ts) {
		b = append(b, '0')
	}
	b = append(append(b, ts...), '#')
	return string(strconv.AppendInt(b, seq, 10))
}

// TelemetryPrefix is the key prefix of all readings of a device.
func TelemetryPrefix(device string) string { return device + "#" }

// TelemetryRow lays out one event as its Bigtable row.
func TelemetryRow(e Event) Row {
	metrics := e.Metrics.inOrder()
	cells := make([]Cell, 0, len(metrics)+6)
	// The values share one buffer: a row is written once and never changed.
	vals := make([]byte, 0, 24*len(metrics)+len(e.Registry)+len(e.Location)+len(e.SubFolder)+len(e.MessageID)+24)
	cell := func(family, col string, start int) {
		cells = append(cells, Cell{family, col, e.TS, vals[start:len(vals):len(vals)]})
	}
	for _, m := range metrics {
		start := len(vals)
		vals = strconv.AppendFloat(vals, m.Value, 'g', -1, 64)
		cell(FamilyMetrics, m.Name, start)
	}
	env := func(col, v string) {
		if v != "" {
			start := len(vals)
			vals = append(vals, v...)
			cell(FamilyEnvelope, col, start)
		}
	}
	env("registry", e.Registry)
	env("location", e.Location)
	env("subfolder", e.SubFolder)
	env("message_id", e.MessageID)
	start := len(vals)
	vals = strconv.AppendInt(vals, e.PublishMillis, 10)
	cell(FamilyEnvelope, "publish_ms", start)
	if e.Buffered {
		env("buffered", "true")
	}
	return Row{Key: TelemetryKey(e.DeviceID, e.TS, e.Seq), Cells: cells, AckID: e.AckID}
}

// DeadLetterKey orders dead letters by stage and publish time; the message id
// makes the key unique and a redelivered message land on the same row.
func DeadLetterKey(stage string, publishMillis int64, messageID string) string {
	return fmt.Sprintf("%s#%013d#%s", stage, publishMillis, messageID)
}

// DeadLetterRow lays out a dead letter as its Bigtable row.
func DeadLetterRow(d DeadLetter) Row {
	attrs, _ := json.Marshal(d.Attributes) // a map[string]string always marshals
	ts := d.PublishMillis
	cells := []Cell{
		{FamilyDeadLetter, "payload", ts, d.PayloadBytes},
		{FamilyDeadLetter, "attributes", ts, attrs},
		{FamilyDeadLetter, "error", ts, []byte(d.ErrorMessage)},
		{FamilyDeadLetter, "stage", ts, []byte(d.Stage)},
		{FamilyDeadLetter, "dead_lettered_ms", ts, []byte(strconv.FormatInt(d.TimestampMillis, 10))},
	}
	if d.SchemaID != "" {
		cells = append(cells, Cell{FamilyDeadLetter, "schema_id", ts, []byte(d.SchemaID)})
	}
	return Row{Key: DeadLetterKey(d.Stage, d.PublishMillis, d.MessageID), Cells: cells, AckID: d.AckID}
}

// AggregateKey is the row key of one window's summary of one metric:
// device, metric, then zero-padded window start, so "one device, one
// metric, a time range at 1 min resolution" is one contiguous scan.
func AggregateKey(device, metric string, windowStartMillis int64) string {
	return fmt.Sprintf("%s#%s#%013d", device, metric, windowStartMillis)
}

// AggregateRow lays out an aggregate as its Bigtable row. A late pane carries
// the window's full totals and rewrites the same cells.
func AggregateRow(a Aggregate) Row {
	ts := a.WindowStart
	f := func(v float64) []byte { return []byte(strconv.FormatFloat(v, 'g', -1, 64)) }
	i := func(v int64) []byte { return []byte(strconv.FormatInt(v, 10)) }
	b := func(v bool) []byte { return []byte(strconv.FormatBool(v)) }
	return Row{Key: AggregateKey(a.DeviceID, a.Metric, a.WindowStart), Cells: []Cell{
		{FamilyAggregate, "count", ts, i(a.Count)},
		{FamilyAggregate, "min", ts, f(a.Min)},
		{FamilyAggregate, "max", ts, f(a.Max)},
		{FamilyAggregate, "sum", ts, f(a.Sum)},
		{FamilyAggregate, "mean", ts, f(a.Mean)},
		{FamilyAggregate, "last", ts, f(a.Last)},
		{FamilyAggregate, "last_ts", ts, i(a.LastTS)},
		{FamilyAggregate, "window_end", ts, i(a.WindowEnd)},
		{FamilyAggregate, "late", ts, b(a.Late)},
		{FamilyAggregate, "buffered", ts, b(a.Buffered)},
	}}
}

// AlertRow lays out an alert as its Bigtable row, keyed like the reading
// that raised it plus the metric.
func AlertRow(a Alert) Row {
	ts := a.TS
	return Row{Key: TelemetryKey(a.DeviceID, a.TS, a.Seq) + "#" + a.Metric, Cells: []Cell{
		{FamilyAlert, "kind", ts, []byte(a.Kind)},
		{FamilyAlert, "value", ts, []byte(strconv.FormatFloat(a.Value, 'g', -1, 64))},
		{FamilyAlert, "threshold", ts, []byte(strconv.FormatFloat(a.Threshold, 'g', -1, 64))},
		{FamilyAlert, "site", ts, []byte(a.Site)},
		{FamilyAlert, "owner", ts, []byte(a.Owner)},
	}}
}
