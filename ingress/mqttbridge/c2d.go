package mqttbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/ingress/devicebus"
	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/registry"
)

// Option turns on an optional feature of a bridge built by New or NewWithAuth.
type Option func(*options)

type options struct {
	bus *devicebus.Bus
}

// WithDeviceBus turns on cloud-to-device messages: the bridge sends a device
// its config when it subscribes to /devices/{id}/config and whenever the
// config changes, delivers commands sent through bus to subscribed
// devices, and records in bus which devices it holds, so that messages sent
// through other instances reach them. The bridge attaches itself to bus;
// the caller starts and closes bus.
func WithDeviceBus(bus *devicebus.Bus) Option { return func(o *options) { o.bus = bus } }

// optionHooks builds the hooks opts turn on, in the order they must be added.
func optionHooks(opts []Option, server *mqtt.Server, reg iotcore.DevicePath, devices *deviceTable,
	disc disconnector, logger *slog.Logger) ([]mqtt.Hook, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	var hooks []mqtt.Hook
	if o.bus != nil {
		h := &c2dHook{server: server, bus: o.bus, registry: reg, devices: devices, disc: disc,
			log: logger.With("hook", "cloud-to-device")}
		if err := o.bus.Attach(h); err != nil {
			return nil, fmt.Errorf("mqttbridge: %w", err)
		}
		hooks = append(hooks, h)
	}
	return hooks, nil
}

// c2dTimeout bounds a registry call made for a connection.
const c2dTimeout = 10 * time.Second

// c2dHook delivers config and commands to devices, as IoT Core did:
//   - A device that subscribes to its config topic is sent its current
//     config, after the SUBACK, and then every newer version. With a QoS 1
//     subscription the config goes out with QoS 1 and stays in mochi's
//     inflight store until the device's PUBACK, so it is resent when a
//     persistent session resumes (a clean one gets the current config on
//     its next subscribe instead). Only the newest version is pending: a new
//     version drops an unacknowledged older one, and a version older than
//     one already sent is never sent.
//   - A command goes to /devices/{id}/commands[/{subfolder}] if the device
//     holds a matching subscription, and is refused otherwise; nothing is
//     kept for later.
//   - Which devices subscribed to what is recorded through the bus
//     (devicebus.Bus.Subscribed) before the SUBACK, and forgotten on
//     disconnect, so messages sent through any instance find the connection.
//
// A session resumed with its subscriptions (MQTT clean session false) sends
// no SUBSCRIBE, so OnSessionEstablished does the same for it.
type c2dHook struct {
	mqtt.HookBase
	server   *mqtt.Server
	bus      *devicebus.Bus
	registry iotcore.DevicePath // Device is empty
	devices  *deviceTable
	disc     disconnector
	log      *slog.Logger

	conns sync.Map // *mqtt.Client → *c2dConn
}

var _ devicebus.Local = (*c2dHook)(nil)

// c2dConn is the hook's state of one connection.
type c2dConn struct {
	conn devicebus.Conn

	mu          sync.Mutex // serializes config sends and presence writes
	sent        int64      // newest config version written to the connection
	recorded    presenceFlags
	sendPending atomic.Bool // a config subscription was granted in the SUBSCRIBE being processed
}

type presenceFlags struct{ config, commands bool }

func (h *c2dHook) ID() string { return "cloud-to-device" }

func (h *c2dHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnSubscribed, mqtt.OnUnsubscribed, mqtt.OnPacketProcessed, mqtt.OnDisconnect:
		return true
	}
	return false
}

func (h *c2dHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	s, ok := h.devices.get(cl)
	if !ok {
		return
	}
	dev := s.dev
	c := &c2dConn{conn: h.bus.NewConn(dev.Path)}
	h.conns.Store(cl, c)
	if cl.State.Subscriptions.Len() == 0 {
		return
	}
	// A resumed session: its subscriptions came with it.
	h.recordPresence(cl, c)
	if subscribedQoS(cl, configTopic(dev.Path)) >= 0 {
		h.sendCurrentConfig(cl, c)
	}
}

// OnSubscribed runs after mochi added the subscriptions and before it
// writes the SUBACK.
func (h *c2dHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	c, ok := h.conn(cl)
	if !ok {
		return
	}
	for i, sub := range pk.Filters {
		if i < len(reasonCodes) && reasonCodes[i] < packets.ErrUnspecifiedError.Code {
			if t, err := iotcore.ParseTopic(sub.Filter); err == nil && t.Kind == iotcore.Config {
				c.sendPending.Store(true)
			}
		}
	}
	// Record before the SUBACK and before reading the config: an update
	// committed before this write is read below, one committed after it
	// finds the presence and is sent here.
	h.recordPresence(cl, c)
}

// OnPacketProcessed runs after the SUBACK is written, so the device has its
// subscription confirmed before the config arrives.
func (h *c2dHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, err error) {
	if pk.FixedHeader.Type != packets.Subscribe || err != nil {
		return
	}
	if c, ok := h.conn(cl); ok && c.sendPending.Swap(false) {
		h.sendCurrentConfig(cl, c)
	}
}

func (h *c2dHook) OnUnsubscribed(cl *mqtt.Client, _ packets.Packet) {
	if c, ok := h.conn(cl); ok {
		h.recordPresence(cl, c)
	}
}

func (h *c2dHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	v, ok := h.conns.LoadAndDelete(cl)
	if !ok {
		return
	}
	c := v.(*c2dConn)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.recorded == (presenceFlags{}) {
		h.log.Debug("connection ended", "device", c.conn.Device.Device, "generation", c.conn.Generation, "had_presence", false)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c2dTimeout)
	defer cancel()
	cleared, err := h.bus.Disconnected(ctx, c.conn)
	if err != nil {
		h.log.Error("presence not cleared: messages for the device will be routed here until it reconnects",
			"device", c.conn.Device.Device, "error", err)
		return
	}
	// presence_cleared=false: a newer connection of the device had recorded itself.
	h.log.Debug("connection ended", "device", c.conn.Device.Device, "generation", c.conn.Generation,
		"had_presence", true, "presence_cleared", cleared)
}

func (h *c2dHook) conn(cl *mqtt.Client) (*c2dConn, bool) {
	v, ok := h.conns.Load(cl)
	if !ok {
		return nil, false
	}
	return v.(*c2dConn), true
}

// recordPresence writes what the connection is subscribed to, if that
// changed. If a newer connection of the device has recorded itself (on any
// instance), this one is stale and is closed: a device has one connection.
func (h *c2dHook) recordPresence(cl *mqtt.Client, c *c2dConn) {
	var now presenceFlags
	for _, sub := range cl.State.Subscriptions.GetAll() {
		if t, err := iotcore.ParseTopic(sub.Filter); err == nil {
			now.config = now.config || t.Kind == iotcore.Config
			now.commands = now.commands || t.Kind == iotcore.Commands
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if now == c.recorded {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c2dTimeout)
	defer cancel()
	current, err := h.bus.Subscribed(ctx, c.conn, now.config, now.commands)
	if err != nil {
		h.log.Error("presence not recorded: config updates and commands sent through other instances will not reach the device",
			"device", c.conn.Device.Device, "config", now.config, "commands", now.commands, "error", err)
		return
	}
	c.recorded = now
	if !current {
		h.log.Warn("closing connection: a newer connection of the device exists", "device", c.conn.Device.Device,
			"remote", cl.Net.Remote, "generation", c.conn.Generation)
		_ = h.disc.DisconnectClient(cl, packets.ErrSessionTakenOver)
	}
}

// sendCurrentConfig sends the registry's current config to a connection
// that just subscribed to it, even if that version was sent before: a
// device subscribing again asks for it again.
func (h *c2dHook) sendCurrentConfig(cl *mqtt.Client, c *c2dConn) {
	ctx, cancel := context.WithTimeout(context.Background(), c2dTimeout)
	defer cancel()
	cfg, err := h.bus.CurrentConfig(ctx, c.conn.Device)
	if err != nil {
		level := slog.LevelError
		if errors.Is(err, registry.ErrNotFound) {
			level = slog.LevelInfo // a device unknown to the registry (AllowAll) has no config
		}
		h.log.Log(ctx, level, "config not sent on subscribe", "device", c.conn.Device.Device, "error", err)
		return
	}
	if err := h.sendConfig(cl, c, cfg, true); err != nil {
		h.log.Warn("config not sent on subscribe", "device", c.conn.Device.Device, "version", cfg.Version, "error", err)
	}
}

// sendConfig writes cfg to the connection unless a newer version (or, with
// again false, the same one) was written already.
func (h *c2dHook) sendConfig(cl *mqtt.Client, c *c2dConn, cfg registry.DeviceConfig, again bool) error {
	topic := configTopic(c.conn.Device)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cfg.Version < c.sent || cfg.Version == c.sent && !again {
		h.log.Debug("config not sent: version already sent", "device", c.conn.Device.Device,
			"version", cfg.Version, "sent", c.sent)
		return nil
	}
	qos := subscribedQoS(cl, topic)
	if qos < 0 {
		return fmt.Errorf("%w to %s", devicebus.ErrNotSubscribed, topic)
	}
	if err := h.write(cl, topic, cfg.BinaryData, byte(qos), true); err != nil {
		return err
	}
	c.sent = cfg.Version
	h.log.Debug("config sent", "device", c.conn.Device.Device, "version", cfg.Version, "qos", qos)
	return nil
}

// DeliverConfig implements devicebus.Local.
func (h *c2dHook) DeliverConfig(_ context.Context, dp iotcore.DevicePath, cfg registry.DeviceConfig) error {
	cl, c, err := h.client(dp)
	if err != nil {
		return err
	}
	return h.sendConfig(cl, c, cfg, false)
}

// DeliverCommand implements devicebus.Local.
func (h *c2dHook) DeliverCommand(_ context.Context, dp iotcore.DevicePath, subFolder string, data []byte) error {
	cl, c, err := h.client(dp)
	if err != nil {
		return err
	}
	topic := iotcore.Topic{Kind: iotcore.Commands, Device: dp.Device, SubFolder: subFolder}.String()
	qos := subscribedQoS(cl, topic)
	if qos < 0 {
		return fmt.Errorf("%w to %s", devicebus.ErrNotSubscribed, topic)
	}
	if err := h.write(cl, topic, data, byte(qos), false); err != nil {
		return err
	}
	h.log.Debug("command sent", "device", c.conn.Device.Device, "topic", topic, "qos", qos, "bytes", len(data))
	return nil
}

// client returns the connection of device dp, if this bridge holds one.
func (h *c2dHook) client(dp iotcore.DevicePath) (*mqtt.Client, *c2dConn, error) {
	if inRegistry := dp.Project == h.registry.Project && dp.Location == h.registry.Location && dp.Registry == h.registry.Registry; !inRegistry {
		return nil, nil, fmt.Errorf("%w here: this bridge serves registry projects/%s/locations/%s/registries/%s",
			devicebus.ErrNotConnected, h.registry.Project, h.registry.Location, h.registry.Registry)
	}
	if cl, ok := h.server.Clients.Get(dp.String()); ok && !cl.Closed() {
		if c, ok := h.conn(cl); ok {
			return cl, c, nil
		}
	}
	return nil, nil, fmt.Errorf("%w here", devicebus.ErrNotConnected)
}

// write sends a PUBLISH to one client, as mochi's own fan-out does
// (server.go publishToClient) but without its topic index: with QoS 1 the
// packet is kept inflight until the PUBACK. With replace, unacknowledged
// publishes to the same topic are dropped first, so only the newest is pending.
func (h *c2dHook) write(cl *mqtt.Client, topic string, payload []byte, qos byte, replace bool) error {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     payload,
		Created:     time.Now().Unix(),
	}
	if qos > 0 {
		// Take the id before dropping older packets, so a late PUBACK for
		// a dropped packet cannot acknowledge this one.
		id, err := cl.NextPacketID()
		if err != nil {
			return fmt.Errorf("no packet id free for %s: %w", topic, err)
		}
		pk.PacketID = uint16(id)
		if replace {
			for _, old := range cl.State.Inflight.GetAll(false) {
				if old.FixedHeader.Type == packets.Publish && old.TopicName == topic && cl.State.Inflight.Delete(old.PacketID) {
					cl.State.Inflight.IncreaseSendQuota()
					atomic.AddInt64(&h.server.Info.Inflight, -1)
					h.log.Debug("dropped unacknowledged older message", "client", cl.ID, "topic", topic, "packet_id", old.PacketID)
				}
			}
		}
		if cl.State.Inflight.Set(pk) {
			atomic.AddInt64(&h.server.Info.Inflight, 1)
			cl.State.Inflight.DecreaseSendQuota()
		}
	}
	if err := cl.WritePacket(pk); err != nil {
		// Not sent (too large for the client, or the connection is gone):
		// nothing is pending. A resumed session gets the current config anyway.
		if qos > 0 && cl.State.Inflight.Delete(pk.PacketID) {
			cl.State.Inflight.IncreaseSendQuota()
			atomic.AddInt64(&h.server.Info.Inflight, -1)
		}
		return fmt.Errorf("write %d bytes to %s: %w", len(payload), topic, err)
	}
	return nil
}

func configTopic(dp iotcore.DevicePath) string {
	return iotcore.Topic{Kind: iotcore.Config, Device: dp.Device}.String()
}

// subscribedQoS returns the QoS the client gets messages on topic with (the
// highest of its matching subscriptions, at most 1), or -1 if none matches.
func subscribedQoS(cl *mqtt.Client, topic string) int {
	qos := -1
	for filter, sub := range cl.State.Subscriptions.GetAll() {
		if matches(filter, topic) {
			qos = max(qos, int(min(sub.Qos, 1)))
		}
	}
	return qos
}

// matches reports whether an MQTT topic filter matches a topic name.
func matches(filter, topic string) bool {
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		switch {
		case f == "#":
			return true // also matches the parent level: "a/#" matches "a"
		case i >= len(ts):
			return false
		case f != "+" && f != ts[i]:
			return false
		}
	}
	return len(fs) == len(ts)
}
