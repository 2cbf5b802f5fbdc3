package loopback

import "testing"

func TestAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:1883":   true,
		"127.9.9.9:0":      true,
		"[::1]:8080":       true,
		"localhost:8883":   true,
		":1883":            false,
		"0.0.0.0:1883":     false,
		"[::]:1883":        false,
		"10.0.0.1:1883":    false,
		"example.com:80":   false,
		"127.0.0.1":        false,
		"not an address":   false,
		"":                 false,
		"localhost.x:1883": false,
	} {
		if got := Addr(addr); got != want {
			t.Errorf("Addr(%q) = %v, want %v", addr, got, want)
		}
	}
}
