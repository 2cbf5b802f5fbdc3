package mqttbridge

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
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

// deviceTable maps connected clients to their devices. It is keyed by the
// *mqtt.Client, not the client id: when a device reconnects, mochi attaches
// the new client before the old one's OnDisconnect runs, and that must not
// remove the new entry.
type deviceTable struct{ m sync.Map }

func (t *deviceTable) set(cl *mqtt.Client, d Device) { t.m.Store(cl, d) }
func (t *deviceTable) remove(cl *mqtt.Client)        { t.m.Delete(cl) }
func (t *deviceTable) get(cl *mqtt.Client) (Device, bool) {
	d, ok := t.m.Load(cl)
	if !ok {
		return Device{}, false
	}
	return d.(Device), true
}

// identityHook admits a client whose id names a device of the bridge's
// registry and whose credentials the Authenticator accepts, and records the
// device for the other hooks.
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
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnDisconnect}, []byte{b})
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

// OnDisconnect forgets the client. mochi calls it for every client that got
// past authentication and read packets; a client whose CONNACK could not be
// written is left in the table, as it is left in mochi's own client list.
func (h *identityHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if dev, ok := h.devices.get(cl); ok {
		h.log.Info("device disconnected", "device", dev.Path.Device, "remote", cl.Net.Remote, "cause", err)
		h.devices.remove(cl)
	}
}
