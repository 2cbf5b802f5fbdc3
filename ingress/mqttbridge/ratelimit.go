package mqttbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/sync/semaphore"
	"golang.org/x/time/rate"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/metrics"
)

// IoT Core's limits (the protocol sheet) and the bridge's bounds on waiting.
const (
	DefaultConnectionMessagesPerSecond = 100
	DefaultDeviceBytesPerSecond        = 512 << 10
	DefaultDeviceStatePerSecond        = 1
	// DefaultMaxThrottleDelay is how long a publish may wait for its turn
	// under the rate limits before the connection is closed instead: a
	// second, the horizon of every limit, so a device over a limit by a
	// burst is slowed down and one over it steadily is cut off.
	DefaultMaxThrottleDelay = time.Second
	// DefaultTenantMaxOutstanding bounds a tenant's publishes waiting for
	// Pub/Sub: at 20k msgs/s and a normal 10–50 ms confirmation that is
	// 200–1,000 messages, so the gate closes only when Pub/Sub lags.
	DefaultTenantMaxOutstanding = 1000
	// DefaultTenantMaxOutstandingBytes bounds the payload bytes those
	// publishes hold in memory.
	DefaultTenantMaxOutstandingBytes = 64 << 20
	// DefaultTenantMaxWait is how long a publish may wait for its tenant's
	// gate: the bridge's Pub/Sub timeout, past which the message would have
	// failed anyway.
	DefaultTenantMaxWait = forwardTimeout
)

// Limits are the bridge's rate limits and its per-tenant backpressure. Zero
// fields take IoT Core's values (the Default* constants); a negative rate or
// bound turns that limit off, and a negative wait means never wait.
//
// What happens to a device over a rate limit: IoT Core throttled devices
// and closed the connections of those that kept on. Here a publish that
// would exceed a limit waits until it no longer does, holding the
// connection's read loop, so the device is slowed by TCP and (QoS 1) by its
// PUBACKs arriving later; the same for QoS 0, since TCP backpressure does not
// depend on QoS and dropping a QoS 0 message would lose data silently. If the
// wait would be longer than MaxThrottleDelay, the connection is closed
// instead (MQTT 5 reason 0x96, message rate too high), the reason is logged
// and rejects_total{reason="rate_limited"} counts it. Each delayed publish
// counts in throttled_total{limit=...}.
type Limits struct {
	// ConnectionMessagesPerSecond limits the messages (events and state)
	// one connection publishes, in a bucket of one second's worth.
	ConnectionMessagesPerSecond float64
	// DeviceBytesPerSecond limits the payload bytes one device publishes,
	// over all its connections, in a bucket of one second's worth and at
	// least one largest packet.
	DeviceBytesPerSecond float64
	// DeviceStatePerSecond limits one device's state updates.
	DeviceStatePerSecond float64
	// MaxThrottleDelay is the longest a publish waits for the rate limits.
	MaxThrottleDelay time.Duration

	// Per-tenant backpressure: a tenant (a registry) may have at most
	// TenantMaxOutstanding publishes, holding TenantMaxOutstandingBytes of
	// payload, handed to Pub/Sub and not yet confirmed. Further publishes
	// of its devices wait, in order, for earlier ones to be confirmed, so
	// that when Pub/Sub lags the bridge reads less from those devices instead
	// of holding more in memory. It is a token bucket whose tokens come back
	// as Pub/Sub confirms: acceptance runs at outstanding/latency, so it
	// slows as Pub/Sub's latency grows. A publish that waits longer than
	// TenantMaxWait closes its connection (MQTT 5 reason 0x89, server busy;
	// rejects_total{reason="backpressure"}); the device resends later.
	// Tenants do not wait for each other.
	TenantMaxOutstanding      int
	TenantMaxOutstandingBytes int64
	TenantMaxWait             time.Duration
}

// withDefaults fills zero fields with IoT Core's values.
func (l Limits) withDefaults() Limits {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.ConnectionMessagesPerSecond, DefaultConnectionMessagesPerSecond)
	def(&l.DeviceBytesPerSecond, DefaultDeviceBytesPerSecond)
	def(&l.DeviceStatePerSecond, DefaultDeviceStatePerSecond)
	if l.MaxThrottleDelay == 0 {
		l.MaxThrottleDelay = DefaultMaxThrottleDelay
	}
	if l.TenantMaxOutstanding == 0 {
		l.TenantMaxOutstanding = DefaultTenantMaxOutstanding
	}
	if l.TenantMaxOutstandingBytes == 0 {
		l.TenantMaxOutstandingBytes = DefaultTenantMaxOutstandingBytes
	}
	if l.TenantMaxWait == 0 {
		l.TenantMaxWait = DefaultTenantMaxWait
	}
	return l
}

// validate reports a rate that is not a number or infinite: flags parse
// "NaN" and "Inf" as floats.
func (l Limits) validate() error {
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"ConnectionMessagesPerSecond", l.ConnectionMessagesPerSecond},
		{"DeviceBytesPerSecond", l.DeviceBytesPerSecond},
		{"DeviceStatePerSecond", l.DeviceStatePerSecond},
	} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return fmt.Errorf("mqttbridge: config: Limits.%s is %v: want a number (negative turns the limit off)", f.name, f.v)
		}
	}
	return nil
}

// clock is time as the rate limits see it; tests drive it by hand.
type clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives once d has passed, and a
	// function that stops the timer.
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// Why a wait ended without its turn.
var (
	errWaitedTooLong = errors.New("waited too long")
	errBridgeClosing = errors.New("bridge is shutting down")
)

// rateLimitHook enforces Limits (see there for the policy) in OnPublish,
// which mochi calls on the connection's read goroutine after the ACL, so
// that waiting here stops the bridge from reading that connection.
//
// It must come before metricsHook and forwardHook among OnPublish hooks:
// what it lets through is handed to Pub/Sub by forwardHook, and the tenant
// gate's token is returned in OnPacketProcessed, after the PUBACK.
type rateLimitHook struct {
	mqtt.HookBase
	limits  Limits // with defaults
	devices *deviceTable
	disc    disconnector
	metrics *metrics.Metrics
	log     *slog.Logger
	clock   clock

	closing   chan struct{} // closed by abortWaits
	closeOnce sync.Once

	mu      sync.Mutex
	devs    map[iotcore.DevicePath]*deviceLimits
	sweepAt int                                // len(devs) at which idle entries are swept
	tenants map[iotcore.DevicePath]*tenantGate // by registry (Device empty)
}

// minSweep is the device count below which idle device buckets are kept.
const minSweep = 1024

func newRateLimitHook(l Limits, devices *deviceTable, disc disconnector, m *metrics.Metrics, log *slog.Logger) *rateLimitHook {
	return &rateLimitHook{
		limits: l.withDefaults(), devices: devices, disc: disc, metrics: m, log: log, clock: systemClock{},
		closing: make(chan struct{}),
		devs:    make(map[iotcore.DevicePath]*deviceLimits), sweepAt: minSweep,
		tenants: make(map[iotcore.DevicePath]*tenantGate),
	}
}

func (h *rateLimitHook) ID() string { return "rate-limit" }

func (h *rateLimitHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnPublish, mqtt.OnPacketProcessed:
		return true
	}
	return false
}

// abortWaits ends every wait at once, refusing the publishes that were
// waiting: Bridge.Close calls it so that closing does not wait out the limits.
func (h *rateLimitHook) abortWaits() { h.closeOnce.Do(func() { close(h.closing) }) }

// connLimits is the limiter state of one connection (session.limits). Only
// the connection's read goroutine touches held, which is where mochi calls
// OnPublish, OnPacketProcessed and OnDisconnect.
type connLimits struct {
	dev      iotcore.DevicePath
	messages *rate.Limiter // nil: no limit
	device   *deviceLimits
	tenant   *tenantGate // nil: no backpressure
	held     int64       // bytes of the tenant token held by the publish in progress; -1: none
}

// deviceLimits are one device's buckets, shared by its connections (a new
// connection of the device overlaps the old one until mochi closes it), and
// kept after the last one closes until they are full again, so that a
// device cannot refill them by reconnecting.
type deviceLimits struct {
	bytes *rate.Limiter // nil: no limit
	state *rate.Limiter // nil: no limit
	refs  int           // connections; guarded by rateLimitHook.mu
}

func (d *deviceLimits) full(now time.Time) bool {
	for _, l := range []*rate.Limiter{d.bytes, d.state} {
		if l != nil && l.TokensAt(now) < float64(l.Burst()) {
			return false
		}
	}
	return true
}

// newLimiter returns a bucket of perSecond refilling one second's worth, at
// least minBurst; nil for a negative rate (no limit).
func newLimiter(perSecond float64, minBurst int) *rate.Limiter {
	if perSecond < 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(perSecond), max(minBurst, int(math.Ceil(perSecond))))
}

func (h *rateLimitHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	s, ok := h.devices.get(cl)
	if !ok {
		return
	}
	dp := s.dev.Path
	s.limits = &connLimits{
		dev:      dp,
		messages: newLimiter(h.limits.ConnectionMessagesPerSecond, 1),
		device:   h.acquireDevice(dp),
		tenant:   h.tenant(dp),
		held:     -1,
	}
}

// OnDisconnect gives back what the connection holds, once: it clears
// session.limits. It runs before identityHook's OnDisconnect ends the session.
func (h *rateLimitHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	s, ok := h.devices.get(cl)
	if !ok || s.limits == nil {
		return
	}
	c := s.limits
	s.limits = nil
	c.release()
	h.releaseDevice(c.dev, c.device)
}

func (h *rateLimitHook) acquireDevice(dp iotcore.DevicePath) *deviceLimits {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.devs[dp]
	if !ok {
		if len(h.devs) >= h.sweepAt {
			h.sweepLocked(h.clock.Now())
		}
		d = &deviceLimits{
			bytes: newLimiter(h.limits.DeviceBytesPerSecond, maxPacketSize),
			state: newLimiter(h.limits.DeviceStatePerSecond, 1),
		}
		h.devs[dp] = d
	}
	d.refs++
	return d
}

func (h *rateLimitHook) releaseDevice(dp iotcore.DevicePath, d *deviceLimits) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d.refs--
	if d.refs == 0 && d.full(h.clock.Now()) {
		delete(h.devs, dp)
	}
}

// sweepLocked forgets devices with no connection whose buckets have
// refilled; running it only when the map has doubled keeps its cost per
// new device constant.
func (h *rateLimitHook) sweepLocked(now time.Time) {
	for dp, d := range h.devs {
		if d.refs == 0 && d.full(now) {
			delete(h.devs, dp)
		}
	}
	h.sweepAt = max(minSweep, 2*len(h.devs))
}

func (h *rateLimitHook) tenant(dp iotcore.DevicePath) *tenantGate {
	if h.limits.TenantMaxOutstanding < 0 && h.limits.TenantMaxOutstandingBytes < 0 {
		return nil
	}
	key := dp
	key.Device = ""
	h.mu.Lock()
	defer h.mu.Unlock()
	g, ok := h.tenants[key]
	if !ok {
		g = newTenantGate(h.limits.TenantMaxOutstanding, h.limits.TenantMaxOutstandingBytes)
		h.tenants[key] = g
	}
	return g
}

func (h *rateLimitHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	s, ok := h.devices.get(cl)
	if !ok || s.limits == nil {
		return pk, nil // not a device session (mochi's inline client)
	}
	c := s.limits
	kind := iotcore.Events
	if t, err := s.topic(pk.TopicName); err == nil {
		kind = t.Kind
	}

	now := h.clock.Now()
	delay, limit, ok := c.reserve(now, kind, len(pk.Payload), h.limits.MaxThrottleDelay)
	if !ok {
		return pk, h.refuse(cl, pk, packets.ErrMessageRateTooHigh,
			fmt.Errorf("%s limit exceeded: the message would have to wait %v, more than the %v the bridge waits", limit, delay, max(h.limits.MaxThrottleDelay, 0)))
	}
	if delay > 0 {
		h.metrics.Throttled(metrics.MQTT, limit, delay)
		if debugEnabled(h.log) {
			h.log.Debug("throttling device", "client", cl.ID, "limit", limit, "delay", delay)
		}
		if err := h.wait(delay); err != nil {
			return pk, h.refuse(cl, pk, packets.ErrServerShuttingDown, err)
		}
	}

	if c.tenant == nil {
		return pk, nil
	}
	n := int64(len(pk.Payload))
	if !c.tenant.tryAcquire(n) {
		start := h.clock.Now()
		err := h.acquireTenant(c.tenant, n)
		h.metrics.Throttled(metrics.MQTT, metrics.LimitTenantPubSub, h.clock.Now().Sub(start))
		switch {
		case errors.Is(err, errWaitedTooLong):
			return pk, h.refuse(cl, pk, packets.ErrServerBusy,
				fmt.Errorf("Pub/Sub backlog: registry projects/%s/locations/%s/registries/%s kept the most unconfirmed messages it may (%d, or %d bytes) for %v",
					c.dev.Project, c.dev.Location, c.dev.Registry, c.tenant.maxMessages, c.tenant.maxBytes, h.limits.TenantMaxWait))
		case err != nil:
			return pk, h.refuse(cl, pk, packets.ErrServerShuttingDown, err)
		}
	}
	c.held = n
	if cl.Closed() {
		// Closed while it waited (taken over, expired): nobody to acknowledge.
		c.release()
		return pk, fmt.Errorf("%w: connection closed while waiting for Pub/Sub backlog", packets.ErrRejectPacket)
	}
	return pk, nil
}

// reserve takes the message's tokens from every bucket it counts against
// and returns how long it must wait for them and which limit is the
// furthest behind. If that is over maxDelay it takes nothing and returns
// false.
func (c *connLimits) reserve(now time.Time, kind iotcore.TopicKind, size int, maxDelay time.Duration) (time.Duration, string, bool) {
	type bucket struct {
		l     *rate.Limiter // nil: no limit
		n     int
		limit string
	}
	// Arrays, not slices, so that a message allocates nothing here.
	buckets := [...]bucket{
		{c.messages, 1, metrics.LimitConnectionMessages},
		{c.device.bytes, size, metrics.LimitDeviceBytes},
		{nil, 1, metrics.LimitDeviceState},
	}
	if kind == iotcore.State {
		buckets[2].l = c.device.state
	}
	var (
		delay time.Duration
		limit string
		taken [len(buckets)]rate.Reservation // copies: keeping the *Reservation would put each on the heap
		n     int
	)
	ok := true
	for _, b := range buckets {
		if b.l == nil {
			continue
		}
		r := *b.l.ReserveN(now, b.n)
		if !r.OK() { // more than the bucket holds: it would never pass
			delay, limit, ok = time.Duration(math.MaxInt64), b.limit, false
			break
		}
		taken[n] = r
		n++
		if d := r.DelayFrom(now); d > delay {
			delay, limit = d, b.limit
		}
	}
	if ok && delay <= max(maxDelay, 0) {
		return delay, limit, true
	}
	for i := range taken[:n] {
		taken[i].CancelAt(now)
	}
	return delay, limit, false
}

// wait sleeps d on the hook's clock, unless the bridge closes first.
func (h *rateLimitHook) wait(d time.Duration) error {
	fired, stop := h.clock.NewTimer(d)
	defer stop()
	select {
	case <-fired:
		return nil
	case <-h.closing:
		return errBridgeClosing
	}
}

// acquireTenant waits up to TenantMaxWait for a token of g.
func (h *rateLimitHook) acquireTenant(g *tenantGate, n int64) error {
	if h.limits.TenantMaxWait < 0 {
		return errWaitedTooLong
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	fired, stop := h.clock.NewTimer(h.limits.TenantMaxWait)
	defer stop()
	go func() {
		select {
		case <-fired:
			cancel(errWaitedTooLong)
		case <-h.closing:
			cancel(errBridgeClosing)
		case <-ctx.Done():
		}
	}()
	if err := g.acquire(ctx, n); err != nil {
		return context.Cause(ctx)
	}
	return nil
}

// OnPacketProcessed returns the tenant token once mochi is done with the
// publish: confirmed and acknowledged, or refused.
func (h *rateLimitHook) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type != packets.Publish {
		return
	}
	if s, ok := h.devices.get(cl); ok && s.limits != nil {
		s.limits.release()
	}
}

func (c *connLimits) release() {
	if c.held >= 0 && c.tenant != nil {
		c.tenant.release(c.held)
	}
	c.held = -1
}

// refuse closes the client's connection and returns the error that makes
// mochi skip the PUBACK and the other OnPublish hooks.
func (h *rateLimitHook) refuse(cl *mqtt.Client, pk packets.Packet, code packets.Code, reason error) error {
	h.log.Warn("closing connection: message not accepted", "client", cl.ID, "remote", cl.Net.Remote,
		"topic", pk.TopicName, "qos", pk.FixedHeader.Qos, "reason", reason)
	_ = h.disc.DisconnectClient(cl, code)
	return fmt.Errorf("%w: %w", packets.ErrRejectPacket, reason)
}

// tenantGate is one tenant's bound on unconfirmed publishes, in messages
// and in bytes. Waiters are served in order (semaphore.Weighted is FIFO),
// so a large message is not starved by small ones.
type tenantGate struct {
	messages, bytes       *semaphore.Weighted // nil: no bound
	maxMessages, maxBytes int64
}

func newTenantGate(maxMessages int, maxBytes int64) *tenantGate {
	g := &tenantGate{maxMessages: int64(maxMessages), maxBytes: maxBytes}
	if maxMessages > 0 {
		g.messages = semaphore.NewWeighted(g.maxMessages)
	}
	if maxBytes > 0 {
		g.bytes = semaphore.NewWeighted(maxBytes)
	}
	return g
}

// weight is what a message of n bytes takes from the byte bound: all of it
// for a message larger than the bound, which must still pass alone.
func (g *tenantGate) weight(n int64) int64 { return min(n, g.maxBytes) }

// tryAcquire takes a token without waiting; it fails when others wait.
func (g *tenantGate) tryAcquire(n int64) bool {
	if g.messages != nil && !g.messages.TryAcquire(1) {
		return false
	}
	if g.bytes != nil && !g.bytes.TryAcquire(g.weight(n)) {
		if g.messages != nil {
			g.messages.Release(1)
		}
		return false
	}
	return true
}

func (g *tenantGate) acquire(ctx context.Context, n int64) error {
	if g.messages != nil {
		if err := g.messages.Acquire(ctx, 1); err != nil {
			return err
		}
	}
	if g.bytes != nil {
		if err := g.bytes.Acquire(ctx, g.weight(n)); err != nil {
			if g.messages != nil {
				g.messages.Release(1)
			}
			return err
		}
	}
	return nil
}

func (g *tenantGate) release(n int64) {
	if g.bytes != nil {
		g.bytes.Release(g.weight(n))
	}
	if g.messages != nil {
		g.messages.Release(1)
	}
}
