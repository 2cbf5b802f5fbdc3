package mqttbridge_test

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"strconv"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/golang-jwt/jwt/v5"

	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/jwtauth"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	iotregistry "github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
)

// routedEnv is a bridge with JWT auth whose router reads the topics from a
// registry on bttest.
type routedEnv struct {
	fake   *pubsubtest.Fake
	store  *iotregistry.Store
	key    registrytest.Key
	bridge func(t *testing.T, reg string) *mqttbridge.Bridge
}

func startRouted(t *testing.T, registries ...iotregistry.Registry) *routedEnv {
	t.Helper()
	store := registrytest.Start(t, iotregistry.Config{})
	key := registrytest.NewKey(t, iotregistry.ES256PEM)
	for _, reg := range registries {
		if _, err := store.CreateRegistry(t.Context(), project, location, reg); err != nil {
			t.Fatal(err)
		}
		p := iotregistry.Path{Project: project, Location: location, Registry: reg.ID}
		if _, err := store.CreateDevice(t.Context(), p, iotregistry.Device{ID: "dev1",
			Credentials: []iotregistry.Credential{{PublicKey: key.PublicKey}}}); err != nil {
			t.Fatal(err)
		}
	}
	// After the registry, whose emulators point PUBSUB_EMULATOR_HOST elsewhere.
	fake := pubsubtest.Start(t, project, "alerts", "events", "state")
	pub, err := publisher.New(t.Context(), project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	router, err := publisher.NewRouter(pub, publisher.Routes{Registries: store})
	if err != nil {
		t.Fatal(err)
	}
	e := &routedEnv{fake: fake, store: store, key: key}
	e.bridge = func(t *testing.T, reg string) *mqttbridge.Bridge {
		b, err := mqttbridge.NewWithRouter(mqttbridge.Config{Project: project, Location: location, Registry: reg, MQTTAddr: "127.0.0.1:0"},
			router, jwtauth.New(store, jwtauth.Config{}), slog.New(slog.NewTextHandler(t.Output(), nil)))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	return e
}

func (e *routedEnv) token(t *testing.T) string {
	t.Helper()
	now := time.Now()
	s, err := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"aud": project, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}).SignedString(e.key.Private)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func topicName(id string) string { return "projects/" + project + "/topics/" + id }

// TestRoutingBySubfolder publishes with a real MQTT 3.1.1 client and finds
// each message on the topic the registry's notification configs name, with
// IoT Core's attributes, the registry's numeric id among them.
func TestRoutingBySubfolder(t *testing.T) {
	e := startRouted(t, iotregistry.Registry{
		ID: registry,
		EventNotificationConfigs: []iotregistry.EventNotificationConfig{
			{SubfolderMatches: "alerts", PubsubTopicName: topicName("alerts")},
			{PubsubTopicName: topicName("events")}, // the catch-all
		},
		StateNotificationConfig: iotregistry.StateNotificationConfig{PubsubTopicName: topicName("state")},
	})
	dev, err := e.store.GetDevice(t.Context(), iotregistry.Path{Project: project, Location: location, Registry: registry}.Device("dev1"))
	if err != nil {
		t.Fatal(err)
	}
	numID := strconv.FormatUint(dev.NumID, 10)
	b := e.bridge(t, registry)

	c := mqtt3.NewClient(mqtt3.NewClientOptions().AddBroker("tcp://" + b.Addr()).
		SetClientID(clientID("dev1")).SetUsername("unused").SetPassword(e.token(t)).SetProtocolVersion(4).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(safety) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })

	attrs := func(subFolder string) map[string]string {
		a := map[string]string{"deviceId": "dev1", "deviceNumId": numID, "deviceRegistryId": registry,
			"deviceRegistryLocation": location, "projectId": project}
		if subFolder != "" {
			a["subFolder"] = subFolder
		}
		return a
	}
	tests := []struct {
		name, topic, payload string
		wantTopic            string
		wantAttrs            map[string]string
	}{
		{"matching subfolder", "/devices/dev1/events/alerts", "a1", "alerts", attrs("alerts")},
		{"unmatched subfolder, catch-all", "/devices/dev1/events/metrics", "m1", "events", attrs("metrics")},
		{"no subfolder, catch-all", "/devices/dev1/events", "e1", "events", attrs("")},
		{"state", "/devices/dev1/state", "s1", "state", attrs("")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.fake.ClearMessages()
			if tok := c.Publish(tt.topic, 1, false, tt.payload); !tok.WaitTimeout(safety) || tok.Error() != nil {
				t.Fatalf("publish to %s: %v", tt.topic, tok.Error())
			}
			// PUBACK came after Pub/Sub confirmed: the message is there now.
			msgs := e.fake.Messages(tt.wantTopic)
			if len(msgs) != 1 || string(msgs[0].Data) != tt.payload {
				t.Fatalf("topic %s holds %d messages, want %q alone (all topics: %d messages)",
					tt.wantTopic, len(msgs), tt.payload, len(e.fake.Server.Messages()))
			}
			if !maps.Equal(msgs[0].Attributes, tt.wantAttrs) {
				t.Errorf("attributes = %v, want %v", msgs[0].Attributes, tt.wantAttrs)
			}
		})
	}
}

// Without a catch-all, telemetry of an unrouted subfolder is refused
// unacknowledged and closes the connection, as IoT Core did; a routed
// subfolder still works.
func TestUnroutedSubfolderDisconnects(t *testing.T) {
	e := startRouted(t, iotregistry.Registry{
		ID:                       "narrow",
		EventNotificationConfigs: []iotregistry.EventNotificationConfig{{SubfolderMatches: "alerts", PubsubTopicName: topicName("alerts")}},
	})
	b := e.bridge(t, "narrow")
	conn, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	disconnected := make(chan *paho5.Disconnect, 1)
	c := paho5.NewClient(paho5.ClientConfig{Conn: conn, OnClientError: func(error) {},
		OnServerDisconnect: func(d *paho5.Disconnect) { disconnected <- d }})
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	if _, err := c.Connect(ctx, &paho5.Connect{ClientID: devicePath("narrow", "dev1"), KeepAlive: 30, CleanStart: true,
		Password: []byte(e.token(t)), PasswordFlag: true}); err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer c.Disconnect(&paho5.Disconnect{})

	if resp, err := c.Publish(ctx, &paho5.Publish{Topic: "/devices/dev1/events/alerts", QoS: 1, Payload: []byte("a")}); err != nil || resp.ReasonCode != 0 {
		t.Fatalf("publish to the routed subfolder: %v, %+v", err, resp)
	}
	go c.Publish(ctx, &paho5.Publish{Topic: "/devices/dev1/events/other", QoS: 1, Payload: []byte("lost")})
	select {
	case d := <-disconnected:
		if d.ReasonCode != 0x83 {
			t.Errorf("DISCONNECT reason %#x (%v), want 0x83 implementation specific error", d.ReasonCode, d.Properties)
		}
	case <-time.After(safety):
		t.Fatalf("still connected %v after publishing to an unrouted subfolder", safety)
	}
	if n := len(e.fake.Messages("alerts")); n != 1 || len(e.fake.Server.Messages()) != 1 {
		t.Errorf("Pub/Sub holds %d messages (%d in alerts), want only the routed one", len(e.fake.Server.Messages()), n)
	}
}

func devicePath(reg, device string) string {
	return iotregistry.Path{Project: project, Location: location, Registry: reg}.Device(device).String()
}
