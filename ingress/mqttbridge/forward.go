package mqttbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/ingress/publisher"
)

// forwardTimeout bounds the wait for Pub/Sub's confirmation of one message.
// It holds the connection's read loop (and so the device's keepalive), and
// past it the device is better off resending on a new connection.
const forwardTimeout = 10 * time.Second

// messageRouter is the part of *publisher.Router the bridge uses.
type messageRouter interface {
	Publish(ctx context.Context, m publisher.Message) (publisher.Sent, error)
}

// DISCONNECT reasons when a message is not forwarded.
var (
	// errForwardFailed: Pub/Sub (or the registry holding the routes) did
	// not take the message; resending may work.
	errForwardFailed = packets.Code{Code: packets.ErrUnspecifiedError.Code, Reason: "message not stored in Pub/Sub; resend it"}
	// errNoRoute: the registry routes this telemetry nowhere, which IoT
	// Core answered by closing the connection.
	errNoRoute = packets.Code{Code: packets.ErrImplementationSpecificError.Code, Reason: "no Pub/Sub topic for this telemetry in the registry's eventNotificationConfigs"}
)

// forwardHook publishes each accepted device message to Pub/Sub through the
// router (which picks the topic and attributes and enforces IoT Core's size
// limits) and lets mochi acknowledge it only after Pub/Sub confirmed it.
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
// A message the router refuses for good (too large, no topic for its
// subfolder) closes the connection whatever its QoS, as IoT Core did.
//
// Because the read loop waits, one connection has one message in flight at a
// time: its throughput is bounded by Pub/Sub's round trip.
//
// It must be the last hook providing OnPublish: mochi stops calling OnPublish
// hooks at the first that returns CodeSuccessIgnore or an error (hooks.go:396).
type forwardHook struct {
	mqtt.HookBase
	router  messageRouter
	timeout time.Duration
	devices *deviceTable
	disc    disconnector
	log     *slog.Logger

	// drain counts the publishes between OnPublish and OnPacketProcessed,
	// i.e. whose PUBACK is not written yet; session.forwarding marks the
	// client's. A client's packets are processed one at a time, so one flag
	// per client suffices.
	drain drainGate
}

// successIgnore is packets.CodeSuccessIgnore as an error, boxed once rather
// than for every message.
var successIgnore error = packets.CodeSuccessIgnore

func (h *forwardHook) ID() string { return "pubsub-forward" }

func (h *forwardHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublish, mqtt.OnPacketProcessed:
		return true
	}
	return false
}

func (h *forwardHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !h.drain.enter() {
		return pk, h.refuse(cl, pk, packets.ErrServerShuttingDown, errors.New("bridge is shutting down"))
	}
	s, ok := h.devices.get(cl)
	if !ok {
		h.drain.leave() // no session to hold the entry until OnPacketProcessed; nothing will be acknowledged
		return pk, h.refuse(cl, pk, packets.ErrNotAuthorized, errors.New("client has no authenticated device"))
	}
	s.forwarding = true

	m, err := h.message(s, pk)
	if err != nil {
		return pk, h.refuse(cl, pk, packets.ErrNotAuthorized, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), h.timeout)
	defer cancel()
	sent, err := h.router.Publish(ctx, m)
	switch {
	case errors.Is(err, publisher.ErrTooLarge):
		return pk, h.refuse(cl, pk, packets.ErrPacketTooLarge, err)
	case errors.Is(err, publisher.ErrNoRoute):
		return pk, h.refuse(cl, pk, errNoRoute, err)
	case errors.Is(err, publisher.ErrInvalidMessage):
		return pk, h.refuse(cl, pk, packets.ErrTopicNameInvalid, err)
	case err != nil:
		err = fmt.Errorf("forward %d bytes from %s: %w", len(pk.Payload), pk.TopicName, err)
		if pk.FixedHeader.Qos == 0 {
			// Nothing to withhold and nothing will be resent: drop it, keep the connection.
			h.log.Error("dropping QoS 0 message", "client", cl.ID, "error", err)
			countReject(h.disc, rejectPubSubFailed)
			return pk, fmt.Errorf("%w: %w", packets.ErrRejectPacket, err)
		}
		return pk, h.refuse(cl, pk, errForwardFailed, err)
	}
	if debugEnabled(h.log) {
		if sent.Topic == "" {
			h.log.Debug("state not forwarded: no state topic configured", "client", cl.ID)
		} else {
			h.log.Debug("forwarded", "client", cl.ID, "topic", pk.TopicName, "pubsub_topic", sent.Topic, "message_id", sent.MessageID)
		}
	}
	return pk, successIgnore
}

// message is the router's view of a publish the ACL allowed.
func (h *forwardHook) message(s *session, pk packets.Packet) (publisher.Message, error) {
	t, err := s.topic(pk.TopicName)
	if err != nil {
		return publisher.Message{}, err
	}
	return publisher.Message{Device: s.dev.Path, NumID: s.dev.NumID, Kind: t.Kind, SubFolder: t.SubFolder, Data: pk.Payload}, nil
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
	if s, ok := h.devices.get(cl); ok && s.forwarding {
		s.forwarding = false
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
