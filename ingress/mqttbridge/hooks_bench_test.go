package mqttbridge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/ingress/metrics"
	"github.com/iotpipe/iotpipe/ingress/publisher"
)

// instantRouter confirms every message at once, so that a benchmark measures
// the hooks and not Pub/Sub.
type instantRouter struct{}

func (instantRouter) Publish(context.Context, publisher.Message) (publisher.Sent, error) {
	return publisher.Sent{Topic: "projects/proj/topics/events", MessageID: "1"}, nil
}

// BenchmarkPublishHooks drives the hooks through one QoS 1 PUBLISH of one
// connected device the way mochi does (server.go processPacket and
// processPublish), through mochi's own dispatch so that each hook's
// Provides is counted too: OnPacketRead, OnACLCheck, OnPublish, OnPublished
// and OnPacketProcessed. The hooks are those of newBridge, in its order,
// with limits high enough that nothing waits and debug logging off.
func BenchmarkPublishHooks(b *testing.B) {
	for _, bc := range []struct {
		name string
		m    *metrics.Metrics
	}{{"metrics", metrics.New()}, {"nometrics", nil}} {
		b.Run(bc.name, func(b *testing.B) { benchmarkPublishHooks(b, bc.m) })
	}
}

func benchmarkPublishHooks(b *testing.B, m *metrics.Metrics) {
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	devices := &deviceTable{}
	disc := &recordingDisconnector{}
	limits := Limits{ConnectionMessagesPerSecond: 1e12, DeviceBytesPerSecond: 1e15, DeviceStatePerSecond: 1e12}
	hooks := &mqtt.Hooks{Log: log}
	for _, h := range []mqtt.Hook{
		&dialectHook{disc: disc, log: log},
		&expiryHook{grace: DefaultExpiryGrace, devices: devices, disc: disc, log: log},
		&aclHook{devices: devices, disc: disc, log: log},
		newRateLimitHook(limits, devices, disc, m, log),
		&metricsHook{devices: devices, metrics: m, log: log},
		&forwardHook{router: instantRouter{}, timeout: forwardTimeout, devices: devices, disc: disc, log: log},
		&identityHook{registry: testRegistry, auth: AllowAll{}, devices: devices, metrics: m, log: log},
	} {
		if err := hooks.Add(h, nil); err != nil {
			b.Fatal(err)
		}
	}

	cl := mqtt.New(&mqtt.Options{Logger: log}).NewClient(nil, "bench", devicePath("dev1").String(), false)
	cl.Properties.ProtocolVersion = 4
	connect := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}}
	if !hooks.OnConnectAuthenticate(cl, connect) {
		b.Fatal("device not admitted")
	}
	hooks.OnSessionEstablished(cl, connect)
	defer hooks.OnDisconnect(cl, nil, true)

	// mochi decodes each packet's topic afresh: two copies at different
	// addresses keep a cache from matching by pointer alone.
	topics := [2]string{strings.Clone("/devices/dev1/events/sensors"), strings.Clone("/devices/dev1/events/sensors")}
	payload := make([]byte, 100)
	var ignored error = packets.CodeSuccessIgnore // boxed once, not per message
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		pk := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			TopicName:   topics[i&1], Payload: payload, PacketID: uint16(i%65535 + 1),
		}
		i++
		pk, err := hooks.OnPacketRead(cl, pk)
		if err != nil {
			b.Fatal(err)
		}
		if !hooks.OnACLCheck(cl, pk.TopicName, true) {
			b.Fatal("ACL refused the publish")
		}
		if _, err := hooks.OnPublish(cl, pk); !errors.Is(err, ignored) {
			b.Fatalf("OnPublish = %v, want CodeSuccessIgnore", err)
		}
		hooks.OnPublished(cl, pk)
		hooks.OnPacketProcessed(cl, pk, nil)
	}
	b.StopTimer()
	if len(disc.got) != 0 {
		b.Fatalf("hooks disconnected the client: %v", disc.got)
	}
}
