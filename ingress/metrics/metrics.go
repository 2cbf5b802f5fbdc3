// Package metrics holds the device bridge's Prometheus metrics: one typed set of
// collectors that the MQTT and HTTP front ends feed and that /metrics serves.
//
// The collectors live on their own prometheus.Registry, not the global
// default one, so that two bridges in one process (tests, the sandbox) do not
// collide and nothing imported by accident shows up on /metrics. Every method
// is safe for concurrent use and does nothing on a nil *Metrics, so a front end
// built without metrics needs no branches.
package metrics

import (
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Transport is the front end a device used: a label value.
type Transport string

// Transports.
const (
	MQTT Transport = "mqtt"
	HTTP Transport = "http"
)

// Kind is a device message's kind, as in its IoT Core topic: a label value.
type Kind string

// Kinds. Events and State flow from devices (messages in); Config and
// Commands flow to them (messages out).
const (
	Events   Kind = "events"
	State    Kind = "state"
	Config   Kind = "config"
	Commands Kind = "commands"
)

// Reasons a front end refuses a device's message or subscription (the
// reason label of iotpipe_ingress_rejects_total). They are stable label
// values; a front end may add its own, but each new value is a new series,
// so a reason must never carry device input.
const (
	// RejectACL: a topic the device may not use (another device's, or the
	// wrong direction).
	RejectACL = "acl"
	// RejectQoS2: a QoS 2 publish, which IoT Core refused.
	RejectQoS2 = "qos2"
	// RejectInvalidTopic: a topic name that is not an IoT Core topic.
	RejectInvalidTopic = "invalid_topic"
	// RejectOversized: a payload over IoT Core's limit (256 KB telemetry,
	// 64 KB state), or a packet over the bridge's maximum packet size.
	RejectOversized = "oversized"
	// RejectRateLimited: a device over a rate limit by more than the bridge
	// would wait out (see mqttbridge.Limits).
	RejectRateLimited = "rate_limited"
	// RejectBackpressure: Pub/Sub lagged for longer than a publish may wait
	// for its tenant's turn.
	RejectBackpressure = "backpressure"
	// RejectNoRoute: telemetry the registry routes to no Pub/Sub topic.
	RejectNoRoute = "no_route"
	// RejectPubSubFailed: Pub/Sub did not confirm the message.
	RejectPubSubFailed = "pubsub_failed"
	// RejectShuttingDown: the bridge was draining.
	RejectShuttingDown = "shutting_down"
	// RejectOther: a refusal with no more specific reason.
	RejectOther = "other"
)

// Limits a front end throttles by (the limit label of
// iotpipe_ingress_throttled_total).
const (
	// LimitConnectionMessages: messages per second per connection (IoT Core: 100).
	LimitConnectionMessages = "connection_messages"
	// LimitDeviceBytes: payload bytes per second per device (IoT Core: 512 KB).
	LimitDeviceBytes = "device_bytes"
	// LimitDeviceState: state updates per second per device (IoT Core: 1).
	LimitDeviceState = "device_state"
	// LimitTenantPubSub: the device's tenant has too many publishes waiting
	// for Pub/Sub.
	LimitTenantPubSub = "tenant_pubsub"
)

// publishBuckets span a Pub/Sub confirmation from a local emulator (well
// under a millisecond) to the bridge's 10 s publish timeout.
var publishBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16) // 0.5 ms … 16 s

// Metrics is the bridge's set of collectors. Make it with New.
type Metrics struct {
	registry *prometheus.Registry

	connections    *prometheus.GaugeVec
	messagesIn     *prometheus.CounterVec
	messagesOut    *prometheus.CounterVec
	publishLatency *prometheus.HistogramVec
	authFailures   *prometheus.CounterVec
	rejects        *prometheus.CounterVec
	throttled      *prometheus.CounterVec
	throttleWait   *prometheus.CounterVec
}

// New returns a Metrics registered on a registry of its own, together with
// the Go runtime and process collectors (memory and file descriptors are
// what a bridge with many idle connections runs out of first).
func New() *Metrics {
	const ns, sub = "iotpipe", "ingress"
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "connections",
			Help: "Open device connections: authenticated MQTT sessions, or open HTTP connections.",
		}, []string{"transport"}),
		messagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "messages_in_total",
			Help: "Device messages accepted: confirmed by Pub/Sub (or acknowledged with no state topic configured).",
		}, []string{"transport", "kind"}),
		messagesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "messages_out_total",
			Help: "Config and command messages written to devices, not counting MQTT redeliveries.",
		}, []string{"transport", "kind"}),
		publishLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "publish_latency_seconds",
			Help:    "Time from accepting a device message to Pub/Sub's confirmation of it, for messages Pub/Sub confirmed.",
			Buckets: publishBuckets,
		}, []string{"transport"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "auth_failures_total",
			Help: "Devices refused at connect (MQTT) or per request (HTTP), by reason.",
		}, []string{"transport", "reason"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "rejects_total",
			Help: "Device messages or subscriptions refused (over MQTT the connection is closed), by reason.",
		}, []string{"transport", "reason"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "throttled_total",
			Help: "Device messages delayed (not refused) to keep within a limit, by limit.",
		}, []string{"transport", "limit"}),
		throttleWait: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "throttle_wait_seconds_total",
			Help: "Time device messages spent delayed to keep within a limit, by limit.",
		}, []string{"transport", "limit"}),
	}
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.connections, m.messagesIn, m.messagesOut, m.publishLatency,
		m.authFailures, m.rejects, m.throttled, m.throttleWait,
	)
	// Series that exist from the start, so that rate() and alerts see a
	// zero before the first event instead of no data.
	for _, t := range []Transport{MQTT, HTTP} {
		m.connections.WithLabelValues(string(t))
		m.publishLatency.WithLabelValues(string(t))
		for _, k := range []Kind{Events, State} {
			m.messagesIn.WithLabelValues(string(t), string(k))
		}
		for _, k := range []Kind{Config, Commands} {
			m.messagesOut.WithLabelValues(string(t), string(k))
		}
		for _, r := range []string{RejectACL, RejectOversized, RejectRateLimited, RejectBackpressure, RejectPubSubFailed} {
			m.rejects.WithLabelValues(string(t), r)
		}
	}
	return m
}

// Registry returns the registry the collectors are on, for a caller that
// wants to add its own collectors to the same /metrics.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Handler serves the metrics in Prometheus' exposition formats, for /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}

// Connected counts one more open connection on t.
func (m *Metrics) Connected(t Transport) {
	if m != nil {
		m.connections.WithLabelValues(string(t)).Inc()
	}
}

// Disconnected counts one fewer open connection on t; each call pairs with
// one earlier Connected.
func (m *Metrics) Disconnected(t Transport) {
	if m != nil {
		m.connections.WithLabelValues(string(t)).Dec()
	}
}

// HTTPConnState keeps the HTTP connections gauge; set it as an
// http.Server's ConnState.
func (m *Metrics) HTTPConnState(_ net.Conn, s http.ConnState) {
	switch s {
	case http.StateNew:
		m.Connected(HTTP)
	case http.StateClosed, http.StateHijacked:
		m.Disconnected(HTTP)
	}
}

// MessageIn counts a device message (Events or State) that was accepted.
func (m *Metrics) MessageIn(t Transport, k Kind) {
	if m != nil {
		m.messagesIn.WithLabelValues(string(t), string(k)).Inc()
	}
}

// MessageOut counts a message (Config or Commands) written to a device.
func (m *Metrics) MessageOut(t Transport, k Kind) {
	if m != nil {
		m.messagesOut.WithLabelValues(string(t), string(k)).Inc()
	}
}

// ObservePublish records how long Pub/Sub took to confirm a device message.
func (m *Metrics) ObservePublish(t Transport, d time.Duration) {
	if m != nil {
		m.publishLatency.WithLabelValues(string(t)).Observe(d.Seconds())
	}
}

// AuthFailure counts a device refused for reason: one of jwtauth's reasons,
// or the front end's own (a malformed client id, say).
func (m *Metrics) AuthFailure(t Transport, reason string) {
	if m != nil {
		m.authFailures.WithLabelValues(string(t), reason).Inc()
	}
}

// Reject counts a message or subscription refused for reason (Reject*).
func (m *Metrics) Reject(t Transport, reason string) {
	if m != nil {
		m.rejects.WithLabelValues(string(t), reason).Inc()
	}
}

// Throttled counts a message delayed by d to keep within limit (Limit*).
func (m *Metrics) Throttled(t Transport, limit string, d time.Duration) {
	if m != nil {
		m.throttled.WithLabelValues(string(t), limit).Inc()
		m.throttleWait.WithLabelValues(string(t), limit).Add(d.Seconds())
	}
}
