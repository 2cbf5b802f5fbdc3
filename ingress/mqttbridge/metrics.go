package mqttbridge

import (
	"errors"
	"log/slog"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/metrics"
)

// RefusalReasoner is an Authenticator that can name why it refused a
// device, for the auth_failures metric (jwtauth's reasons: expired,
// wrong_audience, ...). RefusalReason gets the error Authenticate returned
// and returns a stable label value, or "" when it has none. Without it,
// refusals by the Authenticator count as "refused".
type RefusalReasoner interface {
	RefusalReason(err error) string
}

// auth_failures reasons of identityHook's own.
const (
	authBadClientID    = "bad_client_id"  // not projects/.../devices/{id}
	authOtherRegistry  = "other_registry" // a registry this bridge does not serve
	authRefusedUnnamed = "refused"        // the Authenticator gave no reason
)

// rejectPubSubFailed spares forwardHook an import for its one countReject call.
const rejectPubSubFailed = metrics.RejectPubSubFailed

// refusalReason is the auth_failures reason for refusing clientID with err.
// It re-reads the client id rather than tagging admit's errors, so that
// admit stays about admission.
func (h *identityHook) refusalReason(clientID string, err error) string {
	dp, perr := iotcore.ParseClientID(clientID)
	switch {
	case perr != nil:
		return authBadClientID
	case dp.Project != h.registry.Project || dp.Location != h.registry.Location || dp.Registry != h.registry.Registry:
		return authOtherRegistry
	}
	if r, ok := h.auth.(RefusalReasoner); ok {
		if reason := r.RefusalReason(err); reason != "" {
			return reason
		}
	}
	return authRefusedUnnamed
}

// meteredDisconnector counts each connection a hook closes as a refusal, by
// the MQTT reason code the hook closes it with (rejectReason), so that every
// refusal path of every hook is counted in one place, including those added
// later, and the count always agrees with what the device was told.
type meteredDisconnector struct {
	next    disconnector
	metrics *metrics.Metrics
}

func (d meteredDisconnector) DisconnectClient(cl *mqtt.Client, code packets.Code) error {
	if reason := rejectReason(code); reason != "" {
		d.metrics.Reject(metrics.MQTT, reason)
	}
	return d.next.DisconnectClient(cl, code)
}

func (d meteredDisconnector) countReject(reason string) { d.metrics.Reject(metrics.MQTT, reason) }

// countReject counts a refusal that does not close the connection (a QoS 0
// message dropped), through a hook's disconnector so that hooks need no
// metrics field of their own. Disconnectors without metrics (tests) ignore it.
func countReject(d disconnector, reason string) {
	if c, ok := d.(interface{ countReject(string) }); ok {
		c.countReject(reason)
	}
}

// rejectReason maps the reason code a hook closes a connection with to the
// rejects_total reason, or "" when closing is not a refusal of something the
// device sent (credentials expired, session taken over by a new connection).
func rejectReason(code packets.Code) string {
	switch code.Code {
	case packets.ErrNotAuthorized.Code: // aclHook; forwardHook for a topic it cannot route
		return metrics.RejectACL
	case packets.ErrQosNotSupported.Code: // dialectHook
		return metrics.RejectQoS2
	case packets.ErrTopicNameInvalid.Code, packets.ErrTopicFilterInvalid.Code:
		return metrics.RejectInvalidTopic
	case packets.ErrPacketTooLarge.Code:
		return metrics.RejectOversized
	case packets.ErrMessageRateTooHigh.Code: // rateLimitHook
		return metrics.RejectRateLimited
	case packets.ErrServerBusy.Code: // rateLimitHook's tenant gate
		return metrics.RejectBackpressure
	case packets.ErrServerShuttingDown.Code:
		return metrics.RejectShuttingDown
	case packets.ErrImplementationSpecificError.Code: // forwardHook's errNoRoute
		return metrics.RejectNoRoute
	case packets.ErrUnspecifiedError.Code: // forwardHook's errForwardFailed
		return metrics.RejectPubSubFailed
	case packets.ErrMaxConnectTime.Code, packets.ErrSessionTakenOver.Code:
		return ""
	}
	return metrics.RejectOther
}

// metricsHook feeds the bridge's share of metrics.Metrics from what mochi
// reports of each connection: sessions opened and closed, messages that
// reached Pub/Sub (OnPublished runs only after every OnPublish hook let the
// message through and the PUBACK was written) and how long that took,
// config and commands written to devices, and packets mochi itself refused
// for size, which no other hook sees.
//
// It must come after rateLimitHook and before forwardHook among OnPublish
// hooks, so that the latency it measures is Pub/Sub's, not time spent
// throttled.
//
// The start of the publish in progress is kept in session.publishStart; a
// client's packets are processed one at a time.
type metricsHook struct {
	mqtt.HookBase
	devices *deviceTable
	metrics *metrics.Metrics
	log     *slog.Logger
}

func (h *metricsHook) ID() string { return "metrics" }

func (h *metricsHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnPublish, mqtt.OnPublished,
		mqtt.OnPacketProcessed, mqtt.OnPacketSent:
		return true
	}
	return false
}

// OnSessionEstablished and OnDisconnect pair up: mochi calls OnDisconnect
// for exactly the clients whose session was established.
func (h *metricsHook) OnSessionEstablished(*mqtt.Client, packets.Packet) {
	h.metrics.Connected(metrics.MQTT)
}

func (h *metricsHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	h.metrics.Disconnected(metrics.MQTT)
	// mochi refuses a packet over the maximum packet size while reading its
	// header, before any hook sees it, and ends the connection with this error.
	if errors.Is(err, packets.ErrPacketTooLarge) {
		h.metrics.Reject(metrics.MQTT, metrics.RejectOversized)
		h.log.Warn("connection closed: packet over the maximum packet size", "client", cl.ID, "remote", cl.Net.Remote,
			"max_bytes", maxPacketSize)
	}
}

func (h *metricsHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if s, ok := h.devices.get(cl); ok {
		s.publishStart = time.Now()
	}
	return pk, nil
}

func (h *metricsHook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return // the server's own publishes are not device messages
	}
	s, ok := h.devices.get(cl)
	if !ok {
		return // not a device's: aclHook refuses every publish of a client without a session
	}
	if !s.publishStart.IsZero() {
		h.metrics.ObservePublish(metrics.MQTT, time.Since(s.publishStart))
	}
	if t, err := s.topic(pk.TopicName); err == nil {
		if k := kindOf(t); k == metrics.Events || k == metrics.State {
			h.metrics.MessageIn(metrics.MQTT, k)
		}
	}
}

func (h *metricsHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type != packets.Publish {
		return
	}
	if s, ok := h.devices.get(cl); ok {
		s.publishStart = time.Time{}
	}
}

// OnPacketSent counts config and commands as they are written; a QoS 1
// redelivery (DUP set) is the same message again.
func (h *metricsHook) OnPacketSent(_ *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Dup {
		return
	}
	if k := topicKind(pk.TopicName); k == metrics.Config || k == metrics.Commands {
		h.metrics.MessageOut(metrics.MQTT, k)
	}
}

// topicKind is the metrics kind of an IoT Core topic, or "" for any other.
func topicKind(topic string) metrics.Kind {
	t, err := iotcore.ParseTopic(topic)
	if err != nil {
		return ""
	}
	return kindOf(t)
}

// kindOf is the metrics kind of a parsed topic.
func kindOf(t iotcore.Topic) metrics.Kind { return metrics.Kind(t.Kind.String()) }
