package mqttbridge

import (
	"fmt"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// dialectHook refuses what MQTT allows but IoT Core's dialect does not, where
// mochi would otherwise go along quietly:
//   - a QoS 2 PUBLISH closes the connection (mochi would downgrade it to the
//     server's maximum QoS, server.go:909);
//   - a PUBLISH to a topic name mochi drops unseen, such as one under $SYS,
//     closes the connection (server.go:859 returns before any ACL check);
//   - a will message is discarded: mochi would publish it to subscribers
//     without an ACL check, so a device could write into another device's
//     config topic, and IoT Core never forwarded wills to Pub/Sub.
type dialectHook struct {
	mqtt.HookBase
	disc disconnector
	log  *slog.Logger
}

func (h *dialectHook) ID() string { return "iotcore-dialect" }

func (h *dialectHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnPacketRead:
		return true
	}
	return false
}

// OnConnect runs before authentication, on the connection's own goroutine,
// before anything can send the will.
func (h *dialectHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if pk.Connect.WillFlag {
		h.log.Info("discarding will message: not part of the IoT Core protocol",
			"client", cl.ID, "remote", cl.Net.Remote, "will_topic", pk.Connect.WillTopic)
		cl.Properties.Will = mqtt.Will{}
	}
	return nil
}

// OnPacketRead sees each packet before mochi validates or processes it;
// ErrRejectPacket from here ends the connection's read loop.
func (h *dialectHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	code := packets.CodeSuccess
	switch {
	case pk.FixedHeader.Qos > 1:
		code = packets.ErrQosNotSupported
	case pk.TopicName != "" && !mqtt.IsValidFilter(pk.TopicName, true):
		code = packets.ErrTopicNameInvalid
	}
	if code == packets.CodeSuccess {
		return pk, nil
	}
	h.log.Warn("closing connection: publish not allowed", "client", cl.ID, "remote", cl.Net.Remote,
		"topic", pk.TopicName, "qos", pk.FixedHeader.Qos, "reason", code.Reason)
	_ = h.disc.DisconnectClient(cl, code)
	return pk, fmt.Errorf("%w: %s", packets.ErrRejectPacket, code.Reason)
}
