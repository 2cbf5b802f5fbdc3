// Package logtest is a log sink for ingress tests: safe for the goroutines
// that log into it, and one a test can wait on until an expected line appears.
package logtest

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// safety bounds a wait so that a log line that never comes fails the test
// instead of hanging it; no test waits for it to pass.
const safety = 30 * time.Second

// Buffer collects what is logged into it. The zero value is ready to use.
type Buffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
	return b.buf.Write(p)
}

// String returns everything logged so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// WaitFor returns once the log contains s, and fails t if it does not
// within 30 s.
func (b *Buffer) WaitFor(t testing.TB, s string) {
	t.Helper()
	if !b.wait(safety, contains(s)) {
		t.Fatalf("log never contained %q:\n%s", s, b.String())
	}
}

// WaitForLine returns once one line of the log contains every part, and
// fails t if none does within 30 s.
func (b *Buffer) WaitForLine(t testing.TB, parts ...string) {
	t.Helper()
	if !b.wait(safety, lineWith(parts...)) {
		t.Fatalf("no log line contains %q:\n%s", parts, b.String())
	}
}

// wait reports whether match holds for the log within the bound, asking
// again after every write rather than polling.
func (b *Buffer) wait(within time.Duration, match func(log string) bool) bool {
	deadline := time.After(within)
	for {
		b.mu.Lock()
		if match(b.buf.String()) {
			b.mu.Unlock()
			return true
		}
		if b.changed == nil {
			b.changed = make(chan struct{})
		}
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			return false
		}
	}
}

func contains(s string) func(string) bool {
	return func(log string) bool { return strings.Contains(log, s) }
}

func lineWith(parts ...string) func(string) bool {
	return func(log string) bool {
		for line := range strings.Lines(log) {
			found := true
			for _, p := range parts {
				found = found && strings.Contains(line, p)
			}
			if found {
				return true
			}
		}
		return false
	}
}
