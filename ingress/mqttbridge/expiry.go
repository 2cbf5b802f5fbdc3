package mqttbridge

import (
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// expiryHook closes a connection once the credentials it was opened with
// have expired (Device.Expiry) plus grace, as IoT Core did: the device is
// expected to reconnect with a new token.
//
// The timer starts in OnSessionEstablished, after the CONNACK, and stops in
// OnDisconnect, which mochi calls for every client that got that far.
type expiryHook struct {
	mqtt.HookBase
	grace   time.Duration
	devices *deviceTable
	disc    disconnector
	log     *slog.Logger

	timers sync.Map // *mqtt.Client → *time.Timer
}

func (h *expiryHook) ID() string { return "credential-expiry" }

func (h *expiryHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect:
		return true
	}
	return false
}

func (h *expiryHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	s, ok := h.devices.get(cl)
	if !ok || s.dev.Expiry.IsZero() {
		return
	}
	dev := s.dev
	deadline := dev.Expiry.Add(h.grace)
	h.timers.Store(cl, time.AfterFunc(time.Until(deadline), func() {
		h.log.Info("closing connection: credentials expired", "device", dev.Path.Device, "remote", cl.Net.Remote,
			"expired_at", dev.Expiry, "grace", h.grace)
		// MQTT 5 has a reason code for exactly this.
		_ = h.disc.DisconnectClient(cl, packets.ErrMaxConnectTime)
	}))
}

func (h *expiryHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	if t, ok := h.timers.LoadAndDelete(cl); ok {
		t.(*time.Timer).Stop()
	}
}
