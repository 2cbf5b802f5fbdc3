package mqttbridge

import (
	"sync"
	"time"
)

// FakeClock is a clock for the rate limits that moves only when a test
// advances it. Armed receives the duration of every timer started on it,
// which tells a test that a publish is now waiting.
type FakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	armed  chan time.Duration
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func NewFakeClock() *FakeClock {
	return &FakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), armed: make(chan time.Duration, 64)}
}

func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *FakeClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := &fakeTimer{ch: make(chan time.Time, 1)}
	c.mu.Lock()
	t.at = c.now.Add(d)
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	c.armed <- d
	return t.ch, func() bool { return c.stop(t) }
}

func (c *FakeClock) stop(t *fakeTimer) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.timers {
		if x == t {
			c.timers = append(c.timers[:i], c.timers[i+1:]...)
			return true
		}
	}
	return false
}

// Armed receives the duration of each timer as it is started.
func (c *FakeClock) Armed() <-chan time.Duration { return c.armed }

// Advance moves the clock on by d and fires the timers that are due.
func (c *FakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
			continue
		}
		t.ch <- c.now
	}
	c.timers = kept
}

// SetClock makes b's rate limits run on c. Call it before Start.
func SetClock(b *Bridge, c *FakeClock) { b.limits.clock = c }
