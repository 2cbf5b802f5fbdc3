package mqttbridge

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/metrics"
)

// Device is what the bridge knows about a connected device.
type Device struct {
	Path  iotcore.DevicePath
	NumID string // the registry's numeric id; empty until the registry exists
	// Expiry is when the credentials the device connected with expire (a
	// JWT's exp); the bridge closes the connection Config.ExpiryGrace
	// later. Zero means they do not expire.
	Expiry time.Time
}

// Authenticator checks the credentials a device presents at CONNECT (IoT
// Core: the MQTT password is a JWT; the username is ignored) and returns the
// device's record. It is called only for client ids in the bridge's registry.
// Any error refuses the connection; its text is logged, not sent.
type Authenticator interface {
	Authenticate(ctx context.Context, dev iotcore.DevicePath, password []byte) (Device, error)
}

// AllowAll is the Authenticator of New: it accepts every device of the
// registry whatever its password. A bridge that uses it listens on loopback
// only; NewWithAuth takes a real one (ingress/jwtauth).
type AllowAll struct{}

// unauthenticated reports whether auth lets anyone in.
func unauthenticated(auth Authenticator) bool {
	switch auth.(type) {
	case AllowAll, *AllowAll:
		return true
	}
	return false
}

// Authenticate returns dev's record without checking password.
func (AllowAll) Authenticate(_ context.Context, dev iotcore.DevicePath, _ []byte) (Device, error) {
	return Device{Path: dev}, nil
}

// authTimeout bounds an Authenticator call, which holds the connection's goroutine.
const authTimeout = 10 * time.Second

// deviceTable maps connected clients to their sessions. It is keyed by the
// *mqtt.Client, not the client id: when a device reconnects, mochi attaches
// the new client before the old one's OnDisconnect runs, and that must not
// remove the new entry.
type deviceTable struct{ m sync.Map }

// set starts the session of cl, a client authenticated as d.
func (t *deviceTable) set(cl *mqtt.Client, d Device) { t.m.Store(cl, &session{dev: d}) }
func (t *deviceTable) remove(cl *mqtt.Client)        { t.m.Delete(cl) }
func (t *deviceTable) get(cl *mqtt.Client) (*session, bool) {
	s, ok := t.m.Load(cl)
	if !ok {
		return nil, false
	}
	return s.(*session), true
}

// session is the bridge's record of one connection of a device, from
// identityHook.OnConnectAuthenticate to identityHook.OnDisconnect: the device,
// and the state the hooks keep per connection, so that each hook finds all of
// it with one deviceTable lookup and a publish stores nothing in the table.
//
// dev is set before the session is in the table and never changes, so any
// goroutine may read it (aclHook does, for a message delivered to the
// client). The other fields belong to the connection's read goroutine,
// where mochi calls OnSessionEstablished, then, one packet at a time,
// OnACLCheck with write=true, OnPublish, OnPublished and OnPacketProcessed,
// and finally OnDisconnect (server.go attachClient, processPacket,
// processPublish); only those callbacks may touch them, and they need no
// lock.
type session struct {
	dev Device

	// limits is rateLimitHook's state of the connection, from its
	// OnSessionEstablished to its OnDisconnect; nil outside that.
	limits *connLimits
	// publishStart is when metricsHook handed the publish in progress on to
	// forwardHook; zero when no publish is in progress.
	publishStart time.Time
	// forwarding is set while forwardHook holds a drainGate entry for the
	// publish in progress, until mochi has written its PUBACK (or decided
	// not to) in OnPacketProcessed.
	forwarding bool
	// lastTopic is the last topic name the topic method parsed without
	// error, and lastParsed its parse; lastTopic is empty when there is
	// none (no valid topic is empty).
	lastTopic  string
	lastParsed iotcore.Topic
}

// topic parses name, a topic the client publishes to, once for all the
// hooks that look at the publish: a device publishes to the same topic over
// and over, so the last parse is kept and reused while name stays the same.
// Only the read goroutine may call it (see session); a topic from elsewhere,
// such as a subscription's or one delivered to the client, is parsed with
// iotcore.ParseTopic.
func (s *session) topic(name string) (iotcore.Topic, error) {
	if s.lastTopic != "" && name == s.lastTopic {
		return s.lastParsed, nil
	}
	// mochi's topic name shares memory with the packet's payload: keep a
	// copy, and parse the copy so the Topic's strings point into it too.
	name = strings.Clone(name)
	t, err := iotcore.ParseTopic(name)
	if err != nil {
		return t, err
	}
	s.lastTopic, s.lastParsed = name, t
	return t, nil
}

// identityHook admits a client whose id names a device of the bridge's
// registry and whose credentials the Authenticator accepts, and keeps the
// connection's session (the device, for the other hooks) until it ends.
//
// It must be the only hook providing OnConnectAuthenticate: mochi admits a
// client when any hook says yes (hooks.go:656), so a further check (JWT,
// blocked devices) belongs in the Authenticator, not in another hook.
type identityHook struct {
	mqtt.HookBase
	registry iotcore.DevicePath // Device is empty
	auth     Authenticator
	devices  *deviceTable
	metrics  *metrics.Metrics // auth failures by reason (metrics.go)
	log      *slog.Logger
}

func (h *identityHook) ID() string { return "iotcore-identity" }

func (h *identityHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnectAuthenticate, mqtt.OnDisconnect:
		return true
	}
	return false
}

func (h *identityHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	dev, err := h.admit(cl.ID, pk.Connect.Password)
	if err != nil {
		h.log.Info("connection refused", "remote", cl.Net.Remote, "reason", err)
		h.metrics.AuthFailure(metrics.MQTT, h.refusalReason(cl.ID, err))
		return false
	}
	h.devices.set(cl, dev)
	h.log.Info("device connected", "device", dev.Path.Device, "remote", cl.Net.Remote,
		"protocol_version", cl.Properties.ProtocolVersion)
	return true
}

func (h *identityHook) admit(clientID string, password []byte) (Device, error) {
	dp, err := iotcore.ParseClientID(clientID)
	if err != nil {
		return Device{}, err
	}
	if dp.Project != h.registry.Project || dp.Location != h.registry.Location || dp.Registry != h.registry.Registry {
		return Device{}, fmt.Errorf("client id %s is not in registry projects/%s/locations/%s/registries/%s",
			dp, h.registry.Project, h.registry.Location, h.registry.Registry)
	}
	ctx, cancel := context.WithTimeout(context.Background(), authTimeout)
	defer cancel()
	dev, err := h.auth.Authenticate(ctx, dp, password)
	if err != nil {
		return Device{}, fmt.Errorf("authenticate %s: %w", dp, err)
	}
	dev.Path = dp // the client id is the identity; an authenticator only adds to it
	return dev, nil
}

// OnDisconnect ends the client's session. mochi calls it for every client
// that got past authentication and read packets; a client whose CONNACK
// could not be written is left in the table, as it is left in mochi's own
// client list. The hook is added last (newBridge), so that the other hooks'
// OnDisconnect still find the session.
func (h *identityHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if s, ok := h.devices.get(cl); ok {
		h.log.Info("device disconnected", "device", s.dev.Path.Device, "remote", cl.Net.Remote, "cause", err)
		h.devices.remove(cl)
	}
}
