package mqttbridge

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/metrics"
)

func TestLimitsDefaults(t *testing.T) {
	got := Limits{}.withDefaults()
	want := Limits{
		ConnectionMessagesPerSecond: 100, DeviceBytesPerSecond: 512 << 10, DeviceStatePerSecond: 1,
		MaxThrottleDelay: time.Second, TenantMaxOutstanding: 1000, TenantMaxOutstandingBytes: 64 << 20,
		TenantMaxWait: forwardTimeout,
	}
	if got != want {
		t.Errorf("Limits{}.withDefaults() = %+v, want IoT Core's %+v", got, want)
	}
	off := Limits{ConnectionMessagesPerSecond: -1, MaxThrottleDelay: -1}.withDefaults()
	if off.ConnectionMessagesPerSecond != -1 || off.MaxThrottleDelay != -1 {
		t.Errorf("negative values were replaced: %+v", off)
	}
}

func TestLimitsValidate(t *testing.T) {
	tests := []struct {
		name string
		l    Limits
		ok   bool
	}{
		{"zero", Limits{}, true},
		{"off", Limits{ConnectionMessagesPerSecond: -1, DeviceBytesPerSecond: -1, DeviceStatePerSecond: -1}, true},
		{"NaN", Limits{DeviceStatePerSecond: math.NaN()}, false},
		{"Inf", Limits{DeviceBytesPerSecond: math.Inf(1)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.l.validate(); (err == nil) != tt.ok {
				t.Errorf("validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// msg is one publish in a reserve sequence: at offset from the start, and
// what reserve must answer.
type msg struct {
	at    time.Duration
	kind  iotcore.TopicKind
	size  int
	delay time.Duration
	limit string
	ok    bool
}

func TestReserve(t *testing.T) {
	const maxDelay = time.Second
	tests := []struct {
		name   string
		limits Limits
		msgs   []msg
	}{
		{"a second's worth of messages passes at once", Limits{ConnectionMessagesPerSecond: 3}, []msg{
			{ok: true}, {ok: true}, {ok: true},
			{delay: time.Second / 3, limit: metrics.LimitConnectionMessages, ok: true},
		}},
		{"tokens refill with time", Limits{ConnectionMessagesPerSecond: 2}, []msg{
			{ok: true}, {ok: true},
			{at: time.Second, ok: true}, {at: time.Second, ok: true},
		}},
		{"beyond the bound nothing is taken", Limits{ConnectionMessagesPerSecond: 1}, []msg{
			{ok: true},
			{delay: time.Second, limit: metrics.LimitConnectionMessages, ok: true}, // waits a second: at the bound
			{delay: 2 * time.Second, limit: metrics.LimitConnectionMessages},       // refused, takes nothing
			{at: time.Second, delay: time.Second, limit: metrics.LimitConnectionMessages, ok: true},
		}},
		{"state once a second", Limits{DeviceStatePerSecond: 1}, []msg{
			{kind: iotcore.State, ok: true},
			{kind: iotcore.Events, ok: true}, // telemetry is not state
			{at: time.Second / 2, kind: iotcore.State, delay: time.Second / 2, limit: metrics.LimitDeviceState, ok: true},
		}},
		{"bytes per device", Limits{DeviceBytesPerSecond: 512 << 10}, []msg{
			{size: 256 << 10, ok: true}, {size: 256 << 10, ok: true},
			{size: 128 << 10, delay: time.Second / 4, limit: metrics.LimitDeviceBytes, ok: true},
		}},
		{"a byte rate below one packet still lets a packet through", Limits{DeviceBytesPerSecond: 1000}, []msg{
			{size: 200 << 10, ok: true},
			{size: 200 << 10, delay: time.Duration(float64(400<<10-maxPacketSize) / 1000 * float64(time.Second)), limit: metrics.LimitDeviceBytes},
		}},
		{"the furthest limit is the one reported", Limits{ConnectionMessagesPerSecond: 10, DeviceStatePerSecond: 1}, []msg{
			{kind: iotcore.State, ok: true},
			{kind: iotcore.State, delay: time.Second, limit: metrics.LimitDeviceState, ok: true},
		}},
		{"limits off", Limits{ConnectionMessagesPerSecond: -1, DeviceBytesPerSecond: -1, DeviceStatePerSecond: -1}, []msg{
			{kind: iotcore.State, size: 256 << 10, ok: true}, {kind: iotcore.State, size: 256 << 10, ok: true},
			{kind: iotcore.State, size: 256 << 10, ok: true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newRateLimitHook(tt.limits, &deviceTable{}, &recordingDisconnector{}, nil, discard)
			l := h.limits
			c := &connLimits{messages: newLimiter(l.ConnectionMessagesPerSecond, 1), device: h.acquireDevice(devicePath("dev1"))}
			start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			for i, m := range tt.msgs {
				delay, limit, ok := c.reserve(start.Add(m.at), m.kind, m.size, maxDelay)
				if delay != m.delay || limit != m.limit || ok != m.ok {
					t.Errorf("message %d (%+v): reserve = %v, %q, %v; want %v, %q, %v", i, m, delay, limit, ok, m.delay, m.limit, m.ok)
				}
			}
		})
	}
}

// A device's buckets outlive its connection until they are full again, so
// reconnecting does not refill them.
func TestDeviceBucketsOutliveConnections(t *testing.T) {
	clk := NewFakeClock()
	h := newRateLimitHook(Limits{DeviceStatePerSecond: 1}, &deviceTable{}, &recordingDisconnector{}, nil, discard)
	h.clock = clk
	dp := devicePath("dev1")

	d := h.acquireDevice(dp)
	if r := d.state.ReserveN(clk.Now(), 1); r.DelayFrom(clk.Now()) != 0 {
		t.Fatal("first state update delayed")
	}
	h.releaseDevice(dp, d)
	if again := h.acquireDevice(dp); again != d {
		t.Fatal("reconnecting device got fresh buckets while its state bucket was empty")
	}
	h.releaseDevice(dp, d)

	clk.Advance(time.Second)
	other := h.acquireDevice(devicePath("dev2"))
	h.releaseDevice(devicePath("dev2"), other) // full: forgotten at once
	h.mu.Lock()
	h.sweepLocked(clk.Now())
	n := len(h.devs)
	h.mu.Unlock()
	if n != 0 {
		t.Errorf("%d device entries after their buckets refilled, want 0", n)
	}
}

func TestTenantGate(t *testing.T) {
	t.Run("messages", func(t *testing.T) {
		g := newTenantGate(2, 1<<20)
		if !g.tryAcquire(1) || !g.tryAcquire(1) {
			t.Fatal("two tokens of two not granted")
		}
		if g.tryAcquire(1) {
			t.Fatal("third token granted")
		}
		got := make(chan error, 1)
		go func() { got <- g.acquire(context.Background(), 1) }()
		g.release(1)
		if err := <-got; err != nil {
			t.Fatalf("waiter after a release: %v", err)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		g := newTenantGate(100, 100)
		if !g.tryAcquire(60) {
			t.Fatal("60 of 100 bytes not granted")
		}
		if g.tryAcquire(60) {
			t.Fatal("120 of 100 bytes granted")
		}
		g.release(60)
		if !g.tryAcquire(500) {
			t.Fatal("a message larger than the whole bound is not let through alone")
		}
		if g.tryAcquire(1) {
			t.Fatal("granted beside a message that takes the whole bound")
		}
	})
	t.Run("waiting gives up with the context", func(t *testing.T) {
		g := newTenantGate(1, -1)
		if !g.tryAcquire(0) {
			t.Fatal("first token not granted")
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := g.acquire(ctx, 0); err == nil {
			t.Fatal("acquired a token that is held, with a done context")
		}
		g.release(0)
		if !g.tryAcquire(0) {
			t.Fatal("a failed wait kept a token")
		}
	})
}
