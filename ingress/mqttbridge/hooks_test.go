package mqttbridge

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/publisher"
)

var (
	testRegistry = iotcore.DevicePath{Project: "proj", Location: "us-central1", Registry: "reg"}
	discard      = slog.New(slog.DiscardHandler)
)

func devicePath(device string) iotcore.DevicePath {
	dp := testRegistry
	dp.Device = device
	return dp
}

// newClient returns an unconnected mochi client with the given id.
func newClient(t *testing.T, id string) *mqtt.Client {
	t.Helper()
	cl := mqtt.New(&mqtt.Options{Logger: discard}).NewClient(nil, "test", id, false)
	cl.Properties.ProtocolVersion = 4
	return cl
}

// recordingDisconnector remembers which clients a hook disconnected, and why.
type recordingDisconnector struct {
	mu  sync.Mutex
	got map[*mqtt.Client]packets.Code
}

func (d *recordingDisconnector) DisconnectClient(cl *mqtt.Client, code packets.Code) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.got == nil {
		d.got = make(map[*mqtt.Client]packets.Code)
	}
	d.got[cl] = code
	return nil
}

func (d *recordingDisconnector) code(cl *mqtt.Client) (packets.Code, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, ok := d.got[cl]
	return c, ok
}

func TestIdentityHook(t *testing.T) {
	tests := []struct {
		name   string
		id     string
		auth   Authenticator
		admit  bool
		device string
	}{
		{name: "registry device", id: devicePath("dev1").String(), auth: AllowAll{}, admit: true, device: "dev1"},
		{name: "bare device id", id: "dev1", auth: AllowAll{}},
		{name: "invalid device id", id: devicePath("-d1").String(), auth: AllowAll{}},
		{name: "other project", id: "projects/x/locations/us-central1/registries/reg/devices/dev1", auth: AllowAll{}},
		{name: "other location", id: "projects/proj/locations/x/registries/reg/devices/dev1", auth: AllowAll{}},
		{name: "other registry", id: "projects/proj/locations/us-central1/registries/x/devices/dev1", auth: AllowAll{}},
		{name: "authenticator refuses", id: devicePath("dev1").String(), auth: refuseAll{}},
		{name: "authenticator adds numId", id: devicePath("dev1").String(), auth: numbering{}, admit: true, device: "dev1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			devices := &deviceTable{}
			h := &identityHook{registry: testRegistry, auth: tt.auth, devices: devices, log: discard}
			cl := newClient(t, tt.id)
			if got := h.OnConnectAuthenticate(cl, packets.Packet{}); got != tt.admit {
				t.Fatalf("OnConnectAuthenticate(%q) = %v, want %v", tt.id, got, tt.admit)
			}
			var dev Device
			s, ok := devices.get(cl)
			if ok {
				dev = s.dev
			}
			if ok != tt.admit || (ok && dev.Path != devicePath(tt.device)) {
				t.Fatalf("recorded device = %+v, %v", dev, ok)
			}
			if _, isNumbering := tt.auth.(numbering); isNumbering && dev.NumID != "42" {
				t.Errorf("NumID = %q, want the authenticator's 42", dev.NumID)
			}
			h.OnDisconnect(cl, nil, true)
			if _, ok := devices.get(cl); ok {
				t.Error("device still recorded after OnDisconnect")
			}
		})
	}
}

type refuseAll struct{}

func (refuseAll) Authenticate(context.Context, iotcore.DevicePath, []byte) (Device, error) {
	return Device{}, errors.New("bad JWT")
}

type numbering struct{}

func (numbering) Authenticate(_ context.Context, dp iotcore.DevicePath, _ []byte) (Device, error) {
	return Device{NumID: "42"}, nil
}

func TestACLHook(t *testing.T) {
	tests := []struct {
		topic string
		write bool
		allow bool
	}{
		{"/devices/dev1/events", true, true},
		{"/devices/dev1/events/alerts", true, true},
		{"/devices/dev1/events/a/b", true, true},
		{"/devices/dev1/state", true, true},
		{"/devices/dev1/config", false, true},
		{"/devices/dev1/commands/#", false, true},
		{"/devices/dev1/commands/reboot", false, true},
		{"/devices/dev1/config", true, false},
		{"/devices/dev1/commands", true, false},
		{"/devices/dev1/events", false, false},
		{"/devices/dev1/state", false, false},
		{"/devices/dev2/events", true, false},
		{"/devices/dev2/config", false, false},
		{"/devices/+/config", false, false},
		{"/devices/#", false, false},
		{"#", false, false},
		{"$SYS/#", false, false},
		{"", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.topic, func(t *testing.T) {
			devices := &deviceTable{}
			disc := &recordingDisconnector{}
			h := &aclHook{devices: devices, disc: disc, log: discard}
			cl := newClient(t, devicePath("dev1").String())
			devices.set(cl, Device{Path: devicePath("dev1")})
			if got := h.OnACLCheck(cl, tt.topic, tt.write); got != tt.allow {
				t.Fatalf("OnACLCheck(%q, write=%v) = %v, want %v", tt.topic, tt.write, got, tt.allow)
			}
			code, disconnected := disc.code(cl)
			if disconnected == tt.allow || (disconnected && code != packets.ErrNotAuthorized) {
				t.Errorf("disconnected = %v with %v; want a disconnect (not authorized) exactly when denied", disconnected, code)
			}
		})
	}
	t.Run("unknown client", func(t *testing.T) {
		disc := &recordingDisconnector{}
		h := &aclHook{devices: &deviceTable{}, disc: disc, log: discard}
		cl := newClient(t, devicePath("dev1").String())
		if h.OnACLCheck(cl, "/devices/dev1/events", true) {
			t.Fatal("a client without a recorded device was allowed")
		}
		if _, ok := disc.code(cl); !ok {
			t.Error("not disconnected")
		}
	})
}

func TestDialectHook(t *testing.T) {
	publish := func(topic string, qos byte) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic}
	}
	tests := []struct {
		name string
		pk   packets.Packet
		want packets.Code // CodeSuccess: passed on
	}{
		{"QoS 0", publish("/devices/dev1/events", 0), packets.CodeSuccess},
		{"QoS 1", publish("/devices/dev1/events", 1), packets.CodeSuccess},
		{"QoS 2", publish("/devices/dev1/events", 2), packets.ErrQosNotSupported},
		{"$SYS", publish("$SYS/x", 1), packets.ErrTopicNameInvalid},
		{"topic alias only", publish("", 1), packets.CodeSuccess},
		{"subscribe", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}}, packets.CodeSuccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disc := &recordingDisconnector{}
			h := &dialectHook{disc: disc, log: discard}
			cl := newClient(t, "c")
			_, err := h.OnPacketRead(cl, tt.pk)
			code, disconnected := disc.code(cl)
			if tt.want == packets.CodeSuccess {
				if err != nil || disconnected {
					t.Fatalf("OnPacketRead = %v, disconnected %v; want passed on", err, disconnected)
				}
				return
			}
			if !errors.Is(err, packets.ErrRejectPacket) || code != tt.want {
				t.Fatalf("OnPacketRead = %v, disconnect %v; want ErrRejectPacket and %v", err, code, tt.want)
			}
		})
	}
	t.Run("will discarded", func(t *testing.T) {
		h := &dialectHook{disc: &recordingDisconnector{}, log: discard}
		cl := newClient(t, "c")
		cl.Properties.Will = mqtt.Will{TopicName: "/devices/dev2/config", Payload: []byte("evil"), Flag: 1}
		pk := packets.Packet{Connect: packets.ConnectParams{WillFlag: true, WillTopic: "/devices/dev2/config"}}
		if err := h.OnConnect(cl, pk); err != nil {
			t.Fatal(err)
		}
		if cl.Properties.Will.Flag != 0 || cl.Properties.Will.TopicName != "" {
			t.Errorf("will = %+v, want none", cl.Properties.Will)
		}
	})
}

func TestForwardHook(t *testing.T) {
	fake := pubsubtest.Start(t, "proj", "events", "state")
	pub, err := publisher.New(context.Background(), "proj")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })

	setup := func(t *testing.T, stateTopic string) (*forwardHook, *mqtt.Client, *recordingDisconnector) {
		devices := &deviceTable{}
		disc := &recordingDisconnector{}
		router, err := publisher.NewRouter(pub, publisher.Routes{EventsTopic: "events", StateTopic: stateTopic})
		if err != nil {
			t.Fatal(err)
		}
		h := &forwardHook{router: router, timeout: forwardTimeout, devices: devices, disc: disc, log: discard}
		cl := newClient(t, devicePath("dev1").String())
		devices.set(cl, Device{Path: devicePath("dev1"), NumID: "7"})
		return h, cl, disc
	}
	publish := func(topic string, qos byte, payload string) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos}, TopicName: topic, Payload: []byte(payload)}
	}
	// process runs the hook the way mochi does for one packet.
	process := func(h *forwardHook, cl *mqtt.Client, pk packets.Packet) error {
		_, err := h.OnPublish(cl, pk)
		h.OnPacketProcessed(cl, pk, nil)
		return err
	}

	t.Run("events are acknowledged, not fanned out", func(t *testing.T) {
		fake.ClearMessages()
		h, cl, _ := setup(t, "state")
		if err := process(h, cl, publish("/devices/dev1/events/alerts", 1, "e")); !errors.Is(err, packets.CodeSuccessIgnore) {
			t.Fatalf("OnPublish = %v, want CodeSuccessIgnore", err)
		}
		msgs := fake.Messages("events")
		want := map[string]string{"deviceId": "dev1", "deviceNumId": "7", "deviceRegistryId": "reg",
			"deviceRegistryLocation": "us-central1", "projectId": "proj", "subFolder": "alerts"}
		if len(msgs) != 1 || string(msgs[0].Data) != "e" || !maps.Equal(msgs[0].Attributes, want) {
			t.Fatalf("events = %+v, want one message e with %v", msgs, want)
		}
	})
	t.Run("state goes to the state topic", func(t *testing.T) {
		fake.ClearMessages()
		h, cl, _ := setup(t, "state")
		if err := process(h, cl, publish("/devices/dev1/state", 1, "s")); !errors.Is(err, packets.CodeSuccessIgnore) {
			t.Fatalf("OnPublish = %v", err)
		}
		if msgs := fake.Messages("state"); len(msgs) != 1 || msgs[0].Attributes["subFolder"] != "" {
			t.Fatalf("state = %+v", msgs)
		}
	})
	t.Run("state without a state topic is dropped", func(t *testing.T) {
		fake.ClearMessages()
		h, cl, _ := setup(t, "")
		if err := process(h, cl, publish("/devices/dev1/state", 1, "s")); !errors.Is(err, packets.CodeSuccessIgnore) {
			t.Fatalf("OnPublish = %v", err)
		}
		if n := len(fake.Server.Messages()); n != 0 {
			t.Fatalf("%d messages published", n)
		}
	})
	// Refused for good whatever the QoS: unacknowledged and disconnected.
	for _, tt := range []struct {
		name, topic string
		qos         byte
		size        int
		code        packets.Code
	}{
		{"oversized telemetry", "/devices/dev1/events", 0, publisher.MaxTelemetryBytes + 1, packets.ErrPacketTooLarge},
		{"oversized state", "/devices/dev1/state", 1, publisher.MaxStateBytes + 1, packets.ErrPacketTooLarge},
	} {
		t.Run(tt.name+" refuses and disconnects", func(t *testing.T) {
			fake.ClearMessages()
			h, cl, disc := setup(t, "state")
			err := process(h, cl, publish(tt.topic, tt.qos, strings.Repeat("x", tt.size)))
			if !errors.Is(err, packets.ErrRejectPacket) || !errors.Is(err, publisher.ErrTooLarge) {
				t.Fatalf("OnPublish = %v, want ErrRejectPacket wrapping publisher.ErrTooLarge", err)
			}
			if code, _ := disc.code(cl); code != tt.code {
				t.Errorf("disconnect code = %v, want %v", code, tt.code)
			}
			if n := len(fake.Server.Messages()); n != 0 {
				t.Errorf("%d messages published", n)
			}
		})
	}
	t.Run("state at the limit is forwarded", func(t *testing.T) {
		fake.ClearMessages()
		h, cl, _ := setup(t, "state")
		if err := process(h, cl, publish("/devices/dev1/state", 1, strings.Repeat("x", publisher.MaxStateBytes))); !errors.Is(err, packets.CodeSuccessIgnore) {
			t.Fatalf("OnPublish = %v", err)
		}
		if n := len(fake.Messages("state")); n != 1 {
			t.Fatalf("state has %d messages, want 1", n)
		}
	})
	t.Run("Pub/Sub failure refuses and disconnects QoS 1", func(t *testing.T) {
		h, cl, disc := setup(t, "state")
		fake.FailPublishes(status.Error(codes.PermissionDenied, "injected"))
		defer fake.FailPublishes(nil)
		err := process(h, cl, publish("/devices/dev1/events", 1, "e"))
		if !errors.Is(err, packets.ErrRejectPacket) || status.Code(err) != codes.PermissionDenied {
			t.Fatalf("OnPublish = %v, want ErrRejectPacket wrapping PermissionDenied", err)
		}
		if code, _ := disc.code(cl); code != errForwardFailed {
			t.Errorf("disconnect code = %v, want %v", code, errForwardFailed)
		}
	})
	t.Run("Pub/Sub failure drops QoS 0 and keeps the connection", func(t *testing.T) {
		h, cl, disc := setup(t, "state")
		fake.FailPublishes(status.Error(codes.PermissionDenied, "injected"))
		defer fake.FailPublishes(nil)
		if err := process(h, cl, publish("/devices/dev1/events", 0, "e")); !errors.Is(err, packets.ErrRejectPacket) {
			t.Fatalf("OnPublish = %v, want ErrRejectPacket", err)
		}
		if _, ok := disc.code(cl); ok {
			t.Error("QoS 0 failure disconnected the client")
		}
	})
	t.Run("closed gate refuses", func(t *testing.T) {
		h, cl, disc := setup(t, "state")
		h.drain.closeAndWait()
		if err := process(h, cl, publish("/devices/dev1/events", 1, "e")); !errors.Is(err, packets.ErrRejectPacket) {
			t.Fatalf("OnPublish after drain = %v, want ErrRejectPacket", err)
		}
		if code, _ := disc.code(cl); code != packets.ErrServerShuttingDown {
			t.Errorf("disconnect code = %v, want server shutting down", code)
		}
	})
	t.Run("drain waits for the PUBACK", func(t *testing.T) {
		h, cl, _ := setup(t, "state")
		pk := publish("/devices/dev1/events", 1, "e")
		if _, err := h.OnPublish(cl, pk); !errors.Is(err, packets.CodeSuccessIgnore) {
			t.Fatal(err)
		}
		drained := make(chan struct{})
		go func() { h.drain.closeAndWait(); close(drained) }()
		select {
		case <-drained:
			t.Fatal("drain finished before mochi processed (acknowledged) the publish")
		default:
		}
		h.OnPacketProcessed(cl, pk, nil) // mochi has written the PUBACK
		<-drained
	})
}
