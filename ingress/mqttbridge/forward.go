package mqttbridge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
)

// forwardTimeout bounds the wait for Pub/Sub's confirmation of one message.
// It holds the connection's read loop (and so the device's keepalive), and
// past it the device is better off resending on a new connection.
const forwardTimeout = 10 * time.Second

// eventPublisher is the part of *publisher.Publisher the bridge uses.
type eventPublisher interface {
	Publish(ctx context.Context, topicID string, data []byte, attrs map[string]string) (string, error)
}

// errForwardFailed is the DISCONNECT reason when Pub/Sub did not take a message.
var errForwardFailed = packets.Code{Code: packets.ErrUnspecifiedError.Code, Reason: "message not stored in Pub/Sub; resend it"}

// forwardHook publishes each accepted device message to Pub/Sub and lets
// mochi acknowledge it only after Pub/Sub confirmed it.
//
// mochi calls OnPublish on the connection's read goroutine and writes the
// PUBACK after it returns (server.go:913 then 941-955), so waiting here for
// Pub/Sub delays the PUBACK until the message is stored. On success the hook
// returns CodeSuccessIgnore: mochi still acknowledges but neither retains the
// message nor fans it out to MQTT subscribers (server.go:918, 974, 986), since
// Pub/Sub is the only destination. On failure it returns ErrRejectPacket, on
// which mochi returns before the PUBACK (server.go:916-917); the hook also
// closes the connection, because MQTT has no negative acknowledgement before
// v5 and a device resends unacknowledged QoS 1 messages when it reconnects.
//
// Because the read loop waits, one connection has one message in flight at a
// time: its throughput is bounded by Pub/Sub's round trip.
//
// It must be the last hook providing OnPublish: mochi stops calling OnPublish
// hooks at the first that returns CodeSuccessIgnore or an error (hooks.go:396).
type forwardHook struct {
	mqtt.HookBase
	pub         eventPublisher
	eventsTopic string
	stateTopic  string // "" means state messages are acknowledged and not forwarded
	timeout     time.Duration
	devices     *deviceTable
	disc        disconnector
	log         *slog.Logger

	drain drainGate
	// pending holds the clients whose publish is between OnPublish and
	// OnPacketProcessed, i.e. whose PUBACK is not written yet. A client's
	// packets are processed one at a time, so one entry per client suffices.
	pending sync.Map // *mqtt.Client → struct{}
}

func (h *forwardHook) ID() string { return "pubsub-forward" }

func (h *forwardHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPublish, mqtt.OnPacketProcessed}, []byte{b})
}

func (h *forwardHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !h.drain.enter() {
		return pk, h.refuse(cl, pk, packets.ErrServerShuttingDown, errors.New("bridge is shutting down"))
	}
	h.pending.Store(cl, struct{}{})

	topicID, attrs, err := h.route(cl, pk.TopicName)
	if err != nil {
		return pk, h.refuse(cl, pk, packets.ErrNotAuthorized, err)
	}
	if topicID == "" {
		h.log.Debug("state not forwarded: no state topic configured", "client", cl.ID)
		return pk, packets.CodeSuccessIgnore
	}

	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	id, err := h.pub.Publish(ctx, topicID, pk.Payload, attrs)
	if err != nil {
		err = fmt.Errorf("forward %d bytes from %s to Pub/Sub topic %s: %w", len(pk.Payload), pk.TopicName, topicID, err)
		if pk.FixedHeader.Qos == 0 {
			// Nothing to withhold and nothing will be resent: drop it, keep the connection.
			h.log.Error("dropping QoS 0 message", "client", cl.ID, "error", err)
			return pk, fmt.Errorf("%w: %w", packets.ErrRejectPacket, err)
		}
		return pk, h.refuse(cl, pk, errForwardFailed, err)
	}
	h.log.Debug("forwarded", "client", cl.ID, "topic", pk.TopicName, "pubsub_topic", topicID, "message_id", id)
	return pk, packets.CodeSuccessIgnore
}

// route returns the Pub/Sub topic and attributes for a message the ACL
// allowed, or an empty topic for state when no state topic is configured.
func (h *forwardHook) route(cl *mqtt.Client, topic string) (string, map[string]string, error) {
	dev, ok := h.devices.get(cl)
	if !ok {
		return "", nil, errors.New("client has no authenticated device")
	}
	t, err := iotcore.ParseTopic(topic)
	if err != nil {
		return "", nil, err
	}
	switch t.Kind {
	case iotcore.Events:
		return h.eventsTopic, iotcore.EventAttributes(dev.Path, dev.NumID, t.SubFolder), nil
	case iotcore.State:
		return h.stateTopic, iotcore.EventAttributes(dev.Path, dev.NumID, ""), nil
	}
	return "", nil, fmt.Errorf("no Pub/Sub topic for %s messages", t.Kind)
}

// refuse closes the client's connection and returns the error that makes
// mochi skip the PUBACK.
func (h *forwardHook) refuse(cl *mqtt.Client, pk packets.Packet, code packets.Code, reason error) error {
	h.log.Warn("closing connection: message not accepted", "client", cl.ID, "remote", cl.Net.Remote,
		"topic", pk.TopicName, "qos", pk.FixedHeader.Qos, "reason", reason)
	_ = h.disc.DisconnectClient(cl, code)
	return fmt.Errorf("%w: %w", packets.ErrRejectPacket, reason)
}

// OnPacketProcessed runs after mochi has written the PUBACK (or decided not to).
func (h *forwardHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type != packets.Publish {
		return
	}
	if _, ok := h.pending.LoadAndDelete(cl); ok {
		h.drain.leave()
	}
}

// drainGate counts publishes in flight and, once closed, admits no more.
type drainGate struct {
	mu      sync.Mutex
	closing bool
	wg      sync.WaitGroup
}

func (g *drainGate) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closing {
		return false
	}
	g.wg.Add(1)
	return true
}

func (g *drainGate) leave() { g.wg.Done() }

// closeAndWait refuses new publishes and waits until those in flight have
// been acknowledged or refused.
func (g *drainGate) closeAndWait() {
	g.mu.Lock()
	g.closing = true
	g.mu.Unlock()
	g.wg.Wait()
}
