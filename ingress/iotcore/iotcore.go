// Package iotcore is Cloud IoT Core's device-protocol vocabulary: client ids, device ids,
// MQTT topics and Pub/Sub attributes, as pure functions with no I/O.
package iotcore

import (
	"errors"
	"fmt"
	"strings"
)

// Errors wrapped by the parsers, for errors.Is.
var (
	ErrBadClientID = errors.New("bad IoT Core client id")
	ErrBadDeviceID = errors.New("bad IoT Core device id")
	ErrBadTopic    = errors.New("bad IoT Core topic")
)

// DevicePath names one device: the MQTT client id a device connects with.
type DevicePath struct {
	Project, Location, Registry, Device string
}

// String returns the client id form,
// projects/{project}/locations/{location}/registries/{registry}/devices/{device}.
func (dp DevicePath) String() string {
	return "projects/" + dp.Project + "/locations/" + dp.Location +
		"/registries/" + dp.Registry + "/devices/" + dp.Device
}

// ParseClientID parses an MQTT client id of the form
// projects/{project}/locations/{location}/registries/{registry}/devices/{device}.
// The other parts must be non-empty; the device part must pass ValidDeviceRef.
func ParseClientID(id string) (DevicePath, error) {
	parts := strings.Split(id, "/")
	if len(parts) != 8 || parts[0] != "projects" || parts[2] != "locations" ||
		parts[4] != "registries" || parts[6] != "devices" {
		return DevicePath{}, fmt.Errorf("%w %s: want projects/{project}/locations/{location}/registries/{registry}/devices/{device}",
			ErrBadClientID, clip(id))
	}
	for i, name := range []string{"project", "location", "registry"} {
		if parts[2*i+1] == "" {
			return DevicePath{}, fmt.Errorf("%w %s: empty %s", ErrBadClientID, clip(id), name)
		}
	}
	if err := ValidDeviceRef(parts[7]); err != nil {
		return DevicePath{}, fmt.Errorf("%w %s: %w", ErrBadClientID, clip(id), err)
	}
	return DevicePath{Project: parts[1], Location: parts[3], Registry: parts[5], Device: parts[7]}, nil
}

// ValidDeviceRef reports whether id can name a device in a client id or a
// topic: 1 to 255 characters of [-a-zA-Z0-9._+~%] led by a letter or digit
// (so never an MQTT wildcard). It is looser than
// ValidDeviceID on purpose: whether a device exists is the registry's answer,
// and the creation rule is enforced where devices are created.
func ValidDeviceRef(id string) error {
	if len(id) < 1 || len(id) > 255 {
		return fmt.Errorf("%w %s: length %d, want 1 to 255", ErrBadDeviceID, clip(id), len(id))
	}
	if !isLetter(id[0]) && !isDigit(id[0]) {
		return fmt.Errorf("%w %s: must start with a letter or digit", ErrBadDeviceID, clip(id))
	}
	for i := 1; i < len(id); i++ {
		if c := id[i]; !isLetter(c) && !isDigit(c) && !strings.ContainsRune("-._+~%", rune(c)) {
			return fmt.Errorf("%w %s: character %q at %d not in [-a-zA-Z0-9._+~%%]", ErrBadDeviceID, clip(id), c, i)
		}
	}
	return nil
}

// ValidDeviceID reports whether id is a device id IoT Core would have accepted:
// [a-zA-Z][-a-zA-Z0-9._+~%]{2,254}, not starting with "goog".
func ValidDeviceID(id string) error {
	if len(id) < 3 || len(id) > 255 {
		return fmt.Errorf("%w %s: length %d, want 3 to 255", ErrBadDeviceID, clip(id), len(id))
	}
	if !isLetter(id[0]) {
		return fmt.Errorf("%w %s: must start with a letter", ErrBadDeviceID, clip(id))
	}
	for i := 1; i < len(id); i++ {
		if c := id[i]; !isLetter(c) && !isDigit(c) && !strings.ContainsRune("-._+~%", rune(c)) {
			return fmt.Errorf("%w %s: character %q at %d not in [-a-zA-Z0-9._+~%%]", ErrBadDeviceID, clip(id), c, i)
		}
	}
	if strings.HasPrefix(id, "goog") {
		return fmt.Errorf("%w %s: must not start with \"goog\"", ErrBadDeviceID, clip(id))
	}
	return nil
}

// TopicKind is what an IoT Core MQTT topic is for.
type TopicKind int

// The zero TopicKind is no kind, so a zero Topic is never mistaken for a valid one.
const (
	Events   TopicKind = iota + 1 // telemetry, device → cloud
	State                         // device state, device → cloud
	Config                        // configuration, cloud → device
	Commands                      // commands, cloud → device
)

var kindNames = [...]string{Events: "events", State: "state", Config: "config", Commands: "commands"}

// String returns the kind's topic segment ("events", "state", "config", "commands").
func (k TopicKind) String() string {
	if k < Events || k > Commands {
		return fmt.Sprintf("TopicKind(%d)", int(k))
	}
	return kindNames[k]
}

// Topic is a parsed IoT Core MQTT topic.
//
// SubFolder is the part after events/ or commands/ ("" when absent). For a
// commands subscription filter it may be "#", the wildcard devices subscribe with.
type Topic struct {
	Kind      TopicKind
	Device    string
	SubFolder string
}

// String returns the topic name, the inverse of ParseTopic.
func (t Topic) String() string {
	s := "/devices/" + t.Device + "/" + t.Kind.String()
	if t.SubFolder != "" {
		s += "/" + t.SubFolder
	}
	return s
}

// ParseTopic parses one of IoT Core's device topics:
//
//	/devices/{id}/events
//	/devices/{id}/events/{subfolder...}
//	/devices/{id}/state
//	/devices/{id}/config
//	/devices/{id}/commands
//	/devices/{id}/commands/#
//	/devices/{id}/commands/{subfolder...}
//
// A subfolder is one or more non-empty levels without MQTT wildcards.
func ParseTopic(topic string) (Topic, error) {
	const prefix = "/devices/"
	rest, ok := strings.CutPrefix(topic, prefix)
	if !ok {
		return Topic{}, fmt.Errorf("%w %s: want prefix %q", ErrBadTopic, clip(topic), prefix)
	}
	device, rest, ok := strings.Cut(rest, "/")
	if !ok {
		return Topic{}, fmt.Errorf("%w %s: want /devices/{id}/{events|state|config|commands}", ErrBadTopic, clip(topic))
	}
	if err := ValidDeviceRef(device); err != nil {
		return Topic{}, fmt.Errorf("%w %s: %w", ErrBadTopic, clip(topic), err)
	}
	kindName, sub, hasSub := strings.Cut(rest, "/")
	t := Topic{Device: device, SubFolder: sub}
	switch kindName {
	case "events":
		t.Kind = Events
	case "commands":
		t.Kind = Commands
		if sub == "#" {
			return t, nil
		}
	case "state", "config":
		t.Kind = State
		if kindName == "config" {
			t.Kind = Config
		}
		if hasSub {
			return Topic{}, fmt.Errorf("%w %s: %s takes no subfolder", ErrBadTopic, clip(topic), kindName)
		}
		return t, nil
	default:
		return Topic{}, fmt.Errorf("%w %s: unknown kind %s, want events, state, config or commands",
			ErrBadTopic, clip(topic), clip(kindName))
	}
	if hasSub {
		if err := validSubFolder(sub); err != nil {
			return Topic{}, fmt.Errorf("%w %s: %w", ErrBadTopic, clip(topic), err)
		}
	}
	return t, nil
}

func validSubFolder(sub string) error {
	for level := range strings.SplitSeq(sub, "/") {
		if level == "" {
			return fmt.Errorf("subfolder %s has an empty level", clip(sub))
		}
	}
	if strings.ContainsAny(sub, "+#\x00") {
		return fmt.Errorf("subfolder %s contains a wildcard or NUL", clip(sub))
	}
	return nil
}

// Pub/Sub attribute keys IoT Core set on every message it published.
const (
	AttrDeviceID               = "deviceId"
	AttrDeviceNumID            = "deviceNumId"
	AttrDeviceRegistryID       = "deviceRegistryId"
	AttrDeviceRegistryLocation = "deviceRegistryLocation"
	AttrProjectID              = "projectId"
	AttrSubFolder              = "subFolder"
)

// EventAttributes returns the Pub/Sub attributes IoT Core set on a telemetry
// message. subFolder is omitted when empty, as IoT Core did, which also makes
// these the attributes of a state notification; deviceNumId is omitted while
// numID is empty (there is no registry to assign one yet).
func EventAttributes(dp DevicePath, numID string, subFolder string) map[string]string {
	attrs := map[string]string{
		AttrDeviceID:               dp.Device,
		AttrDeviceRegistryID:       dp.Registry,
		AttrDeviceRegistryLocation: dp.Location,
		AttrProjectID:              dp.Project,
	}
	if numID != "" {
		attrs[AttrDeviceNumID] = numID
	}
	if subFolder != "" {
		attrs[AttrSubFolder] = subFolder
	}
	return attrs
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool  { return '0' <= c && c <= '9' }

// clip quotes s for an error message, shortening it so that a hostile
// 64 KB client id or topic cannot flood the logs.
func clip(s string) string {
	const max = 200
	if len(s) > max {
		return fmt.Sprintf("%q… (%d bytes)", s[:max], len(s))
	}
	return fmt.Sprintf("%q", s)
}
