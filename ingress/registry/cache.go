package registry

import (
	"sync"
	"time"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
)

// DefaultCacheTTL is how long a lookup is served from memory. It bounds how
// long a change made through another Store (another bridge replica) takes to
// reach devices connecting here; changes through this Store apply at once.
const DefaultCacheTTL = 5 * time.Second

// maxCacheEntries bounds the cache, which also remembers devices that do not
// exist, so that clients trying random ids cannot grow it without limit.
const maxCacheEntries = 100_000

// cache remembers lookups, found or not found, for a TTL.
//
// A lookup that read Bigtable before a write and stores its answer after the
// write's invalidation would bring the old answer back for a whole TTL. So
// every invalidation bumps gen, and an answer is stored only if gen has not
// moved since its read began.
type cache struct {
	ttl time.Duration // <= 0: caching off
	now func() time.Time

	mu         sync.Mutex
	gen        uint64
	devices    map[iotcore.DevicePath]cacheEntry[Device]
	registries map[Path]cacheEntry[Registry]
}

type cacheEntry[T any] struct {
	v       T
	err     error // an ErrNotFound, remembered like a value
	expires time.Time
}

func newCache(ttl time.Duration, now func() time.Time) *cache {
	return &cache{
		ttl: ttl, now: now,
		devices:    make(map[iotcore.DevicePath]cacheEntry[Device]),
		registries: make(map[Path]cacheEntry[Registry]),
	}
}

// generation returns the token a lookup passes to put once it has read.
func (c *cache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *cache) device(dp iotcore.DevicePath) (cacheEntry[Device], bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.devices[dp]
	return e, ok && c.now().Before(e.expires)
}

func (c *cache) putDevice(gen uint64, dp iotcore.DevicePath, d Device, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ttl <= 0 || gen != c.gen {
		return
	}
	put(c.devices, dp, cacheEntry[Device]{v: d, err: err, expires: c.now().Add(c.ttl)}, c.now())
}

func (c *cache) registry(p Path) (cacheEntry[Registry], bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.registries[p]
	return e, ok && c.now().Before(e.expires)
}

func (c *cache) putRegistry(gen uint64, p Path, r Registry, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ttl <= 0 || gen != c.gen {
		return
	}
	put(c.registries, p, cacheEntry[Registry]{v: r, err: err, expires: c.now().Add(c.ttl)}, c.now())
}

// put stores e, first making room: expired entries go, and if the map is
// still full, arbitrary ones (they are only a cache).
func put[K comparable, T any](m map[K]cacheEntry[T], k K, e cacheEntry[T], now time.Time) {
	if _, ok := m[k]; !ok && len(m) >= maxCacheEntries {
		for k, old := range m {
			if !now.Before(old.expires) {
				delete(m, k)
			}
		}
		for k := range m {
			if len(m) < maxCacheEntries {
				break
			}
			delete(m, k)
		}
	}
	m[k] = e
}

func (c *cache) invalidateDevice(dp iotcore.DevicePath) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.devices, dp)
}

func (c *cache) invalidateRegistry(p Path) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.registries, p)
}
