package mqttbridge_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"
	packets3 "github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/iotpipe/iotpipe/ingress/adminapi"
	"github.com/iotpipe/iotpipe/ingress/devicebus"
	"github.com/iotpipe/iotpipe/ingress/internal/logtest"
	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	reg "github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
)

// instance is one bridge instance: MQTT bridge, device bus and admin API.
type instance struct {
	*env
	bus   *devicebus.Bus
	admin *httptest.Server
}

// startInstances starts a registry (with the bridge's registry and devices
// ids, each with config "v1") and one bridge instance per name, sharing
// the registry. With fanout, the instances reach each other through a
// Pub/Sub topic; without it each can reach only its own devices.
func startInstances(t *testing.T, fanout bool, names []string, ids ...string) []*instance {
	t.Helper()
	store := registrytest.Start(t, reg.Config{})
	ctx := t.Context()
	regPath := reg.Path{Project: project, Location: location, Registry: registry}
	if _, err := store.CreateRegistry(ctx, project, location, reg.Registry{ID: registry}); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := store.CreateDevice(ctx, regPath, reg.Device{ID: id, Config: reg.DeviceConfig{BinaryData: []byte("v1")}}); err != nil {
			t.Fatal(err)
		}
	}
	fake := pubsubtest.Start(t, project, "events", "c2d") // after the registry: it points PUBSUB_EMULATOR_HOST here
	var out []*instance
	for _, name := range names {
		logs := &logtest.Buffer{}
		logger := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug})).
			With("instance", name)
		pub, err := publisher.New(ctx, project)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pub.Close() })
		busCfg := devicebus.Config{Instance: name, Project: project}
		if fanout {
			busCfg.FanoutTopic = "c2d"
		}
		bus, err := devicebus.New(store, busCfg, pub, logger)
		if err != nil {
			t.Fatal(err)
		}
		b, err := mqttbridge.New(mqttbridge.Config{
			Project: project, Location: location, Registry: registry, EventsTopic: "events", MQTTAddr: "127.0.0.1:0",
		}, pub, logger, mqttbridge.WithDeviceBus(bus))
		if err != nil {
			t.Fatalf("mqttbridge.New: %v", err)
		}
		if err := bus.Start(ctx); err != nil {
			t.Fatalf("bus.Start: %v", err)
		}
		t.Cleanup(func() {
			if err := bus.Close(); err != nil {
				t.Errorf("bus.Close: %v", err)
			}
		})
		if err := b.Start(); err != nil {
			t.Fatalf("Start: %v", err)
		}
		t.Cleanup(func() { b.Close() })
		api, err := adminapi.New(store, bus, adminapi.Config{Project: project, Location: location, Registry: registry}, logger)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(api)
		t.Cleanup(srv.Close)
		out = append(out, &instance{env: &env{fake: fake, bridge: b, logs: logs}, bus: bus, admin: srv})
	}
	return out
}

// result is an admin API answer: the HTTP status and the error status ("" on success).
type result struct {
	code   int
	status string
}

// call makes an admin API call on a device.
func (in *instance) call(t *testing.T, device, method string, body any) result {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	url := in.admin.URL + "/v1/projects/" + project + "/locations/" + location + "/registries/" + registry +
		"/devices/" + device + ":" + method
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error struct {
			Message, Status string
		}
	}
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatalf("%s %s: %d %s: %v", device, method, resp.StatusCode, raw, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Logf("%s %s: %d %s", device, method, resp.StatusCode, raw)
	}
	return result{resp.StatusCode, e.Error.Status}
}

func (in *instance) modifyConfig(t *testing.T, device string, versionToUpdate int64, data string) result {
	t.Helper()
	return in.call(t, device, "modifyCloudToDeviceConfig", map[string]string{
		"versionToUpdate": strconv.FormatInt(versionToUpdate, 10), "binaryData": base64.StdEncoding.EncodeToString([]byte(data))})
}

func (in *instance) sendCommand(t *testing.T, device, subfolder, data string) result {
	t.Helper()
	return in.call(t, device, "sendCommandToDevice", map[string]string{
		"subfolder": subfolder, "binaryData": base64.StdEncoding.EncodeToString([]byte(data))})
}

func wantOK(t *testing.T, what string, r result) {
	t.Helper()
	if r.code != http.StatusOK {
		t.Fatalf("%s = %d %s, want 200", what, r.code, r.status)
	}
}

func wantFailedPrecondition(t *testing.T, what string, r result) {
	t.Helper()
	if r.code != http.StatusBadRequest || r.status != "FAILED_PRECONDITION" {
		t.Fatalf("%s = %d %s, want 400 FAILED_PRECONDITION", what, r.code, r.status)
	}
}

// msg is a message a device received; qos is -1 when the client cannot say.
type msg struct {
	topic, payload string
	qos            int
}

func next(t *testing.T, ch <-chan msg) msg {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(safety):
		t.Fatalf("no message after %v", safety)
		return msg{}
	}
}

func wantMsg(t *testing.T, ch <-chan msg, topic, payload string, qos int) {
	t.Helper()
	m := next(t, ch)
	if m.topic != topic || m.payload != payload || qos >= 0 && m.qos >= 0 && m.qos != qos {
		t.Fatalf("device got %s %q QoS %d, want %s %q QoS %d", m.topic, m.payload, m.qos, topic, payload, qos)
	}
}

// subscriber connects device to e with a real client, subscribes to its
// config and commands topics with qos in one SUBSCRIBE, and returns what
// the device receives.
type subscriber func(t *testing.T, e *env, device string, qos byte) <-chan msg

func subscribeV3(t *testing.T, e *env, device string, qos byte) <-chan msg {
	t.Helper()
	_, ch := subscribeV3Client(t, e, device, qos)
	return ch
}

func subscribeV3Client(t *testing.T, e *env, device string, qos byte) (*v3, <-chan msg) {
	t.Helper()
	ch := make(chan msg, 16)
	c := connectV3(t, e, device, nil)
	tok := c.SubscribeMultiple(map[string]byte{"/devices/" + device + "/config": qos, "/devices/" + device + "/commands/#": qos},
		func(_ mqtt3.Client, m mqtt3.Message) { ch <- msg{m.Topic(), string(m.Payload()), int(m.Qos())} })
	if waitToken(t, tok); tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return c, ch
}

func subscribeV5(t *testing.T, e *env, device string, qos byte) <-chan msg {
	t.Helper()
	ch := make(chan msg, 16)
	c, _ := connectV5(t, e, device)
	c.AddOnPublishReceived(func(pr paho5.PublishReceived) (bool, error) {
		ch <- msg{pr.Packet.Topic, string(pr.Packet.Payload), int(pr.Packet.QoS)}
		return true, nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{
		{Topic: "/devices/" + device + "/config", QoS: qos}, {Topic: "/devices/" + device + "/commands/#", QoS: qos},
	}}); err != nil {
		t.Fatalf("MQTT 5 subscribe: %v", err)
	}
	return ch
}

// subscribeMosquitto runs Debian's mosquitto_sub (MQTT 3.1.1), which
// prints "topic payload" per message.
func subscribeMosquitto(t *testing.T, e *env, device string, qos byte) <-chan msg {
	t.Helper()
	bin, err := exec.LookPath("mosquitto_sub")
	if err != nil {
		t.Skip("mosquitto_sub not installed (Debian package mosquitto-clients)")
	}
	host, port, _ := net.SplitHostPort(e.bridge.Addr())
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "-i", clientID(device), "-V", "mqttv311",
		"-q", strconv.Itoa(int(qos)), "-v", "-t", "/devices/"+device+"/config", "-t", "/devices/"+device+"/commands/#")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("%v: %v", cmd, err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if stderr.Len() > 0 {
			t.Logf("mosquitto_sub stderr: %s", stderr.String())
		}
	})
	ch := make(chan msg, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			topic, payload, _ := strings.Cut(sc.Text(), " ")
			ch <- msg{topic, payload, -1}
		}
	}()
	return ch
}

// A device is sent its config when it subscribes and each new version
// after; a version conflict changes and sends nothing; commands reach it
// on the commands topic with their subfolder.
func TestConfigAndCommands(t *testing.T) {
	tests := []struct {
		name    string
		connect subscriber
		qos     byte
	}{
		{"paho MQTT 3.1.1 QoS 1", subscribeV3, 1},
		{"paho MQTT 3.1.1 QoS 0", subscribeV3, 0},
		{"paho MQTT 5 QoS 1", subscribeV5, 1},
		{"paho MQTT 5 QoS 0", subscribeV5, 0},
		{"mosquitto_sub QoS 1", subscribeMosquitto, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := startInstances(t, false, []string{"a"}, "dev1")[0]
			got := tt.connect(t, in.env, "dev1", tt.qos)
			qos := int(tt.qos)
			wantMsg(t, got, "/devices/dev1/config", "v1", qos)

			wantOK(t, "modify config of version 1", in.modifyConfig(t, "dev1", 1, "v2"))
			wantMsg(t, got, "/devices/dev1/config", "v2", qos)

			wantFailedPrecondition(t, "modify config of version 1 again", in.modifyConfig(t, "dev1", 1, "conflict"))

			wantOK(t, "command", in.sendCommand(t, "dev1", "", "reboot"))
			wantMsg(t, got, "/devices/dev1/commands", "reboot", qos)
			wantOK(t, "command to a subfolder", in.sendCommand(t, "dev1", "fan/speed", "3"))
			wantMsg(t, got, "/devices/dev1/commands/fan/speed", "3", qos)

			// The conflict sent nothing: the next config message is v3.
			wantOK(t, "modify config of any version", in.modifyConfig(t, "dev1", 0, "v3"))
			wantMsg(t, got, "/devices/dev1/config", "v3", qos)
		})
	}
}

// Commands reach only a device subscribed to the command's topic; any
// other answers FAILED_PRECONDITION, as IoT Core did.
func TestCommandNeedsSubscription(t *testing.T) {
	in := startInstances(t, false, []string{"a"}, "dev1", "dev2", "dev3")[0]
	ch := make(chan msg, 16)
	handler := func(_ mqtt3.Client, m mqtt3.Message) { ch <- msg{m.Topic(), string(m.Payload()), int(m.Qos())} }

	wantFailedPrecondition(t, "command to a device never connected", in.sendCommand(t, "dev1", "", "x"))

	c1 := connectV3(t, in.env, "dev1", nil)
	wantFailedPrecondition(t, "command to a connected device with no subscription", in.sendCommand(t, "dev1", "", "x"))

	if tok := c1.Subscribe("/devices/dev1/config", 1, handler); waitToken(t, tok) && tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	wantMsg(t, ch, "/devices/dev1/config", "v1", 1)
	wantFailedPrecondition(t, "command to a device subscribed to config only", in.sendCommand(t, "dev1", "", "x"))

	if tok := c1.Subscribe("/devices/dev1/commands/fan", 1, handler); waitToken(t, tok) && tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	wantFailedPrecondition(t, "command to another subfolder", in.sendCommand(t, "dev1", "light", "on"))
	wantFailedPrecondition(t, "command without subfolder", in.sendCommand(t, "dev1", "", "on"))
	wantOK(t, "command to the subscribed subfolder", in.sendCommand(t, "dev1", "fan", "on"))
	wantMsg(t, ch, "/devices/dev1/commands/fan", "on", 1)

	if tok := c1.Unsubscribe("/devices/dev1/commands/fan"); waitToken(t, tok) && tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	wantFailedPrecondition(t, "command after unsubscribe", in.sendCommand(t, "dev1", "fan", "off"))

	// A QoS 0 subscription gets QoS 0 commands.
	c2 := connectV3(t, in.env, "dev2", nil)
	if tok := c2.Subscribe("/devices/dev2/commands/#", 0, handler); waitToken(t, tok) && tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	wantOK(t, "command to a QoS 0 subscription", in.sendCommand(t, "dev2", "a/b", "x"))
	wantMsg(t, ch, "/devices/dev2/commands/a/b", "x", 0)
	c2.Disconnect(0)
	in.logs.WaitForLine(t, `msg="connection ended"`, "device=dev2")
	wantFailedPrecondition(t, "command after disconnect", in.sendCommand(t, "dev2", "", "x"))

	for _, bad := range []struct{ subfolder, want string }{
		{"a//b", "INVALID_ARGUMENT"}, {"#", "INVALID_ARGUMENT"}, {"a/+", "INVALID_ARGUMENT"}, {"/a", "INVALID_ARGUMENT"},
	} {
		if r := in.sendCommand(t, "dev1", bad.subfolder, "x"); r.code != http.StatusBadRequest || r.status != bad.want {
			t.Errorf("command to subfolder %q = %+v, want 400 %s", bad.subfolder, r, bad.want)
		}
	}
	if r := in.sendCommand(t, "nope", "", "x"); r.code != http.StatusNotFound || r.status != "NOT_FOUND" {
		t.Errorf("command to an unknown device = %+v, want 404 NOT_FOUND", r)
	}
	if r := in.sendCommand(t, "dev1", "", strings.Repeat("x", devicebus.MaxCommandBytes+1)); r.code != http.StatusBadRequest || r.status != "INVALID_ARGUMENT" {
		t.Errorf("command over 256 KB = %+v, want 400 INVALID_ARGUMENT", r)
	}
}

// Only the newest config is pending: versions the device did not
// acknowledge are dropped when a newer one is sent, so a resumed session
// gets the newest alone, never an older one after it.
func TestOnlyNewestConfigPending(t *testing.T) {
	in := startInstances(t, false, []string{"a"}, "dev1")[0]
	conn := dial3(t, in.env, "dev1", false)
	sub := packets3.NewControlPacket(packets3.Subscribe).(*packets3.SubscribePacket)
	sub.Topics, sub.Qoss, sub.MessageID = []string{"/devices/dev1/config"}, []byte{1}, 1
	if err := sub.Write(conn); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(safety))
	read := func(conn net.Conn) packets3.ControlPacket {
		t.Helper()
		p, err := packets3.ReadPacket(conn)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		return p
	}
	if p, ok := read(conn).(*packets3.SubackPacket); !ok || p.ReturnCodes[0] != 1 {
		t.Fatalf("want SUBACK granting QoS 1, got %v", p)
	}
	wantPublish := func(conn net.Conn, payload string) *packets3.PublishPacket {
		t.Helper()
		p, ok := read(conn).(*packets3.PublishPacket)
		if !ok || string(p.Payload) != payload || p.Qos != 1 || p.TopicName != "/devices/dev1/config" {
			t.Fatalf("want QoS 1 PUBLISH %q to /devices/dev1/config, got %v", payload, p)
		}
		return p
	}
	// None of these is acknowledged.
	wantPublish(conn, "v1")
	wantOK(t, "modify config", in.modifyConfig(t, "dev1", 0, "v2"))
	wantPublish(conn, "v2")
	wantOK(t, "modify config", in.modifyConfig(t, "dev1", 0, "v3"))
	v3 := wantPublish(conn, "v3")
	conn.Close()

	// The session resumes: mochi resends what is pending, and the hook
	// sends the current config. Everything written before the PINGRESP
	// was written on resumption.
	conn = dial3(t, in.env, "dev1", false)
	conn.SetReadDeadline(time.Now().Add(safety))
	if err := packets3.NewControlPacket(packets3.Pingreq).Write(conn); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		p := read(conn)
		if _, ok := p.(*packets3.PingrespPacket); ok {
			break
		}
		pp, ok := p.(*packets3.PublishPacket)
		if !ok {
			t.Fatalf("unexpected %v", p)
		}
		got = append(got, string(pp.Payload))
		if pp.Dup && pp.MessageID != v3.MessageID {
			t.Errorf("resent packet id %d, want the pending v3's %d", pp.MessageID, v3.MessageID)
		}
		ack := packets3.NewControlPacket(packets3.Puback).(*packets3.PubackPacket)
		ack.MessageID = pp.MessageID
		if err := ack.Write(conn); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("after resuming: %q", got)
	if len(got) == 0 || strings.Trim(strings.Join(got, ""), "v3") != "" {
		t.Fatalf("after resuming the session the device got %q, want only v3", got)
	}
}

// Instances reach each other through the fan-out topic: the device holds
// a connection to instance b, the admin calls go to instance a.
func TestFanOutBetweenInstances(t *testing.T) {
	ins := startInstances(t, true, []string{"a", "b"}, "dev1", "dev2")
	a, b := ins[0], ins[1]
	old, got := subscribeV3Client(t, b.env, "dev1", 1)
	wantMsg(t, got, "/devices/dev1/config", "v1", 1)

	wantOK(t, "command through a", a.sendCommand(t, "dev1", "x", "hello"))
	wantMsg(t, got, "/devices/dev1/commands/x", "hello", 1)
	wantOK(t, "config through a", a.modifyConfig(t, "dev1", 1, "v2"))
	wantMsg(t, got, "/devices/dev1/config", "v2", 1)
	wantFailedPrecondition(t, "config conflict through a", a.modifyConfig(t, "dev1", 1, "v2 again"))

	// A device connected to b without a commands subscription.
	connectV3(t, b.env, "dev2", nil)
	wantFailedPrecondition(t, "command through a to a device without subscription", a.sendCommand(t, "dev2", "", "x"))

	// dev1 moves to instance a: the newer connection is where its
	// messages go, through either instance.
	moved := subscribeV3(t, a.env, "dev1", 1)
	wantMsg(t, moved, "/devices/dev1/config", "v2", 1)
	wantOK(t, "command through b after the move", b.sendCommand(t, "dev1", "", "where"))
	wantMsg(t, moved, "/devices/dev1/commands", "where", 1)
	wantOK(t, "command through a after the move", a.sendCommand(t, "dev1", "", "here"))
	wantMsg(t, moved, "/devices/dev1/commands", "here", 1)
	select {
	case m := <-got:
		t.Errorf("the old connection on b got %v", m)
	default:
	}

	// The old connection ends: b must not erase a's newer presence.
	old.Disconnect(0)
	b.logs.WaitForLine(t, `msg="connection ended"`, "device=dev1", "presence_cleared=false")
	wantOK(t, "command through b after the old connection ended", b.sendCommand(t, "dev1", "", "still"))
	wantMsg(t, moved, "/devices/dev1/commands", "still", 1)
}

// Without a fan-out topic an instance cannot reach a device held by
// another, and says so (503 UNAVAILABLE) rather than pretending.
func TestNoFanOutTopic(t *testing.T) {
	ins := startInstances(t, false, []string{"a", "b"}, "dev1")
	got := subscribeV3(t, ins[1].env, "dev1", 1)
	wantMsg(t, got, "/devices/dev1/config", "v1", 1)
	if r := ins[0].sendCommand(t, "dev1", "", "x"); r.code != http.StatusServiceUnavailable || r.status != "UNAVAILABLE" {
		t.Errorf("command through a to a device on b = %+v, want 503 UNAVAILABLE", r)
	}
	wantOK(t, "command through b", ins[1].sendCommand(t, "dev1", "", "x"))
	wantMsg(t, got, "/devices/dev1/commands", "x", 1)
	// The config is stored even when it cannot be delivered now.
	wantOK(t, "config through a", ins[0].modifyConfig(t, "dev1", 1, "v2"))
}

// A second connection of a device drops the first; the first's
// disconnect must not erase the presence of the second.
func TestSecondConnectionKeepsPresence(t *testing.T) {
	in := startInstances(t, false, []string{"a"}, "dev1")[0]
	first := connectV3(t, in.env, "dev1", nil)
	if tok := first.Subscribe("/devices/dev1/commands/#", 1, nil); waitToken(t, tok) && tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	second := subscribeV3(t, in.env, "dev1", 1)
	first.waitLost(t)
	in.logs.WaitForLine(t, `msg="connection ended"`, "device=dev1")
	wantMsg(t, second, "/devices/dev1/config", "v1", 1)
	wantOK(t, "command", in.sendCommand(t, "dev1", "", "x"))
	wantMsg(t, second, "/devices/dev1/commands", "x", 1)
}

// A config larger than an MQTT 5 client's Maximum Packet Size is stored
// but not sent (nor left pending); the next one that fits is.
func TestConfigTooLargeForClient(t *testing.T) {
	in := startInstances(t, false, []string{"a"}, "dev1")[0]
	conn, err := net.Dial("tcp", in.bridge.Addr())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan msg, 16)
	c := paho5.NewClient(paho5.ClientConfig{Conn: conn, OnClientError: func(error) {},
		OnPublishReceived: []func(paho5.PublishReceived) (bool, error){func(pr paho5.PublishReceived) (bool, error) {
			got <- msg{pr.Packet.Topic, string(pr.Packet.Payload), int(pr.Packet.QoS)}
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	maxSize := uint32(256)
	if _, err := c.Connect(ctx, &paho5.Connect{ClientID: clientID("dev1"), KeepAlive: 30, CleanStart: true,
		Properties: &paho5.ConnectProperties{MaximumPacketSize: &maxSize}}); err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Disconnect(&paho5.Disconnect{}) })
	if _, err := c.Subscribe(ctx, &paho5.Subscribe{Subscriptions: []paho5.SubscribeOptions{{Topic: "/devices/dev1/config", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	wantMsg(t, got, "/devices/dev1/config", "v1", 1)
	wantOK(t, "modify config too large for the client", in.modifyConfig(t, "dev1", 0, strings.Repeat("x", 1024)))
	in.logs.WaitFor(t, "packet too large")
	wantOK(t, "modify config", in.modifyConfig(t, "dev1", 0, "v3"))
	wantMsg(t, got, "/devices/dev1/config", "v3", 1)
}
