package logtest

import (
	"io"
	"testing"
	"time"
)

// TestWait: a wait ends on the write that satisfies it, whether that write
// came before the wait or during it, and not on one that does not.
func TestWait(t *testing.T) {
	const never = 50 * time.Millisecond // the bound for waits expected to fail
	tests := []struct {
		name          string
		before, later string // logged before the wait starts, and while it runs
		match         func(string) bool
		want          bool
	}{
		{"already logged", "level=INFO msg=up\n", "", contains("msg=up"), true},
		{"logged while waiting", "level=INFO msg=starting\n", "level=INFO msg=up\n", contains("msg=up"), true},
		{"never logged", "level=INFO msg=starting\n", "level=INFO msg=other\n", contains("msg=up"), false},
		{"one line has every part", "msg=a device=dev1\n", "msg=ended device=dev2 cleared=false\n", lineWith("msg=ended", "device=dev2"), true},
		{"parts on different lines", "msg=ended device=dev1\n", "msg=started device=dev2\n", lineWith("msg=ended", "device=dev2"), false},
		{"no parts: any line will do", "", "msg=x\n", lineWith(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Buffer
			io.WriteString(&b, tt.before)
			if tt.later != "" {
				go io.WriteString(&b, tt.later)
			}
			within := safety
			if !tt.want {
				within = never
			}
			if got := b.wait(within, tt.match); got != tt.want {
				t.Errorf("wait = %v, want %v; log:\n%s", got, tt.want, b.String())
			}
		})
	}
}

// The exported waits return on a write made after they start.
func TestWaitForAndWaitForLine(t *testing.T) {
	var b Buffer
	go io.WriteString(&b, "level=INFO msg=\"connection ended\" device=dev1\n")
	b.WaitFor(t, "connection ended")
	b.WaitForLine(t, `msg="connection ended"`, "device=dev1")
	if got, want := b.String(), "level=INFO msg=\"connection ended\" device=dev1\n"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
}
