// Package mqttbridge is the MQTT front end of the device bridge: Cloud IoT Core's MQTT
// protocol on a mochi-mqtt broker whose hooks admit devices and forward their messages to Pub/Sub.
//
// Each feature is one mochi hook: dialectHook (what IoT Core's MQTT refuses),
// identityHook (client id and credentials), expiryHook (closes a connection
// when its credentials expire), aclHook (which topics a device may use) and
// forwardHook (Pub/Sub, with PUBACK after Pub/Sub confirmed).
// Device auth, registry, config, commands and rate limits are meant to arrive
// the same way; see each hook's comment for the ordering rules mochi imposes.
package mqttbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/ingress/internal/loopback"
	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/metrics"
	"github.com/iotpipe/iotpipe/ingress/publisher"
)

// DefaultMQTTAddr is where the bridge listens when Config.MQTTAddr is empty.
const DefaultMQTTAddr = "127.0.0.1:1883"

// DefaultExpiryGrace is Config.ExpiryGrace when zero: IoT Core's allowance
// for clock skew between devices and the cloud.
const DefaultExpiryGrace = 10 * time.Minute

// maxPacketSize bounds what mochi reads into memory for one packet: IoT
// Core's 256 KB telemetry limit plus room for the topic and properties.
// Without it a client can make mochi allocate up to 256 MB per packet.
const maxPacketSize = 256<<10 + 4<<10

// Config is the bridge's configuration, filled from flags in main.
type Config struct {
	// Project, Location and Registry name the one registry whose devices
	// may connect (client ids projects/{Project}/locations/{Location}/registries/{Registry}/devices/...).
	Project, Location, Registry string
	// EventsTopic receives telemetry; StateTopic receives state, and when
	// empty state messages are acknowledged and not forwarded (an IoT Core
	// registry without a state notification topic). Each is a topic id in
	// Project or a full projects/{p}/topics/{t} name. NewWithRouter does not
	// use them: its router decides.
	EventsTopic, StateTopic string
	// MQTTAddr is the TCP address to listen on; DefaultMQTTAddr if empty.
	// Port 0 picks a free port (see Bridge.Addr).
	MQTTAddr string
	// ExpiryGrace is how long after its credentials expire (Device.Expiry)
	// a device stays connected; DefaultExpiryGrace when zero.
	ExpiryGrace time.Duration
	// TLSAddr, when set, is a second listener (IoT Core's 8883) that speaks
	// MQTT over TLS 1.2 or later with the certificate chain in TLSCertFile
	// and its key in TLSKeyFile (PEM; ingress/tlscert makes a sandbox set).
	// The plain MQTTAddr listener runs as well; keep it on loopback when
	// devices authenticate, or their JWTs cross the network in clear.
	TLSAddr, TLSCertFile, TLSKeyFile string
	// Limits are the rate limits and per-tenant backpressure; the zero
	// value is IoT Core's (see Limits).
	Limits Limits
	// Metrics receives the bridge's metrics; nil records none.
	Metrics *metrics.Metrics
}

// Bridge is a running (or ready) MQTT front end.
type Bridge struct {
	cfg      Config
	log      *slog.Logger
	server   *mqtt.Server
	listener *tcpListener
	tls      *tlsListener // nil without Config.TLSAddr
	limits   *rateLimitHook
	forward  *forwardHook
	disc     disconnector
	open     bool // the Authenticator admits anyone: loopback only

	mu      sync.Mutex
	started bool
	closed  bool
}

// New checks cfg and builds a bridge that publishes through pub and admits
// every device of the registry (AllowAll), so it listens on loopback only.
// It does not listen yet; see Start. A nil logger means slog.Default().
// opts turn on optional features (WithDeviceBus).
func New(cfg Config, pub *publisher.Publisher, logger *slog.Logger, opts ...Option) (*Bridge, error) {
	return NewWithAuth(cfg, pub, AllowAll{}, logger, opts...)
}

// NewWithAuth is New with auth deciding which devices may connect. Unless
// auth is AllowAll, the bridge may listen on any address.
func NewWithAuth(cfg Config, pub *publisher.Publisher, auth Authenticator, logger *slog.Logger, opts ...Option) (*Bridge, error) {
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = DefaultMQTTAddr
	}
	if auth == nil {
		return nil, errors.New("mqttbridge: nil Authenticator")
	}
	if err := cfg.ValidateFor(auth); err != nil {
		return nil, err
	}
	if pub == nil {
		return nil, errors.New("mqttbridge: nil publisher")
	}
	router, err := publisher.NewRouter(pub, publisher.Routes{EventsTopic: cfg.EventsTopic, StateTopic: cfg.StateTopic})
	if err != nil {
		return nil, fmt.Errorf("mqttbridge: %w", err)
	}
	return newBridge(cfg, router, auth, logger, opts...)
}

// NewWithRouter is NewWithAuth with router choosing each message's Pub/Sub
// topic (by the registry's notification configs, say) instead of
// cfg.EventsTopic and cfg.StateTopic, so that the MQTT and HTTP bridges
// route alike.
func NewWithRouter(cfg Config, router *publisher.Router, auth Authenticator, logger *slog.Logger, opts ...Option) (*Bridge, error) {
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = DefaultMQTTAddr
	}
	if auth == nil {
		return nil, errors.New("mqttbridge: nil Authenticator")
	}
	if router == nil {
		return nil, errors.New("mqttbridge: nil router")
	}
	if err := cfg.validateFor(auth, false); err != nil {
		return nil, err
	}
	return newBridge(cfg, router, auth, logger, opts...)
}

// Validate reports the first problem with cfg for a bridge built by New, so
// that main can refuse bad flags before it connects to Pub/Sub.
func (cfg Config) Validate() error { return cfg.ValidateFor(AllowAll{}) }

// ValidateFor reports the first problem with cfg for a bridge that admits
// devices with auth: only with AllowAll must the address be loopback.
// NewWithAuth calls it.
func (cfg Config) ValidateFor(auth Authenticator) error { return cfg.validateFor(auth, true) }

// validateFor is ValidateFor; withTopics is false for NewWithRouter, whose
// router owns the topics.
func (cfg Config) validateFor(auth Authenticator, withTopics bool) error {
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = DefaultMQTTAddr
	}
	for _, f := range []struct{ name, value string }{
		{"Project", cfg.Project}, {"Location", cfg.Location}, {"Registry", cfg.Registry}, {"EventsTopic", cfg.EventsTopic},
	} {
		if f.value == "" && (withTopics || f.name != "EventsTopic") {
			return fmt.Errorf("mqttbridge: config: empty %s", f.name)
		}
	}
	// The registry must be one a client id can name.
	probe := iotcore.DevicePath{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry, Device: "probe"}
	if _, err := iotcore.ParseClientID(probe.String()); err != nil {
		return fmt.Errorf("mqttbridge: config: registry projects/%s/locations/%s/registries/%s: %w",
			cfg.Project, cfg.Location, cfg.Registry, err)
	}
	if cfg.ExpiryGrace < 0 {
		return fmt.Errorf("mqttbridge: config: negative ExpiryGrace %v", cfg.ExpiryGrace)
	}
	// Without device authentication anyone who reaches the port can publish
	// as any device, so the port must not be reachable from elsewhere.
	if unauthenticated(auth) {
		if err := requireLoopback(cfg.MQTTAddr); err != nil {
			return fmt.Errorf("mqttbridge: config: MQTTAddr: %w", err)
		}
	}
	return cfg.validateExtensions(auth)
}

// requireLoopback accepts host:port addresses whose host is localhost or a
// loopback IP. An empty host means every interface and is refused.
func requireLoopback(addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if loopback.Addr(addr) {
		return nil
	}
	return fmt.Errorf("address %q is not loopback: devices are not authenticated (AllowAll), so the bridge listens only on 127.0.0.1, ::1 or localhost", addr)
}

// debugEnabled reports whether log writes debug records. Hooks check it
// before logging per message, so that the arguments of a record nobody
// wants are not boxed into interfaces.
func debugEnabled(log *slog.Logger) bool { return log.Enabled(context.Background(), slog.LevelDebug) }

// maxWritesPending bounds a connection's queue of messages to write.
const maxWritesPending = 128

func newBridge(cfg Config, router messageRouter, auth Authenticator, logger *slog.Logger, opts ...Option) (*Bridge, error) {
	if logger == nil {
		logger = slog.Default()
	}
	if cfg.ExpiryGrace == 0 {
		cfg.ExpiryGrace = DefaultExpiryGrace
	}
	mochiLogger := logger.With("component", "mochi")
	logger = logger.With("component", "mqttbridge")

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1 // MQTT 5 clients learn it from CONNACK; dialectHook closes on QoS 2
	caps.MaximumPacketSize = maxPacketSize
	// mochi checks ACLs on the topic name before resolving topic aliases
	// (server.go:867 vs 905), so an aliased publish would reach the ACL with
	// an empty topic. Aliases are off; mochi does not advertise them anyway.
	caps.TopicAliasMaximum = 0
	// Otherwise mochi copies the PUBLISH's properties into the PUBACK, and
	// with them its success code 0x01, which is not a PUBACK reason code.
	caps.Compatibilities.NoInheritedPropertiesOnAck = true
	// Each connection gets a queue of this many messages to write; mochi's
	// default, 8192, is 64 KiB of channel per connection, most of an idle
	// connection's memory. A device is sent only its newest config and its
	// commands; past this many unwritten, mochi drops the message (a
	// command's sender gets no error, as with IoT Core's QoS 0 commands).
	caps.MaximumClientWritesPending = maxWritesPending

	server := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       mochiLogger,
		// No device may subscribe to $SYS (aclHook), so refreshing it every
		// second would only cost a stop-the-world ReadMemStats each time.
		SysTopicResendInterval: 3600,
	})

	tlsLn, err := tlsListenerFor(cfg)
	if err != nil {
		return nil, err
	}
	devices := &deviceTable{}
	// Hooks close connections through disc, which counts each refusal by
	// its reason code (metrics.go); Close's disconnects are not refusals.
	disc := meteredDisconnector{next: serverDisconnector{server}, metrics: cfg.Metrics}
	registry := iotcore.DevicePath{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry}
	forward := &forwardHook{
		router: router, timeout: forwardTimeout,
		devices: devices, disc: disc, log: logger.With("hook", "pubsub-forward"),
	}
	limits := newRateLimitHook(cfg.Limits, devices, disc, cfg.Metrics, logger.With("hook", "rate-limit"))
	// rateLimitHook, metricsHook and forwardHook must come in this order,
	// last among OnPublish hooks (see their comments).
	hooks := []mqtt.Hook{
		&dialectHook{disc: disc, log: logger.With("hook", "iotcore-dialect")},
		&expiryHook{grace: cfg.ExpiryGrace, devices: devices, disc: disc, log: logger.With("hook", "credential-expiry")},
		&aclHook{devices: devices, disc: disc, log: logger.With("hook", "iotcore-acl")},
		limits,
		&metricsHook{devices: devices, metrics: cfg.Metrics, log: logger.With("hook", "metrics")},
		forward,
	}
	optional, err := optionHooks(opts, server, registry, devices, disc, logger)
	if err != nil {
		return nil, err
	}
	hooks = append(hooks, optional...)
	// identityHook starts a connection's session in OnConnectAuthenticate,
	// before mochi calls any hook that reads sessions, wherever it is in the
	// list; it ends it in OnDisconnect, which must run after every other
	// hook's OnDisconnect. mochi calls hooks in the order they were added,
	// so it is added last.
	hooks = append(hooks, &identityHook{registry: registry, auth: auth, devices: devices, metrics: cfg.Metrics,
		log: logger.With("hook", "iotcore-identity")})
	for _, h := range hooks {
		if err := server.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("mqttbridge: add hook %s: %w", h.ID(), err)
		}
	}
	return &Bridge{
		cfg: cfg, log: logger, server: server, forward: forward, disc: serverDisconnector{server}, open: unauthenticated(auth),
		listener: newTCPListener("mqtt", cfg.MQTTAddr), tls: tlsLn, limits: limits,
	}, nil
}

// Start binds Config.MQTTAddr and starts serving in the background. When it
// returns without error, the bridge accepts connections.
func (b *Bridge) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.closed {
		return errors.New("mqttbridge: Start called twice or after Close")
	}
	if err := b.server.AddListener(b.listener); err != nil {
		return fmt.Errorf("mqttbridge: %w", err)
	}
	b.started = true // from here on Close must close the listener
	if b.tls != nil {
		if err := b.server.AddListener(b.tls); err != nil {
			b.closeLocked()
			return fmt.Errorf("mqttbridge: TLS: %w", err)
		}
	}
	// The name may have resolved to something else; check what was bound.
	if b.open {
		for _, l := range b.listeners() {
			if err := requireLoopback(l.Address()); err != nil {
				b.closeLocked()
				return fmt.Errorf("mqttbridge: bound %s: %w", l.address, err)
			}
		}
	}
	if err := b.server.Serve(); err != nil {
		b.closeLocked()
		return fmt.Errorf("mqttbridge: serve: %w", err)
	}
	registry := fmt.Sprintf("projects/%s/locations/%s/registries/%s", b.cfg.Project, b.cfg.Location, b.cfg.Registry)
	switch {
	case b.open:
		b.log.Warn("devices are NOT authenticated (AllowAll): any client id of the registry is accepted; listening on loopback only",
			"addr", b.listener.Address(), "tls_addr", b.TLSAddr(), "registry", registry)
	case requireLoopback(b.listener.Address()) != nil:
		// A token read off the wire is good until it expires. The TLS
		// listener, wherever it is, does not have this problem.
		b.log.Warn("devices are authenticated, but over plain TCP on a non-loopback address: their JWTs travel unencrypted; serve them on the TLS listener (TLSAddr) and keep MQTTAddr on loopback",
			"addr", b.listener.Address(), "tls_addr", b.TLSAddr(), "registry", registry)
	default:
		b.log.Info("devices are authenticated", "addr", b.listener.Address(), "tls_addr", b.TLSAddr(), "registry", registry)
	}
	return nil
}

// Addr returns the address the bridge listens on: after Start the bound
// address (with the real port when Config.MQTTAddr had port 0).
func (b *Bridge) Addr() string {
	return b.listener.Address()
}

// Close stops accepting connections, waits for the publishes in flight to be
// confirmed by Pub/Sub and acknowledged to their devices, then disconnects
// every client. Messages arriving meanwhile are refused unacknowledged, so
// their devices resend them elsewhere or later. Close does not close the
// publisher, which the caller owns.
func (b *Bridge) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closeLocked()
	return nil
}

func (b *Bridge) closeLocked() {
	if b.closed {
		return
	}
	b.closed = true
	if b.started {
		for _, l := range b.listeners() {
			l.stopAccepting()
		}
		b.log.Info("closing MQTT bridge: no new connections; waiting for in-flight publishes", "addr", b.listener.Address())
		b.limits.abortWaits() // publishes held back by limits are refused, not waited for
		b.forward.drain.closeAndWait()
		// mochi's own shutdown would send MQTT 3.1.1 clients a DISCONNECT too.
		for _, l := range b.listeners() {
			for _, cl := range b.server.Clients.GetByListener(l.ID()) {
				_ = b.disc.DisconnectClient(cl, packets.ErrServerShuttingDown)
			}
		}
	}
	// mqtt.Server.Close disconnects clients through the listener, waits for
	// their goroutines and stops the hooks.
	_ = b.server.Close()
	b.log.Info("MQTT bridge closed", "addr", b.listener.Address())
}
