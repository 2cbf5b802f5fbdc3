package validate

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

// Reasons a message is refused. Each names a counter in namespace
// iotpipe.validate and starts the dead letter's errorMessage ("reason: ...").
const (
	ReasonOversized       = "oversized"
	ReasonNoDeviceID      = "no_device_id"
	ReasonUnknownClass    = "unknown_class"
	ReasonMalformed       = "malformed"
	ReasonSchemaViolation = "schema_violation"
	ReasonTSInFuture      = "ts_in_future"
	ReasonTSTooOld        = "ts_too_old"
)

// Reasons lists every rejection reason.
var Reasons = []string{
	ReasonOversized, ReasonNoDeviceID, ReasonUnknownClass, ReasonMalformed,
	ReasonSchemaViolation, ReasonTSInFuture, ReasonTSTooOld,
}

// DefaultMaxFuture is the default bound on device clocks running ahead, see Config.
const DefaultMaxFuture = 10 * time.Minute

// Config tunes the checks.
type Config struct {
	// MaxFuture is how far after its message's publish time an event's ts may
	// lie (default 10 min): device clocks drift, but a reading cannot be sent
	// before it is taken. Zero or less means the default.
	MaxFuture time.Duration
	// MaxPast is how far before its publish time an event's ts may lie.
	// Zero or less means no limit, the default: edge agents replay buffered
	// readings with their original times, and backfills replay old days;
	// retention, not validation, decides how long readings stay hot.
	MaxPast time.Duration
}

func (c Config) withDefaults() Config {
	if c.MaxFuture <= 0 {
		c.MaxFuture = DefaultMaxFuture
	}
	return c
}

// Rejection says why a message was refused.
type Rejection struct {
	// Reason is one of the Reason constants.
	Reason string
	// SchemaID is the schema the payload was checked against, when it got that far.
	SchemaID string
	Err      error
}

func (r *Rejection) Error() string {
	if r.Err == nil {
		return r.Reason
	}
	return r.Reason + ": " + r.Err.Error()
}

func (r *Rejection) Unwrap() error { return r.Err }

// Checker is the plain-Go core of Validate: no Beam, so it can be tested,
// fuzzed and benchmarked alone. It is safe for concurrent use.
type Checker struct {
	registry               *schemas.SchemaRegistry
	maxFutureMs, maxPastMs int64
	decoders               sync.Pool // of *schemas.PayloadDecoder
}

// NewChecker compiles the telemetry schemas.
func NewChecker(cfg Config) (*Checker, error) {
	cfg = cfg.withDefaults()
	reg, err := schemas.LoadSchemas()
	if err != nil {
		return nil, err
	}
	return &Checker{registry: reg, maxFutureMs: cfg.MaxFuture.Milliseconds(), maxPastMs: cfg.MaxPast.Milliseconds()}, nil
}

// Check turns m into an Event or says why it cannot. In order: the payload
// size, the deviceId attribute, the device class (attribute deviceClass,
// absent means schemas.DefaultDeviceClass), one JSON decode, the latest
// schema of the class, the checks of schemas.EventFromPayload, and the event
// time against the publish time. A message without a publish time
// (PublishMillis <= 0) skips the last check: there is nothing deterministic
// to compare with.
func (c *Checker) Check(m pubsubsource.Message) (schemas.Event, *Rejection) {
	if len(m.Data) > schemas.MaxTelemetryBytes {
		return schemas.Event{}, reject(ReasonOversized, "", "payload is %d bytes, over the %d-byte telemetry limit", len(m.Data), schemas.MaxTelemetryBytes)
	}
	device := m.Attributes[schemas.AttrDeviceID]
	if device == "" {
		return schemas.Event{}, reject(ReasonNoDeviceID, "", "message has no %s attribute", schemas.AttrDeviceID)
	}
	class := m.Attributes[schemas.AttrDeviceClass]
	if class == "" {
		class = schemas.DefaultDeviceClass
	}
	if _, ok := c.registry.Latest(class); !ok {
		_, err := c.registry.Validate(class, nil) // says which classes exist
		return schemas.Event{}, reject(ReasonUnknownClass, "", "device %q: %w", device, err)
	}
	dec, _ := c.decoders.Get().(*schemas.PayloadDecoder)
	if dec == nil {
		dec = new(schemas.PayloadDecoder)
	}
	doc, err := dec.Decode(m.Data)
	if err != nil {
		return schemas.Event{}, reject(ReasonMalformed, "", "device %q: %w", device, err)
	}
	// A rejection's error may hold parts of doc, so only a decoder whose
	// payload passed goes back to be used again.
	schemaID, err := c.registry.Validate(class, doc)
	if err != nil {
		return schemas.Event{}, reject(ReasonSchemaViolation, schemaID, "device %q of class %s: %w", device, class, err)
	}
	e, err := schemas.EventFromPayload(doc, m.Attributes)
	if err != nil {
		return schemas.Event{}, reject(ReasonMalformed, schemaID, "%w", err)
	}
	c.decoders.Put(dec)
	if m.PublishMillis > 0 {
		if ahead := e.TS - m.PublishMillis; ahead > c.maxFutureMs {
			return schemas.Event{}, reject(ReasonTSInFuture, schemaID, "device %q: ts %d is %s after the publish time %s; at most %s allowed",
				device, e.TS, millis(ahead), formatMillis(m.PublishMillis), millis(c.maxFutureMs))
		}
		if behind := m.PublishMillis - e.TS; c.maxPastMs > 0 && behind > c.maxPastMs {
			return schemas.Event{}, reject(ReasonTSTooOld, schemaID, "device %q: ts %d is %s before the publish time %s; at most %s allowed",
				device, e.TS, millis(behind), formatMillis(m.PublishMillis), millis(c.maxPastMs))
		}
	}
	e.MessageID = m.ID
	e.PublishMillis = m.PublishMillis
	e.AckID = m.AckID
	e.DeviceClass = class
	e.SchemaID = schemaID
	return e, nil
}

func reject(reason, schemaID, format string, args ...any) *Rejection {
	return &Rejection{Reason: reason, SchemaID: schemaID, Err: fmt.Errorf(format, args...)}
}

// millis writes a span of milliseconds; ts may be up to 2^53 ms away, past
// what a time.Duration holds.
func millis(ms int64) string {
	if ms > math.MaxInt64/int64(time.Millisecond) {
		return fmt.Sprintf("%d days", ms/(24*time.Hour).Milliseconds())
	}
	return (time.Duration(ms) * time.Millisecond).String()
}

func formatMillis(ms int64) string {
	return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
