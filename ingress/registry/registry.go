// Package registry is the device registry: Cloud IoT Core's registries and
// devices, in IoT Core's JSON shape, stored in the Bigtable table schemas.DevicesTable.
//
// # Rows
//
// One row per device, one per registry and one per numeric device id, told
// apart by their key and their column families:
//
//	{project}/{location}/{registry}/{device}  device    families d (fields), c (config), h (config history)
//	{project}/{location}/{registry}           registry  family r
//	#numid/{numId, 20 digits}                 numId     family n: the device path that owns it
//	#presence/{project}/{location}/{registry}/{device}
//	                                          presence  family p: the bridge instance holding its connection
//
// None of the key parts can contain "/" (iotcore.ParseClientID splits on
// it), so a registry's devices are exactly the rows with prefix
// "{project}/{location}/{registry}/": listing them is one contiguous scan
// that neither includes the registry's own row nor another registry's
// devices ("r/" is not a prefix of "r2/"). Keys lead with the project, not a
// time, so writes spread with the tenants; "#" sorts before every project id.
//
// Every write of a device is a single-row mutation, so it is atomic. Those
// that depend on what the row holds are Bigtable CheckAndMutateRow calls:
// create (only if the row is empty), patch (only if the device exists) and
// config updates (only if the current version is the one read, which is
// optimistic concurrency for modifyCloudToDeviceConfig). A new numId is
// claimed the same way on its own row before the device row is written.
// Presence (presence.go) is conditional on the connection's generation.
package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
)

// Errors wrapped by the Store, for errors.Is; an API front end maps them to
// the gRPC/HTTP status of the same name.
var (
	ErrNotFound           = errors.New("not found")
	ErrAlreadyExists      = errors.New("already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrAborted is returned when a write kept losing races with other writers.
	ErrAborted = errors.New("aborted")
)

// Limits IoT Core enforced on registry and device resources.
const (
	MaxCredentials        = 3
	MaxEventNotifications = 10
	// MaxConfigBytes is the largest config a device can be sent.
	MaxConfigBytes = 64 << 10
	// ConfigVersionsKept is how many config versions a device keeps.
	ConfigVersionsKept = 10
	MaxMetadataPairs   = 500
	maxMetadataKey     = 128
	maxMetadataValue   = 32 << 10
	maxMetadataTotal   = 256 << 10
)

// Path names a registry: projects/{Project}/locations/{Location}/registries/{Registry}.
type Path struct {
	Project, Location, Registry string
}

// String returns the resource name, projects/{p}/locations/{l}/registries/{r}.
func (p Path) String() string {
	return "projects/" + p.Project + "/locations/" + p.Location + "/registries/" + p.Registry
}

// Device returns the path of device id in this registry.
func (p Path) Device(id string) iotcore.DevicePath {
	return iotcore.DevicePath{Project: p.Project, Location: p.Location, Registry: p.Registry, Device: id}
}

// PathOf returns the registry of a device.
func PathOf(dp iotcore.DevicePath) Path {
	return Path{Project: dp.Project, Location: dp.Location, Registry: dp.Registry}
}

// validate accepts a path whose every part can appear in a client id, which
// also keeps "/" out of row keys.
func (p Path) validate() error {
	if _, err := iotcore.ParseClientID(p.Device("probe").String()); err != nil {
		return fmt.Errorf("%w: registry %s: %w", ErrInvalidArgument, p, err)
	}
	return nil
}

// Registry is a device registry and where its devices' messages go.
type Registry struct {
	ID string `json:"id"`
	// EventNotificationConfigs route telemetry by subfolder; see EventTopic.
	EventNotificationConfigs []EventNotificationConfig `json:"eventNotificationConfigs,omitempty"`
	// StateNotificationConfig is where state messages go; no topic means
	// state is stored nowhere but acknowledged.
	StateNotificationConfig StateNotificationConfig `json:"stateNotificationConfig,omitzero"`
}

// EventNotificationConfig sends the telemetry of one subfolder to a topic.
type EventNotificationConfig struct {
	// SubfolderMatches is compared with the whole subfolder (no leading
	// "/"); empty matches every subfolder, and only the last config may have it.
	SubfolderMatches string `json:"subfolderMatches,omitempty"`
	// PubsubTopicName is projects/{project}/topics/{topic}.
	PubsubTopicName string `json:"pubsubTopicName"`
}

// StateNotificationConfig sends device state to a topic.
type StateNotificationConfig struct {
	PubsubTopicName string `json:"pubsubTopicName,omitempty"`
}

// EventTopic returns the Pub/Sub topic for telemetry published to subFolder
// ("" for /devices/{id}/events): the first config whose SubfolderMatches
// equals subFolder or is empty. ok is false when none matches.
func EventTopic(reg Registry, subFolder string) (topic string, ok bool) {
	for _, c := range reg.EventNotificationConfigs {
		if c.SubfolderMatches == "" || c.SubfolderMatches == subFolder {
			return c.PubsubTopicName, true
		}
	}
	return "", false
}

func (r Registry) validate() error {
	if len(r.EventNotificationConfigs) > MaxEventNotifications {
		return fmt.Errorf("%w: %d event notification configs, at most %d", ErrInvalidArgument,
			len(r.EventNotificationConfigs), MaxEventNotifications)
	}
	seen := make(map[string]bool)
	for i, c := range r.EventNotificationConfigs {
		if err := validTopicName(c.PubsubTopicName); err != nil {
			return fmt.Errorf("%w: eventNotificationConfigs[%d]: %w", ErrInvalidArgument, i, err)
		}
		if c.SubfolderMatches == "" && i != len(r.EventNotificationConfigs)-1 {
			return fmt.Errorf("%w: eventNotificationConfigs[%d]: only the last config may match every subfolder (empty subfolderMatches)",
				ErrInvalidArgument, i)
		}
		if strings.HasPrefix(c.SubfolderMatches, "/") {
			return fmt.Errorf("%w: eventNotificationConfigs[%d]: subfolderMatches %q starts with /", ErrInvalidArgument, i, c.SubfolderMatches)
		}
		if seen[c.SubfolderMatches] {
			return fmt.Errorf("%w: eventNotificationConfigs[%d]: subfolderMatches %q repeated", ErrInvalidArgument, i, c.SubfolderMatches)
		}
		seen[c.SubfolderMatches] = true
	}
	if t := r.StateNotificationConfig.PubsubTopicName; t != "" {
		if err := validTopicName(t); err != nil {
			return fmt.Errorf("%w: stateNotificationConfig: %w", ErrInvalidArgument, err)
		}
	}
	return nil
}

// validTopicName accepts projects/{project}/topics/{topic}, the only form IoT Core took.
func validTopicName(name string) error {
	parts := strings.Split(name, "/")
	if len(parts) != 4 || parts[0] != "projects" || parts[1] == "" || parts[2] != "topics" || parts[3] == "" {
		return fmt.Errorf("pubsubTopicName %q: want projects/{project}/topics/{topic}", name)
	}
	return nil
}

// Status is the reference design's device lifecycle state.
type Status string

// Statuses; a device is created ACTIVE unless told otherwise.
const (
	StatusActive      Status = "ACTIVE"
	StatusInactive    Status = "INACTIVE"
	StatusQuarantined Status = "QUARANTINED"
)

// LogLevel is how much IoT Core logged about a device; "" is unspecified.
type LogLevel string

// Log levels, as IoT Core named them.
const (
	LogNone  LogLevel = "NONE"
	LogError LogLevel = "ERROR"
	LogInfo  LogLevel = "INFO"
	LogDebug LogLevel = "DEBUG"
)

// Device is a device of a registry, in IoT Core's JSON shape plus the
// reference design's class, schema and status.
type Device struct {
	ID string `json:"id"`
	// NumID is assigned by CreateDevice, unique across the table.
	NumID       uint64            `json:"numId,string,omitempty"`
	Credentials []Credential      `json:"credentials,omitempty"`
	Blocked     bool              `json:"blocked,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	DeviceClass string            `json:"deviceClass,omitempty"`
	SchemaID    string            `json:"schemaId,omitempty"`
	Status      Status            `json:"status,omitempty"`
	LogLevel    LogLevel          `json:"logLevel,omitempty"`
	// Config is the current configuration; CreateDevice makes version 1
	// from Config.BinaryData, ModifyConfig the versions after.
	Config DeviceConfig `json:"config,omitzero"`

	// Activity, output only. Nothing records it yet; the bridge will.
	LastHeartbeatTime time.Time    `json:"lastHeartbeatTime,omitzero"`
	LastEventTime     time.Time    `json:"lastEventTime,omitzero"`
	LastStateTime     time.Time    `json:"lastStateTime,omitzero"`
	LastConfigAckTime time.Time    `json:"lastConfigAckTime,omitzero"`
	LastErrorTime     time.Time    `json:"lastErrorTime,omitzero"`
	LastErrorStatus   *ErrorStatus `json:"lastErrorStatus,omitempty"`
}

// ErrorStatus is a google.rpc.Status: the last error a device had.
type ErrorStatus struct {
	Code    int32  `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

// DeviceConfig is one version of a device's configuration.
type DeviceConfig struct {
	Version         int64     `json:"version,string,omitempty"`
	CloudUpdateTime time.Time `json:"cloudUpdateTime,omitzero"`
	BinaryData      []byte    `json:"binaryData,omitempty"`
}

// Credential is a public key a device's JWTs are verified with.
type Credential struct {
	PublicKey PublicKey `json:"publicKey"`
	// ExpirationTime, when set, is when the credential stops being accepted
	// for new connections; it is not deleted.
	ExpirationTime time.Time `json:"expirationTime,omitzero"`
}

// clone returns a deep copy, so callers cannot change a cached device.
func (d Device) clone() Device {
	d.Credentials = slices.Clone(d.Credentials)
	d.Metadata = maps.Clone(d.Metadata)
	d.Config.BinaryData = slices.Clone(d.Config.BinaryData)
	if d.LastErrorStatus != nil {
		s := *d.LastErrorStatus
		d.LastErrorStatus = &s
	}
	return d
}

func validCredentials(creds []Credential) error {
	if len(creds) > MaxCredentials {
		return fmt.Errorf("%w: %d credentials, at most %d", ErrInvalidArgument, len(creds), MaxCredentials)
	}
	for i, c := range creds {
		if _, err := c.PublicKey.Parse(); err != nil {
			return fmt.Errorf("%w: credentials[%d]: %w", ErrInvalidArgument, i, err)
		}
	}
	return nil
}

func validMetadata(md map[string]string) error {
	if len(md) > MaxMetadataPairs {
		return fmt.Errorf("%w: %d metadata pairs, at most %d", ErrInvalidArgument, len(md), MaxMetadataPairs)
	}
	total := 0
	for k, v := range md {
		if len(k) == 0 || len(k) > maxMetadataKey || strings.IndexFunc(k, func(r rune) bool {
			return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_')
		}) >= 0 {
			return fmt.Errorf("%w: metadata key %q: want 1 to %d characters of [a-zA-Z0-9-_]", ErrInvalidArgument, clip(k), maxMetadataKey)
		}
		if len(v) > maxMetadataValue {
			return fmt.Errorf("%w: metadata %q: value of %d bytes, at most %d", ErrInvalidArgument, k, len(v), maxMetadataValue)
		}
		total += len(k) + len(v)
	}
	if total > maxMetadataTotal {
		return fmt.Errorf("%w: metadata of %d bytes, at most %d", ErrInvalidArgument, total, maxMetadataTotal)
	}
	return nil
}

func validStatus(s Status) error {
	switch s {
	case StatusActive, StatusInactive, StatusQuarantined:
		return nil
	}
	return fmt.Errorf("%w: status %q: want ACTIVE, INACTIVE or QUARANTINED", ErrInvalidArgument, clip(string(s)))
}

func validLogLevel(l LogLevel) error {
	switch l {
	case "", LogNone, LogError, LogInfo, LogDebug:
		return nil
	}
	return fmt.Errorf("%w: logLevel %q: want NONE, ERROR, INFO or DEBUG", ErrInvalidArgument, clip(string(l)))
}

// validFree accepts the free-text class and schema ids: short, printable.
func validFree(field, v string) error {
	if len(v) > 256 || strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return fmt.Errorf("%w: %s %q: want at most 256 printable characters", ErrInvalidArgument, field, clip(v))
	}
	return nil
}

// VersionConflictError is ModifyConfig's answer when the version to update
// is not the current one. It is an ErrFailedPrecondition.
type VersionConflictError struct {
	Device          iotcore.DevicePath
	VersionToUpdate int64
	Current         int64
}

func (e *VersionConflictError) Error() string {
	return fmt.Sprintf("%v: device %s: config version to update is %d, current version is %d",
		ErrFailedPrecondition, e.Device, e.VersionToUpdate, e.Current)
}

// Is makes errors.Is(err, ErrFailedPrecondition) true.
func (e *VersionConflictError) Is(target error) bool { return target == ErrFailedPrecondition }

// decodeJSON decodes a stored cell.
func decodeJSON(what string, b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("stored %s is not valid: %w", what, err)
	}
	return nil
}

// clip shortens s for an error message.
func clip(s string) string {
	const max = 100
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
