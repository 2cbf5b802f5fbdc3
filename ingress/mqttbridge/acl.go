package mqttbridge

import (
	"errors"
	"fmt"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
)

// disconnector closes a client's connection, telling MQTT 5 clients why.
type disconnector interface {
	DisconnectClient(cl *mqtt.Client, code packets.Code) error
}

// serverDisconnector disconnects through mochi, except that an MQTT 3.1.1
// connection is just closed: mochi would send it a DISCONNECT packet, which
// only clients may send in 3.1.1.
type serverDisconnector struct{ server *mqtt.Server }

func (d serverDisconnector) DisconnectClient(cl *mqtt.Client, code packets.Code) error {
	if cl.Properties.ProtocolVersion < 5 {
		cl.Stop(code)
		return nil
	}
	return d.server.DisconnectClient(cl, code)
}

// aclHook lets a device publish only to its own events and state topics and
// subscribe only to its own config and commands topics. Anything else closes
// the connection, as IoT Core did. (mochi alone would silently drop a denied
// QoS 0 publish and keep an MQTT 5 client connected, server.go:867-883.)
//
// Like identityHook it must be the only hook providing OnACLCheck, because
// mochi allows what any hook allows (hooks.go:672).
type aclHook struct {
	mqtt.HookBase
	devices *deviceTable
	disc    disconnector
	log     *slog.Logger
}

func (h *aclHook) ID() string { return "iotcore-acl" }

func (h *aclHook) Provides(b byte) bool { return b == mqtt.OnACLCheck }

// OnACLCheck is called with write=true for a PUBLISH from the client, on its
// read goroutine, and write=false for each SUBSCRIBE filter and each message
// delivered to it, which may be on another goroutine.
func (h *aclHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	err := h.check(cl, topic, write)
	if err == nil {
		return true
	}
	h.log.Warn("closing connection: topic not allowed", "client", cl.ID, "remote", cl.Net.Remote,
		"topic", topic, "publish", write, "reason", err)
	_ = h.disc.DisconnectClient(cl, packets.ErrNotAuthorized)
	return false
}

func (h *aclHook) check(cl *mqtt.Client, topic string, write bool) error {
	s, ok := h.devices.get(cl)
	if !ok {
		return errors.New("client has no authenticated device")
	}
	var t iotcore.Topic
	var err error
	if write {
		t, err = s.topic(topic) // the publish's hooks reuse this parse
	} else {
		t, err = iotcore.ParseTopic(topic) // not necessarily on the client's read goroutine
	}
	if err != nil {
		return err
	}
	if t.Device != s.dev.Path.Device {
		return fmt.Errorf("topic of device %q, client is device %q", t.Device, s.dev.Path.Device)
	}
	switch {
	case write && (t.Kind == iotcore.Events || t.Kind == iotcore.State):
		return nil
	case !write && (t.Kind == iotcore.Config || t.Kind == iotcore.Commands):
		return nil
	case write:
		return fmt.Errorf("devices publish to events or state, not %s", t.Kind)
	default:
		return fmt.Errorf("devices subscribe to config or commands, not %s", t.Kind)
	}
}
