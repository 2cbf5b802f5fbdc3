package mqttbridge_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	packets5 "github.com/eclipse/paho.golang/packets"
	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"
	packets3 "github.com/eclipse/paho.mqtt.golang/packets"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/iotpipe/iotpipe/ingress/internal/logtest"
	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
)

const (
	project  = "proj"
	location = "us-central1"
	registry = "reg"
	// safety bounds a wait for a signal so that a broken bridge fails the
	// test instead of hanging it; no test waits for it to pass.
	safety = 30 * time.Second
)

func clientID(device string) string {
	return iotcore.DevicePath{Project: project, Location: location, Registry: registry, Device: device}.String()
}

type env struct {
	fake   *pubsubtest.Fake
	bridge *mqttbridge.Bridge
	logs   *logtest.Buffer
}

// start runs a pstest server, a publisher and a bridge on a free loopback port.
func start(t *testing.T, mod func(*mqttbridge.Config)) *env {
	t.Helper()
	fake := pubsubtest.Start(t, project, "events", "state")
	pub, err := publisher.New(context.Background(), project)
	if err != nil {
		t.Fatalf("publisher.New: %v", err)
	}
	t.Cleanup(func() { pub.Close() })
	cfg := mqttbridge.Config{
		Project: project, Location: location, Registry: registry,
		EventsTopic: "events", StateTopic: "state", MQTTAddr: "127.0.0.1:0",
	}
	if mod != nil {
		mod(&cfg)
	}
	logs := &logtest.Buffer{}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), nil))
	b, err := mqttbridge.New(cfg, pub, logger)
	if err != nil {
		t.Fatalf("mqttbridge.New: %v", err)
	}
	if err := b.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return &env{fake: fake, bridge: b, logs: logs}
}

// v3 is a paho.mqtt.golang (MQTT 3.1.1) client with a channel that receives
// when the connection is lost.
type v3 struct {
	mqtt3.Client
	lost chan error
}

func connectV3(t *testing.T, e *env, device string, opts func(*mqtt3.ClientOptions)) *v3 {
	t.Helper()
	c := &v3{lost: make(chan error, 1)}
	o := mqtt3.NewClientOptions().AddBroker("tcp://" + e.bridge.Addr()).
		SetClientID(clientID(device)).SetProtocolVersion(4).SetCleanSession(true).
		SetAutoReconnect(false).SetPassword("not-a-jwt-yet").
		SetConnectionLostHandler(func(_ mqtt3.Client, err error) { c.lost <- err })
	if opts != nil {
		opts(o)
	}
	c.Client = mqtt3.NewClient(o)
	if tok := c.Connect(); !waitToken(t, tok) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", device, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func waitToken(t *testing.T, tok mqtt3.Token) bool {
	t.Helper()
	select {
	case <-tok.Done():
		return true
	case <-time.After(safety):
		t.Fatalf("MQTT token not done after %v", safety)
		return false
	}
}

func (c *v3) waitLost(t *testing.T) {
	t.Helper()
	select {
	case <-c.lost:
	case <-time.After(safety):
		t.Fatalf("connection still open after %v", safety)
	}
}

func connectV5(t *testing.T, e *env, device string) (*paho5.Client, chan *paho5.Disconnect) {
	t.Helper()
	conn, err := net.Dial("tcp", e.bridge.Addr())
	if err != nil {
		t.Fatal(err)
	}
	disconnected := make(chan *paho5.Disconnect, 1)
	c := paho5.NewClient(paho5.ClientConfig{
		Conn:               conn,
		OnServerDisconnect: func(d *paho5.Disconnect) { disconnected <- d },
		OnClientError:      func(error) {},
	})
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	ack, err := c.Connect(ctx, &paho5.Connect{ClientID: clientID(device), KeepAlive: 30, CleanStart: true,
		Password: []byte("not-a-jwt-yet"), PasswordFlag: true})
	if err != nil {
		t.Fatalf("MQTT 5 connect %s: %v (CONNACK %+v)", device, err, ack)
	}
	t.Cleanup(func() { c.Disconnect(&paho5.Disconnect{}) })
	return c, disconnected
}

func wantAttrs(device, subFolder string) map[string]string {
	return iotcore.EventAttributes(iotcore.DevicePath{Project: project, Location: location, Registry: registry, Device: device}, "", subFolder)
}

func checkMessages(t *testing.T, e *env, topicID string, want ...string) []map[string]string {
	t.Helper()
	msgs := e.fake.Messages(topicID)
	var got []string
	var attrs []map[string]string
	for _, m := range msgs {
		got = append(got, string(m.Data))
		attrs = append(attrs, m.Attributes)
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("Pub/Sub topic %s holds %q, want %q", topicID, got, want)
	}
	return attrs
}

func TestMQTT311EventsAndStateReachPubSub(t *testing.T) {
	e := start(t, nil)
	c := connectV3(t, e, "dev1", nil)
	for _, p := range []struct{ topic, payload string }{
		{"/devices/dev1/events", `{"seq":1}`},
		{"/devices/dev1/events/alerts", `{"seq":2}`},
		{"/devices/dev1/state", `{"fw":"1.2"}`},
	} {
		tok := c.Publish(p.topic, 1, false, p.payload)
		if waitToken(t, tok); tok.Error() != nil {
			t.Fatalf("publish to %s: %v", p.topic, tok.Error())
		}
	}
	// The PUBACKs came after Pub/Sub confirmed, so the messages are there now.
	attrs := checkMessages(t, e, "events", `{"seq":1}`, `{"seq":2}`)
	if !maps.Equal(attrs[0], wantAttrs("dev1", "")) || !maps.Equal(attrs[1], wantAttrs("dev1", "alerts")) {
		t.Errorf("event attributes = %v, want %v and %v", attrs, wantAttrs("dev1", ""), wantAttrs("dev1", "alerts"))
	}
	if attrs[1]["subFolder"] != "alerts" || attrs[1]["deviceId"] != "dev1" || attrs[1]["projectId"] != project ||
		attrs[1]["deviceRegistryId"] != registry || attrs[1]["deviceRegistryLocation"] != location {
		t.Errorf("alerts attributes = %v", attrs[1])
	}
	stateAttrs := checkMessages(t, e, "state", `{"fw":"1.2"}`)
	if !maps.Equal(stateAttrs[0], wantAttrs("dev1", "")) {
		t.Errorf("state attributes = %v, want %v", stateAttrs[0], wantAttrs("dev1", ""))
	}
}

func TestMQTT5EventsReachPubSub(t *testing.T) {
	e := start(t, nil)
	c, _ := connectV5(t, e, "dev1")
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	for _, p := range []struct{ topic, payload string }{
		{"/devices/dev1/events", `{"seq":1}`},
		{"/devices/dev1/events/alerts", `{"seq":2}`},
	} {
		resp, err := c.Publish(ctx, &paho5.Publish{Topic: p.topic, QoS: 1, Payload: []byte(p.payload),
			Properties: &paho5.PublishProperties{User: paho5.UserProperties{{Key: "k", Value: "v"}}}})
		if err != nil || resp.ReasonCode != 0 {
			t.Fatalf("publish to %s: %v, %+v", p.topic, err, resp)
		}
	}
	attrs := checkMessages(t, e, "events", `{"seq":1}`, `{"seq":2}`)
	if !maps.Equal(attrs[0], wantAttrs("dev1", "")) || !maps.Equal(attrs[1], wantAttrs("dev1", "alerts")) {
		t.Errorf("event attributes = %v", attrs)
	}
}

func TestStateWithoutStateTopicIsAcknowledgedNotForwarded(t *testing.T) {
	e := start(t, func(c *mqttbridge.Config) { c.StateTopic = "" })
	c := connectV3(t, e, "dev1", nil)
	tok := c.Publish("/devices/dev1/state", 1, false, "s")
	if waitToken(t, tok); tok.Error() != nil {
		t.Fatalf("publish state: %v", tok.Error())
	}
	if n := e.fake.PublishCalls(); n != 0 {
		t.Errorf("%d Publish RPCs, want none", n)
	}
}

// The PUBACK is withheld while Pub/Sub has not answered.
func TestPubackWaitsForPubSub(t *testing.T) {
	e := start(t, nil)
	c := connectV3(t, e, "dev1", nil)
	arrived, release := e.fake.HoldPublishes()
	defer release()

	tok := c.Publish("/devices/dev1/events", 1, false, "held")
	<-arrived // Pub/Sub has the request and has not answered
	select {
	case <-tok.Done():
		t.Fatalf("PUBACK received before Pub/Sub confirmed (err %v)", tok.Error())
	default:
	}
	release()
	if waitToken(t, tok); tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	checkMessages(t, e, "events", "held")
}

// readAll reads MQTT 3.1.1 packets until the server closes the connection.
func readAll3(t *testing.T, conn net.Conn) []packets3.ControlPacket {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(safety))
	var got []packets3.ControlPacket
	for {
		p, err := packets3.ReadPacket(conn)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection still open after %v; read %v", safety, got)
			}
			return got
		}
		got = append(got, p)
	}
}

func dial3(t *testing.T, e *env, device string, clean bool) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", e.bridge.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	cp := packets3.NewControlPacket(packets3.Connect).(*packets3.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion, cp.CleanSession, cp.Keepalive = "MQTT", 4, clean, 30
	cp.ClientIdentifier = clientID(device)
	if err := cp.Write(conn); err != nil {
		t.Fatal(err)
	}
	p, err := packets3.ReadPacket(conn)
	if ack, ok := p.(*packets3.ConnackPacket); err != nil || !ok || ack.ReturnCode != 0 {
		t.Fatalf("CONNACK = %v, %v; want accepted", p, err)
	}
	return conn
}

func publish3(t *testing.T, conn net.Conn, topic string, qos byte, id uint16, dup bool, payload string) {
	t.Helper()
	pp := packets3.NewControlPacket(packets3.Publish).(*packets3.PublishPacket)
	pp.TopicName, pp.Qos, pp.MessageID, pp.Dup, pp.Payload = topic, qos, id, dup, []byte(payload)
	if err := pp.Write(conn); err != nil {
		t.Fatal(err)
	}
}

// When Pub/Sub refuses a message, no PUBACK goes on the wire and the
// connection is closed; the device's resend on a new connection is stored.
func TestNoPubackWhenPubSubFailsMQTT311(t *testing.T) {
	e := start(t, nil)
	e.fake.FailPublishes(status.Error(codes.PermissionDenied, "injected"))

	conn := dial3(t, e, "dev1", false)
	publish3(t, conn, "/devices/dev1/events", 1, 7, false, "m7")
	for _, p := range readAll3(t, conn) {
		t.Errorf("server sent %v after a failed forward; want no packet, only a closed connection", p)
	}
	if n := len(e.fake.Messages("events")); n != 0 {
		t.Fatalf("events holds %d messages after the failure", n)
	}

	e.fake.FailPublishes(nil)
	conn = dial3(t, e, "dev1", false)
	publish3(t, conn, "/devices/dev1/events", 1, 7, true, "m7")
	p, err := packets3.ReadPacket(conn)
	if ack, ok := p.(*packets3.PubackPacket); err != nil || !ok || ack.MessageID != 7 {
		t.Fatalf("after resend got %v, %v; want PUBACK for 7", p, err)
	}
	checkMessages(t, e, "events", "m7")
}

func TestNoPubackWhenPubSubFailsMQTT5(t *testing.T) {
	e := start(t, nil)
	e.fake.FailPublishes(status.Error(codes.PermissionDenied, "injected"))

	conn, err := net.Dial("tcp", e.bridge.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cp := packets5.NewControlPacket(packets5.CONNECT)
	cc := cp.Content.(*packets5.Connect)
	cc.ClientID, cc.CleanStart, cc.KeepAlive = clientID("dev1"), true, 30
	if _, err := cp.WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	if p, err := packets5.ReadPacket(conn); err != nil || p.Type != packets5.CONNACK || p.Content.(*packets5.Connack).ReasonCode != 0 {
		t.Fatalf("CONNACK = %v, %v", p, err)
	}
	pp := packets5.NewControlPacket(packets5.PUBLISH)
	pc := pp.Content.(*packets5.Publish)
	pc.Topic, pc.QoS, pc.PacketID, pc.Payload = "/devices/dev1/events", 1, 9, []byte("m9")
	if _, err := pp.WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(safety))
	var got []*packets5.ControlPacket
	for {
		p, err := packets5.ReadPacket(conn)
		if err != nil {
			break
		}
		got = append(got, p)
	}
	if len(got) != 1 || got[0].Type != packets5.DISCONNECT || got[0].Content.(*packets5.Disconnect).ReasonCode != 0x80 {
		t.Fatalf("server sent %v; want only DISCONNECT 0x80 (no PUBACK), then close", got)
	}
}

// A paho client whose message was not acknowledged resends it when it
// reconnects, and then it is stored.
func TestDeviceResendsAfterPubSubFailure(t *testing.T) {
	e := start(t, nil)
	e.fake.FailPublishes(status.Error(codes.PermissionDenied, "injected"))
	var (
		once         sync.Once
		reconnecting = make(chan struct{})
		resent       <-chan struct{}
		release      func()
	)
	c := connectV3(t, e, "dev1", func(o *mqtt3.ClientOptions) {
		o.SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(100 * time.Millisecond).
			SetReconnectingHandler(func(mqtt3.Client, *mqtt3.ClientOptions) {
				once.Do(func() {
					// Pub/Sub has recovered by the time the device comes back.
					e.fake.FailPublishes(nil)
					resent, release = e.fake.HoldPublishes()
					close(reconnecting)
				})
			})
	})
	// paho completes this token when it re-queues the message after the
	// reconnect, not on the PUBACK, so the test follows the message instead.
	c.Publish("/devices/dev1/events", 1, false, "retry-me")
	c.waitLost(t)
	<-reconnecting
	defer release()
	<-resent
	release() // pstest stores the message before it serves Messages below
	checkMessages(t, e, "events", "retry-me")
	if n := e.fake.PublishCalls(); n != 2 {
		t.Errorf("%d Publish RPCs, want 2 (refused, then stored)", n)
	}
}

func TestTopicOutsideTheDeviceDisconnects(t *testing.T) {
	tests := []struct {
		name  string
		topic string
		qos   byte
	}{
		{"other device events", "/devices/dev2/events", 1},
		{"other device events QoS 0", "/devices/dev2/events", 0},
		{"other device state", "/devices/dev2/state", 1},
		{"own config", "/devices/dev1/config", 1},
		{"not an IoT Core topic", "sensors/temperature", 1},
		{"$SYS", "$SYS/broker/version", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := start(t, nil)
			c := connectV3(t, e, "dev1", nil)
			c.Publish(tt.topic, tt.qos, false, "x")
			c.waitLost(t)
			if n := e.fake.PublishCalls(); n != 0 {
				t.Errorf("%d Publish RPCs, want none", n)
			}
		})
	}
}

func TestOversizedPacketDisconnects(t *testing.T) {
	e := start(t, nil)
	c := connectV3(t, e, "dev1", nil)
	c.Publish("/devices/dev1/events", 1, false, bytes.Repeat([]byte("x"), 300<<10))
	c.waitLost(t)
	if n := e.fake.PublishCalls(); n != 0 {
		t.Errorf("%d Publish RPCs, want none", n)
	}
}

func TestMQTT5OtherDeviceTopicDisconnectsNotAuthorized(t *testing.T) {
	e := start(t, nil)
	c, disconnected := connectV5(t, e, "dev1")
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	go c.Publish(ctx, &paho5.Publish{Topic: "/devices/dev2/events", QoS: 1, Payload: []byte("x")})
	select {
	case d := <-disconnected:
		if d.ReasonCode != 0x87 {
			t.Errorf("DISCONNECT reason %#x, want 0x87 not authorized", d.ReasonCode)
		}
	case <-time.After(safety):
		t.Fatal("no DISCONNECT")
	}
	if n := e.fake.PublishCalls(); n != 0 {
		t.Errorf("%d Publish RPCs, want none", n)
	}
}

func TestSubscribe(t *testing.T) {
	e := start(t, nil)
	c := connectV3(t, e, "dev1", nil)
	for _, f := range []string{"/devices/dev1/config", "/devices/dev1/commands/#"} {
		tok := c.Subscribe(f, 1, func(mqtt3.Client, mqtt3.Message) {})
		if waitToken(t, tok); tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", f, tok.Error())
		}
		if got := tok.(*mqtt3.SubscribeToken).Result()[f]; got != 1 {
			t.Errorf("subscribe %s granted %d, want QoS 1", f, got)
		}
	}
	c.Subscribe("/devices/dev2/config", 1, nil)
	c.waitLost(t)
}

func TestQoS2Disconnects(t *testing.T) {
	t.Run("MQTT 3.1.1", func(t *testing.T) {
		e := start(t, nil)
		c := connectV3(t, e, "dev1", nil)
		c.Publish("/devices/dev1/events", 2, false, "x")
		c.waitLost(t)
		if n := e.fake.PublishCalls(); n != 0 {
			t.Errorf("%d Publish RPCs, want none", n)
		}
	})
	t.Run("MQTT 5", func(t *testing.T) {
		e := start(t, nil)
		// A conforming client learns the limit from CONNACK and refuses locally.
		c, _ := connectV5(t, e, "dev1")
		if _, err := c.Publish(context.Background(), &paho5.Publish{Topic: "/devices/dev1/events", QoS: 2}); !errors.Is(err, paho5.ErrInvalidArguments) {
			t.Errorf("paho MQTT 5 QoS 2 publish = %v, want refused by the client (server maximum QoS 1)", err)
		}
		// One that sends it anyway is disconnected with 0x9B.
		conn, err := net.Dial("tcp", e.bridge.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cp := packets5.NewControlPacket(packets5.CONNECT)
		cp.Content.(*packets5.Connect).ClientID = clientID("dev2")
		cp.WriteTo(conn)
		packets5.ReadPacket(conn) // CONNACK
		pp := packets5.NewControlPacket(packets5.PUBLISH)
		pc := pp.Content.(*packets5.Publish)
		pc.Topic, pc.QoS, pc.PacketID = "/devices/dev2/events", 2, 1
		pp.WriteTo(conn)
		conn.SetReadDeadline(time.Now().Add(safety))
		p, err := packets5.ReadPacket(conn)
		if err != nil || p.Type != packets5.DISCONNECT || p.Content.(*packets5.Disconnect).ReasonCode != 0x9B {
			t.Fatalf("after QoS 2 publish got %v, %v; want DISCONNECT 0x9B", p, err)
		}
	})
}

func TestBadClientIDRefusedAtConnect(t *testing.T) {
	e := start(t, nil)
	tests := []struct{ name, id string }{
		{"not a path", "dev1"},
		{"device id led by a dash", clientID("-d1")},
		{"other project", "projects/other/locations/us-central1/registries/reg/devices/dev1"},
		{"other location", "projects/proj/locations/europe-west1/registries/reg/devices/dev1"},
		{"other registry", "projects/proj/locations/us-central1/registries/other/devices/dev1"},
		{"empty", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name+" MQTT 3.1.1", func(t *testing.T) {
			o := mqtt3.NewClientOptions().AddBroker("tcp://" + e.bridge.Addr()).SetClientID(tt.id).SetAutoReconnect(false)
			tok := mqtt3.NewClient(o).Connect()
			if waitToken(t, tok); tok.Error() == nil || !strings.Contains(tok.Error().Error(), "not Authorized") {
				t.Errorf("connect as %q: %v, want not Authorized", tt.id, tok.Error())
			}
		})
		t.Run(tt.name+" MQTT 5", func(t *testing.T) {
			conn, err := net.Dial("tcp", e.bridge.Addr())
			if err != nil {
				t.Fatal(err)
			}
			c := paho5.NewClient(paho5.ClientConfig{Conn: conn})
			ctx, cancel := context.WithTimeout(context.Background(), safety)
			defer cancel()
			ack, err := c.Connect(ctx, &paho5.Connect{ClientID: tt.id, CleanStart: true})
			if err == nil || ack == nil || ack.ReasonCode != 0x86 {
				t.Errorf("connect as %q: %v, CONNACK %+v; want 0x86", tt.id, err, ack)
			}
		})
	}
	if !strings.Contains(e.logs.String(), "connection refused") {
		t.Error("refusals were not logged")
	}
}

func TestMosquittoPub(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Skip("mosquitto_pub not installed")
	}
	e := start(t, nil)
	host, port, _ := net.SplitHostPort(e.bridge.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "-i", clientID("dev1"),
		"-t", "/devices/dev1/events", "-q", "1", "-m", `{"temperature":21.5}`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd, err, out)
	}
	attrs := checkMessages(t, e, "events", `{"temperature":21.5}`)
	if !maps.Equal(attrs[0], wantAttrs("dev1", "")) {
		t.Errorf("attributes = %v, want %v", attrs[0], wantAttrs("dev1", ""))
	}
}

// Close lets an in-flight publish finish (Pub/Sub, then PUBACK) before it
// disconnects the device, and accepts no new connections meanwhile.
func TestCloseDrainsInFlightPublishes(t *testing.T) {
	e := start(t, nil)
	c := connectV3(t, e, "dev1", nil)
	addr := e.bridge.Addr()
	arrived, release := e.fake.HoldPublishes()
	defer release()

	tok := c.Publish("/devices/dev1/events", 1, false, "in flight")
	<-arrived
	closed := make(chan error, 1)
	go func() { closed <- e.bridge.Close() }()
	e.logs.WaitFor(t, "waiting for in-flight publishes")

	release()
	if waitToken(t, tok); tok.Error() != nil {
		t.Fatalf("in-flight publish: %v", tok.Error())
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	c.waitLost(t)
	checkMessages(t, e, "events", "in flight")
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Errorf("dial %s after Close succeeded", addr)
	}
	if err := e.bridge.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNewChecksConfig(t *testing.T) {
	pubsubtest.Start(t, project, "events")
	pub, err := publisher.New(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	base := mqttbridge.Config{Project: project, Location: location, Registry: registry, EventsTopic: "events"}
	tests := []struct {
		name    string
		mod     func(*mqttbridge.Config)
		wantErr string
	}{
		{"default address", func(c *mqttbridge.Config) {}, ""},
		{"loopback v4", func(c *mqttbridge.Config) { c.MQTTAddr = "127.0.0.1:0" }, ""},
		{"loopback v6", func(c *mqttbridge.Config) { c.MQTTAddr = "[::1]:0" }, ""},
		{"localhost", func(c *mqttbridge.Config) { c.MQTTAddr = "localhost:0" }, ""},
		{"all interfaces", func(c *mqttbridge.Config) { c.MQTTAddr = ":1883" }, `":1883" is not loopback`},
		{"0.0.0.0", func(c *mqttbridge.Config) { c.MQTTAddr = "0.0.0.0:1883" }, "not loopback"},
		{"[::]", func(c *mqttbridge.Config) { c.MQTTAddr = "[::]:1883" }, "not loopback"},
		{"LAN address", func(c *mqttbridge.Config) { c.MQTTAddr = "192.168.1.10:1883" }, "not loopback"},
		{"host name", func(c *mqttbridge.Config) { c.MQTTAddr = "mqtt.example.com:1883" }, "not loopback"},
		{"no port", func(c *mqttbridge.Config) { c.MQTTAddr = "127.0.0.1" }, "missing port"},
		{"no project", func(c *mqttbridge.Config) { c.Project = "" }, "empty Project"},
		{"no location", func(c *mqttbridge.Config) { c.Location = "" }, "empty Location"},
		{"no registry", func(c *mqttbridge.Config) { c.Registry = "" }, "empty Registry"},
		{"no events topic", func(c *mqttbridge.Config) { c.EventsTopic = "" }, "empty EventsTopic"},
		{"slash in registry", func(c *mqttbridge.Config) { c.Registry = "a/b" }, "registries/a/b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.mod(&cfg)
			b, err := mqttbridge.New(cfg, pub, slog.New(slog.DiscardHandler))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New(%+v): %v", cfg, err)
				}
				b.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New(%+v) = %v, want error containing %q", cfg, err, tt.wantErr)
			}
		})
	}
	if _, err := mqttbridge.New(base, nil, nil); err == nil {
		t.Error("New with a nil publisher succeeded")
	}
}

func TestStartLogsThatDevicesAreUnauthenticated(t *testing.T) {
	e := start(t, nil)
	logs := e.logs.String()
	if !strings.Contains(logs, "NOT authenticated") || !strings.Contains(logs, "loopback only") ||
		!strings.Contains(logs, "addr="+e.bridge.Addr()) {
		t.Errorf("start-up log lacks the unauthenticated/loopback warning with the address:\n%s", logs)
	}
	if _, port, _ := net.SplitHostPort(e.bridge.Addr()); port == "0" {
		t.Errorf("Addr() = %s, want the bound port", e.bridge.Addr())
	} else if _, err := strconv.Atoi(port); err != nil {
		t.Errorf("Addr() = %s: %v", e.bridge.Addr(), err)
	}
}

func TestStartFailsWhenPortTaken(t *testing.T) {
	e := start(t, nil)
	pub, err := publisher.New(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	b, err := mqttbridge.New(mqttbridge.Config{Project: project, Location: location, Registry: registry,
		EventsTopic: "events", MQTTAddr: e.bridge.Addr()}, pub, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Start(); err == nil || !strings.Contains(err.Error(), e.bridge.Addr()) {
		t.Fatalf("Start on a taken port = %v, want an error naming %s", err, e.bridge.Addr())
	}
}
