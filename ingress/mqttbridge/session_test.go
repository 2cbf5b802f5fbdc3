package mqttbridge

import (
	"strings"
	"testing"
	"time"
	"unsafe"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
)

// The hooks share one session per connection, which identityHook ends in
// its OnDisconnect. Through the bridge's real hook order: what the rate
// limiter holds is given back once per connection, before the session goes,
// and a device's second connection keeps its session when mochi closes the
// first.
func TestSessionLifecycle(t *testing.T) {
	cfg := Config{Project: testRegistry.Project, Location: testRegistry.Location, Registry: testRegistry.Registry,
		MQTTAddr: "127.0.0.1:0"}
	b, err := newBridge(cfg, instantRouter{}, AllowAll{}, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	devices, dp := b.forward.devices, devicePath("dev1")

	sessions := func() (n int) {
		devices.m.Range(func(any, any) bool { n++; return true })
		return n
	}
	waitSessions := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); sessions() != want; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d sessions, want %d", sessions(), want)
			}
		}
	}
	deviceRefs := func() int {
		b.limits.mu.Lock()
		defer b.limits.mu.Unlock()
		if d, ok := b.limits.devs[dp]; ok {
			return d.refs
		}
		return 0
	}
	lost := make(chan error, 2)
	connect := func() mqtt3.Client {
		t.Helper()
		c := mqtt3.NewClient(mqtt3.NewClientOptions().AddBroker("tcp://" + b.Addr()).
			SetClientID(dp.String()).SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false).
			SetConnectionLostHandler(func(_ mqtt3.Client, err error) { lost <- err }))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c
	}
	publish := func(c mqtt3.Client, topic string) {
		t.Helper()
		if tok := c.Publish(topic, 1, false, "x"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish to %s: not acknowledged: %v", topic, tok.Error())
		}
	}

	first := connect()
	publish(first, "/devices/dev1/state")
	publish(first, "/devices/dev1/events/a")
	if n := deviceRefs(); n != 1 {
		t.Fatalf("device limits held by %d connections, want 1", n)
	}

	second := connect() // mochi closes the first connection
	select {
	case <-lost:
	case <-time.After(10 * time.Second):
		t.Fatal("first connection still open")
	}
	waitSessions(1) // the first's OnDisconnect is over
	if n := deviceRefs(); n != 1 {
		t.Errorf("after the first connection closed, device limits held by %d connections, want 1", n)
	}
	publish(second, "/devices/dev1/events") // aclHook closes a connection without a session

	second.Disconnect(100)
	waitSessions(0)
	if n := deviceRefs(); n != 0 {
		t.Errorf("after both connections closed, device limits held by %d connections, want 0", n)
	}
	g := b.limits.tenant(dp)
	if !g.messages.TryAcquire(g.maxMessages) || !g.bytes.TryAcquire(g.maxBytes) {
		t.Error("the tenant gate did not get all its tokens back")
	}
}

// session.topic answers as iotcore.ParseTopic does, whatever it parsed before.
func TestSessionTopic(t *testing.T) {
	s := &session{}
	for i, name := range []string{
		"", "/devices/dev1/events/a", "/devices/dev1/events/a", "/devices/dev1/state", "/devices/dev1/events/a",
		"/devices/dev1/bad", "/devices/dev1/events/a", "", "/devices/dev1/events/a/b",
	} {
		// A fresh copy each time, as mochi decodes each packet's topic.
		name = strings.Clone(name)
		got, gotErr := s.topic(name)
		want, wantErr := iotcore.ParseTopic(name)
		if got != want || (gotErr == nil) != (wantErr == nil) {
			t.Errorf("%d: topic(%q) = %+v, %v; want %+v, %v", i, name, got, gotErr, want, wantErr)
		}
		if s.lastTopic != "" && unsafe.StringData(s.lastTopic) == unsafe.StringData(name) {
			t.Errorf("%d: the cached topic shares the packet's memory", i)
		}
	}
}
