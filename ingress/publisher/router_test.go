package publisher_test

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
)

var dev = iotcore.DevicePath{Project: "proj", Location: "us-central1", Registry: "reg", Device: "dev1"}

func topicName(id string) string { return "projects/proj/topics/" + id }

// TestRouterByRegistry routes through a registry on bttest to topics on pstest.
func TestRouterByRegistry(t *testing.T) {
	store := registrytest.Start(t, registry.Config{})
	ctx := t.Context()
	reg := registry.PathOf(dev)
	if _, err := store.CreateRegistry(ctx, reg.Project, reg.Location, registry.Registry{
		ID: reg.Registry,
		EventNotificationConfigs: []registry.EventNotificationConfig{
			{SubfolderMatches: "alerts", PubsubTopicName: topicName("alerts")},
			{SubfolderMatches: "a/b", PubsubTopicName: topicName("deep")},
			{PubsubTopicName: topicName("events")},
		},
		StateNotificationConfig: registry.StateNotificationConfig{PubsubTopicName: topicName("state")},
	}); err != nil {
		t.Fatal(err)
	}
	// A registry that routes only one subfolder, and no state.
	narrow := registry.Path{Project: "proj", Location: "us-central1", Registry: "narrow"}
	if _, err := store.CreateRegistry(ctx, narrow.Project, narrow.Location, registry.Registry{
		ID:                       narrow.Registry,
		EventNotificationConfigs: []registry.EventNotificationConfig{{SubfolderMatches: "alerts", PubsubTopicName: topicName("alerts")}},
	}); err != nil {
		t.Fatal(err)
	}
	fake := pubsubtest.Start(t, "proj", "alerts", "deep", "events", "state") // after the registry: it points PUBSUB_EMULATOR_HOST here
	r, err := publisher.NewRouter(newPublisher(t, "proj"), publisher.Routes{Registries: store})
	if err != nil {
		t.Fatal(err)
	}

	attrs := func(dp iotcore.DevicePath, sub string) map[string]string {
		return map[string]string{"deviceId": dp.Device, "deviceNumId": "42", "deviceRegistryId": dp.Registry,
			"deviceRegistryLocation": dp.Location, "projectId": dp.Project, "subFolder": sub}
	}
	noSub := attrs(dev, "")
	delete(noSub, "subFolder")
	inNarrow := narrow.Device("dev1")

	tests := []struct {
		name      string
		m         publisher.Message
		wantTopic string // topic id; "" with wantErr nil: not forwarded
		wantAttrs map[string]string
		wantErr   error
	}{
		{"subfolder with its own topic", publisher.Message{Kind: iotcore.Events, SubFolder: "alerts"}, "alerts", attrs(dev, "alerts"), nil},
		{"multi-level subfolder", publisher.Message{Kind: iotcore.Events, SubFolder: "a/b"}, "deep", attrs(dev, "a/b"), nil},
		{"unmatched subfolder takes the catch-all", publisher.Message{Kind: iotcore.Events, SubFolder: "other"}, "events", attrs(dev, "other"), nil},
		{"prefix of a subfolder is not a match", publisher.Message{Kind: iotcore.Events, SubFolder: "a"}, "events", attrs(dev, "a"), nil},
		{"no subfolder takes the catch-all", publisher.Message{Kind: iotcore.Events}, "events", noSub, nil},
		{"state", publisher.Message{Kind: iotcore.State}, "state", noSub, nil},
		{"telemetry at the limit", publisher.Message{Kind: iotcore.Events, Data: make([]byte, publisher.MaxTelemetryBytes)}, "events", noSub, nil},
		{"registry without a catch-all", publisher.Message{Device: inNarrow, Kind: iotcore.Events, SubFolder: "x"}, "", nil, publisher.ErrNoRoute},
		{"registry without a state topic", publisher.Message{Device: inNarrow, Kind: iotcore.State}, "", nil, nil},
		{"unknown registry", publisher.Message{Device: registry.Path{Project: "proj", Location: "l", Registry: "gone"}.Device("d1"), Kind: iotcore.Events}, "", nil, publisher.ErrNoRoute},
		{"telemetry over 256 KB", publisher.Message{Kind: iotcore.Events, Data: make([]byte, publisher.MaxTelemetryBytes+1)}, "", nil, publisher.ErrTooLarge},
		{"state over 64 KB", publisher.Message{Kind: iotcore.State, Data: make([]byte, publisher.MaxStateBytes+1)}, "", nil, publisher.ErrTooLarge},
		{"state with a subfolder", publisher.Message{Kind: iotcore.State, SubFolder: "x"}, "", nil, publisher.ErrInvalidMessage},
		{"subfolder with a wildcard", publisher.Message{Kind: iotcore.Events, SubFolder: "a/+"}, "", nil, publisher.ErrInvalidMessage},
		{"subfolder with an empty level", publisher.Message{Kind: iotcore.Events, SubFolder: "/a"}, "", nil, publisher.ErrInvalidMessage},
		{"config is not published", publisher.Message{Kind: iotcore.Config}, "", nil, publisher.ErrInvalidMessage},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake.ClearMessages()
			m := tt.m
			if m.Device == (iotcore.DevicePath{}) {
				m.Device = dev
			}
			m.NumID = "42"
			if m.Data == nil {
				m.Data = []byte("payload " + strconv.Itoa(i))
			}
			sent, err := r.Publish(ctx, m)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("Publish = %+v, %v; want error %v", sent, err, tt.wantErr)
			}
			if err != nil || tt.wantTopic == "" {
				if sent != (publisher.Sent{}) || len(fake.Server.Messages()) != 0 {
					t.Fatalf("Publish = %+v and %d messages in Pub/Sub, want nothing sent", sent, len(fake.Server.Messages()))
				}
				return
			}
			if sent.Topic != topicName(tt.wantTopic) || sent.MessageID == "" {
				t.Errorf("Publish = %+v, want topic %s and a message id", sent, topicName(tt.wantTopic))
			}
			msgs := fake.Messages(tt.wantTopic)
			if len(msgs) != 1 || string(msgs[0].Data) != string(m.Data) || msgs[0].ID != sent.MessageID {
				t.Fatalf("topic %s holds %d messages, want the one sent", tt.wantTopic, len(msgs))
			}
			if !maps.Equal(msgs[0].Attributes, tt.wantAttrs) {
				t.Errorf("attributes = %v, want %v", msgs[0].Attributes, tt.wantAttrs)
			}
		})
	}
}

func TestRouterStatic(t *testing.T) {
	fake := pubsubtest.Start(t, "proj", "events", "state")
	pub := newPublisher(t, "proj")
	ctx := t.Context()
	tests := []struct {
		name      string
		routes    publisher.Routes
		kind      iotcore.TopicKind
		sub       string
		wantTopic string
	}{
		{"telemetry of any subfolder", publisher.Routes{EventsTopic: "events"}, iotcore.Events, "x/y", "events"},
		{"state", publisher.Routes{EventsTopic: "events", StateTopic: "state"}, iotcore.State, "", "state"},
		{"state by full topic name", publisher.Routes{EventsTopic: "events", StateTopic: topicName("state")}, iotcore.State, "", "state"},
		{"state without a state topic", publisher.Routes{EventsTopic: "events"}, iotcore.State, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake.ClearMessages()
			r, err := publisher.NewRouter(pub, tt.routes)
			if err != nil {
				t.Fatal(err)
			}
			sent, err := r.Publish(ctx, publisher.Message{Device: dev, Kind: tt.kind, SubFolder: tt.sub, Data: []byte("d")})
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantTopic == "" {
				if sent.Topic != "" || len(fake.Server.Messages()) != 0 {
					t.Fatalf("Publish = %+v, want nothing forwarded", sent)
				}
				return
			}
			msgs := fake.Messages(tt.wantTopic)
			if len(msgs) != 1 {
				t.Fatalf("topic %s holds %d messages, want 1", tt.wantTopic, len(msgs))
			}
			// No registry, so no numeric id.
			if _, ok := msgs[0].Attributes["deviceNumId"]; ok || msgs[0].Attributes["subFolder"] != tt.sub {
				t.Errorf("attributes = %v", msgs[0].Attributes)
			}
		})
	}

	t.Run("Pub/Sub failure is not a routing error", func(t *testing.T) {
		r, err := publisher.NewRouter(pub, publisher.Routes{EventsTopic: "events"})
		if err != nil {
			t.Fatal(err)
		}
		fake.FailPublishes(status.Error(codes.PermissionDenied, "injected"))
		defer fake.FailPublishes(nil)
		_, err = r.Publish(ctx, publisher.Message{Device: dev, Kind: iotcore.Events, Data: []byte("d")})
		if status.Code(err) != codes.PermissionDenied || errors.Is(err, publisher.ErrNoRoute) || !strings.Contains(err.Error(), "dev1") {
			t.Errorf("Publish = %v, want the PermissionDenied, naming the device", err)
		}
	})
}

// registries is a Registries that never answers; NewRouter must not call it.
type registries struct{}

func (registries) LookupRegistry(context.Context, registry.Path) (registry.Registry, error) {
	return registry.Registry{}, errors.New("unexpected lookup")
}

func TestNewRouterChecksRoutes(t *testing.T) {
	pubsubtest.Start(t, "proj")
	pub := newPublisher(t, "proj")
	tests := []struct {
		name    string
		pub     publisher.PubSub
		routes  publisher.Routes
		wantErr string
	}{
		{"static", pub, publisher.Routes{EventsTopic: "e"}, ""},
		{"registry", pub, publisher.Routes{Registries: registries{}}, ""},
		{"nothing", pub, publisher.Routes{}, "neither a registry nor an EventsTopic"},
		{"state only", pub, publisher.Routes{StateTopic: "s"}, "neither a registry nor an EventsTopic"},
		{"registry and static", pub, publisher.Routes{Registries: registries{}, EventsTopic: "e"}, "for a bridge without a registry"},
		{"no publisher", nil, publisher.Routes{EventsTopic: "e"}, "nil PubSub"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := publisher.NewRouter(tt.pub, tt.routes)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("NewRouter = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}
