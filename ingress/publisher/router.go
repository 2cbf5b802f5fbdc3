package publisher

import (
	"context"
	"errors"
	"fmt"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/registry"
)

// IoT Core's payload limits. A front end may refuse bigger messages earlier
// (the MQTT bridge caps whole packets); the Router is where they are enforced.
const (
	MaxTelemetryBytes = 256 << 10
	MaxStateBytes     = 64 << 10
)

// Errors a Router wraps, for errors.Is. They are the device's fault or the
// registry's setup, so resending the same message cannot help; any other
// error from Router.Publish (a registry lookup or Pub/Sub failure) may be
// transient.
var (
	// ErrInvalidMessage: the kind is neither events nor state, or the
	// subfolder is not one a topic can carry.
	ErrInvalidMessage = errors.New("invalid device message")
	// ErrTooLarge: the payload is over MaxTelemetryBytes or MaxStateBytes.
	ErrTooLarge = errors.New("device message too large")
	// ErrNoRoute: telemetry for which no Pub/Sub topic is configured. IoT
	// Core closed an MQTT connection that did this and failed the HTTP call.
	ErrNoRoute = errors.New("no Pub/Sub topic for device telemetry")
)

// Registries is where a Router reads a registry's notification configs;
// *registry.Store is one, and its LookupRegistry is cached, so routing costs
// no Bigtable read per message.
type Registries interface {
	LookupRegistry(ctx context.Context, p registry.Path) (registry.Registry, error)
}

// PubSub is what a Router publishes through; *Publisher is one.
type PubSub interface {
	Publish(ctx context.Context, topicID string, data []byte, attrs map[string]string) (string, error)
}

// Routes says where device messages go. Exactly one of Registries and
// EventsTopic is set.
type Routes struct {
	// Registries, when set, routes as IoT Core did: telemetry by the device
	// registry's eventNotificationConfigs (first subfolderMatches match
	// wins, an empty match is the catch-all), state to its
	// stateNotificationConfig.
	Registries Registries
	// EventsTopic and StateTopic route a bridge without a registry (the
	// sandbox): all telemetry to EventsTopic, state to StateTopic, and with
	// StateTopic empty state is acknowledged and not forwarded. Each is a
	// topic id in the publisher's project or projects/{p}/topics/{t}.
	EventsTopic, StateTopic string
}

// Message is one telemetry or state message of an authenticated device.
type Message struct {
	Device iotcore.DevicePath
	// NumID is the registry's numeric id; empty without a registry.
	NumID string
	// Kind is iotcore.Events or iotcore.State.
	Kind iotcore.TopicKind
	// SubFolder is the telemetry's subfolder ("" for none); state has none.
	SubFolder string
	Data      []byte
}

// Sent says where a message went.
type Sent struct {
	// Topic is the Pub/Sub topic; empty for state that is not forwarded
	// because no state topic is configured (not an error: IoT Core
	// acknowledged such state too).
	Topic     string
	MessageID string
}

// Router turns a device's message into a Pub/Sub message on the topic IoT
// Core would have chosen, with IoT Core's attributes, and publishes it. It is
// the one place where routing and payload limits are decided, for the MQTT
// and HTTP front ends alike. It is safe for concurrent use.
type Router struct {
	pub    PubSub
	routes Routes
}

// NewRouter returns a Router that publishes through pub.
func NewRouter(pub PubSub, routes Routes) (*Router, error) {
	switch {
	case pub == nil:
		return nil, errors.New("publisher: router: nil PubSub")
	case routes.Registries != nil && (routes.EventsTopic != "" || routes.StateTopic != ""):
		// One source of truth: a static topic next to a registry would
		// silently take messages the registry routes nowhere.
		return nil, fmt.Errorf("publisher: router: EventsTopic %q and StateTopic %q are for a bridge without a registry; with one, topics come from its notification configs",
			routes.EventsTopic, routes.StateTopic)
	case routes.Registries == nil && routes.EventsTopic == "":
		return nil, errors.New("publisher: router: neither a registry nor an EventsTopic: telemetry could go nowhere")
	}
	return &Router{pub: pub, routes: routes}, nil
}

// Publish checks m, chooses its topic and publishes it with IoT Core's
// attributes. Like Publisher.Publish it returns only once Pub/Sub confirmed
// the message (or failed, or ctx is done), so a front end may acknowledge
// the device on success.
func (r *Router) Publish(ctx context.Context, m Message) (Sent, error) {
	topic, err := r.route(ctx, m)
	if err != nil || topic == "" {
		return Sent{}, err
	}
	attrs := iotcore.EventAttributes(m.Device, m.NumID, m.SubFolder)
	id, err := r.pub.Publish(ctx, topic, m.Data, attrs)
	if err != nil {
		return Sent{}, fmt.Errorf("publisher: %s from device %s: %w", m.Kind, m.Device, err)
	}
	return Sent{Topic: topic, MessageID: id}, nil
}

// route checks m and returns its topic: "" for state with no state topic.
func (r *Router) route(ctx context.Context, m Message) (string, error) {
	limit := MaxTelemetryBytes
	switch m.Kind {
	case iotcore.Events:
		// The topic grammar owns what a subfolder may be; HTTP's subFolder
		// field must obey the same rules as MQTT's topic levels.
		want := iotcore.Topic{Kind: iotcore.Events, Device: m.Device.Device, SubFolder: m.SubFolder}
		t, err := iotcore.ParseTopic(want.String())
		if err == nil && t != want {
			err = fmt.Errorf("topic %s reads back as %+v", want, t)
		}
		if err != nil {
			return "", fmt.Errorf("publisher: telemetry from device %s: %w: %w", m.Device, ErrInvalidMessage, err)
		}
	case iotcore.State:
		limit = MaxStateBytes
		if m.SubFolder != "" {
			return "", fmt.Errorf("publisher: state from device %s: %w: state has no subfolder, got %q", m.Device, ErrInvalidMessage, clip(m.SubFolder))
		}
	default:
		return "", fmt.Errorf("publisher: message from device %s: %w: kind %v, want events or state", m.Device, ErrInvalidMessage, m.Kind)
	}
	if len(m.Data) > limit {
		return "", fmt.Errorf("publisher: %s from device %s: %w: %d bytes, at most %d", m.Kind, m.Device, ErrTooLarge, len(m.Data), limit)
	}

	if r.routes.Registries == nil {
		if m.Kind == iotcore.State {
			return r.routes.StateTopic, nil
		}
		return r.routes.EventsTopic, nil
	}
	p := registry.PathOf(m.Device)
	reg, err := r.routes.Registries.LookupRegistry(ctx, p)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return "", fmt.Errorf("publisher: %s from device %s: %w: %w", m.Kind, m.Device, ErrNoRoute, err)
	case err != nil:
		return "", fmt.Errorf("publisher: %s from device %s: read the routes of registry %s: %w", m.Kind, m.Device, p, err)
	case m.Kind == iotcore.State:
		return reg.StateNotificationConfig.PubsubTopicName, nil
	}
	topic, ok := registry.EventTopic(reg, m.SubFolder)
	if !ok {
		return "", fmt.Errorf("publisher: telemetry from device %s, subfolder %q: %w: registry %s has no eventNotificationConfig matching it and no catch-all",
			m.Device, clip(m.SubFolder), ErrNoRoute, p)
	}
	return topic, nil
}

// clip shortens a device-chosen string for an error message.
func clip(s string) string {
	const max = 100
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
