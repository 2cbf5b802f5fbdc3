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
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
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
	// Project or a full projects/{p}/topics/{t} name.
	EventsTopic, StateTopic string
	// MQTTAddr is the TCP address to listen on; DefaultMQTTAddr if empty.
	// Port 0 picks a free port (see Bridge.Addr).
	MQTTAddr string
	// ExpiryGrace is how long after its credentials expire (Device.Expiry)
	// a device stays connected; DefaultExpiryGrace when zero.
	ExpiryGrace time.Duration
}

// Bridge is a running (or ready) MQTT front end.
type Bridge struct {
	cfg      Config
	log      *slog.Logger
	server   *mqtt.Server
	listener *tcpListener
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
func New(cfg Config, pub *publisher.Publisher, logger *slog.Logger) (*Bridge, error) {
	return NewWithAuth(cfg, pub, AllowAll{}, logger)
}

// NewWithAuth is New with auth deciding which devices may connect. Unless
// auth is AllowAll, the bridge may listen on any address.
func NewWithAuth(cfg Config, pub *publisher.Publisher, auth Authenticator, logger *slog.Logger) (*Bridge, error) {
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
	return newBridge(cfg, pub, auth, logger)
}

// Validate reports the first problem with cfg for a bridge built by New, so
// that main can refuse bad flags before it connects to Pub/Sub.
func (cfg Config) Validate() error { return cfg.ValidateFor(AllowAll{}) }

// ValidateFor reports the first problem with cfg for a bridge that admits
// devices with auth: only with AllowAll must the address be loopback.
// NewWithAuth calls it.
func (cfg Config) ValidateFor(auth Authenticator) error {
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = DefaultMQTTAddr
	}
	for _, f := range []struct{ name, value string }{
		{"Project", cfg.Project}, {"Location", cfg.Location}, {"Registry", cfg.Registry}, {"EventsTopic", cfg.EventsTopic},
	} {
		if f.value == "" {
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
	return nil
}

// requireLoopback accepts host:port addresses whose host is localhost or a
// loopback IP. An empty host means every interface and is refused.
func requireLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("address %q is not loopback: devices are not authenticated (AllowAll), so the bridge listens only on 127.0.0.1, ::1 or localhost", addr)
}

func newBridge(cfg Config, pub eventPublisher, auth Authenticator, logger *slog.Logger) (*Bridge, error) {
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

	server := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		Logger:       mochiLogger,
		// No device may subscribe to $SYS (aclHook), so refreshing it every
		// second would only cost a stop-the-world ReadMemStats each time.
		SysTopicResendInterval: 3600,
	})

	devices := &deviceTable{}
	disc := serverDisconnector{server}
	registry := iotcore.DevicePath{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry}
	forward := &forwardHook{
		pub: pub, eventsTopic: cfg.EventsTopic, stateTopic: cfg.StateTopic, timeout: forwardTimeout,
		devices: devices, disc: disc, log: logger.With("hook", "pubsub-forward"),
	}
	// forwardHook must come last among OnPublish hooks (see its comment).
	hooks := []mqtt.Hook{
		&dialectHook{disc: disc, log: logger.With("hook", "iotcore-dialect")},
		&identityHook{registry: registry, auth: auth, devices: devices, log: logger.With("hook", "iotcore-identity")},
		&expiryHook{grace: cfg.ExpiryGrace, devices: devices, disc: disc, log: logger.With("hook", "credential-expiry")},
		&aclHook{devices: devices, disc: disc, log: logger.With("hook", "iotcore-acl")},
		forward,
	}
	for _, h := range hooks {
		if err := server.AddHook(h, nil); err != nil {
			return nil, fmt.Errorf("mqttbridge: add hook %s: %w", h.ID(), err)
		}
	}
	return &Bridge{
		cfg: cfg, log: logger, server: server, forward: forward, disc: disc, open: unauthenticated(auth),
		listener: newTCPListener("mqtt", cfg.MQTTAddr),
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
	// The name may have resolved to something else; check what was bound.
	if b.open {
		if err := requireLoopback(b.listener.Address()); err != nil {
			b.closeLocked()
			return fmt.Errorf("mqttbridge: bound %s: %w", b.cfg.MQTTAddr, err)
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
			"addr", b.listener.Address(), "registry", registry)
	case requireLoopback(b.listener.Address()) != nil:
		// The bridge has no TLS listener yet: a token read off the wire is
		// good until it expires.
		b.log.Warn("devices are authenticated, but over plain TCP on a non-loopback address: their JWTs travel unencrypted; put a TLS terminator in front",
			"addr", b.listener.Address(), "registry", registry)
	default:
		b.log.Info("devices are authenticated", "addr", b.listener.Address(), "registry", registry)
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
		b.listener.stopAccepting()
		b.log.Info("closing MQTT bridge: no new connections; waiting for in-flight publishes", "addr", b.listener.Address())
		b.forward.drain.closeAndWait()
		// mochi's own shutdown would send MQTT 3.1.1 clients a DISCONNECT too.
		for _, cl := range b.server.Clients.GetByListener(b.listener.ID()) {
			_ = b.disc.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
	// mqtt.Server.Close disconnects clients through the listener, waits for
	// their goroutines and stops the hooks.
	_ = b.server.Close()
	b.log.Info("MQTT bridge closed", "addr", b.listener.Address())
}
