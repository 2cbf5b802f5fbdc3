// Package loopback tells loopback addresses apart: where a listener that
// admits anyone may listen, and where a request from the same machine comes
// from.
package loopback

import "net"

// Addr reports whether hostport's host is localhost or a loopback IP. An
// empty host (every interface) is not, nor is anything that is not
// host:port.
func Addr(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
