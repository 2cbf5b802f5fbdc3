package mqttbridge

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// connectTimeout bounds the TLS handshake and the CONNECT packet of a new
// TLS connection. mochi sets no deadline until after CONNECT, so without it
// a client that opens a connection and sends nothing holds a goroutine and
// a file descriptor for good; a real device needs well under a second.
const connectTimeout = 10 * time.Second

// validateExtensions checks the fields of Config that tls.go and
// ratelimit.go own; validateFor calls it.
func (cfg Config) validateExtensions(auth Authenticator) error {
	if err := cfg.Limits.validate(); err != nil {
		return err
	}
	if cfg.TLSAddr == "" {
		if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
			return errors.New("mqttbridge: config: TLSCertFile or TLSKeyFile without TLSAddr: no TLS listener to use them")
		}
		return nil
	}
	if cfg.TLSCertFile == "" || cfg.TLSKeyFile == "" {
		return fmt.Errorf("mqttbridge: config: TLSAddr %q needs both TLSCertFile and TLSKeyFile", cfg.TLSAddr)
	}
	if _, _, err := net.SplitHostPort(cfg.TLSAddr); err != nil {
		return fmt.Errorf("mqttbridge: config: TLSAddr: %w", err)
	}
	// TLS hides the token from eavesdroppers but does not authenticate the
	// device: without an Authenticator the port must stay local as well.
	if unauthenticated(auth) {
		if err := requireLoopback(cfg.TLSAddr); err != nil {
			return fmt.Errorf("mqttbridge: config: TLSAddr: %w", err)
		}
	}
	return nil
}

// tlsListenerFor loads the bridge's certificate and returns its TLS
// listener, or nil when cfg has no TLSAddr. The files are read once: a
// renewed certificate takes a restart, as with most brokers.
func tlsListenerFor(cfg Config) (*tlsListener, error) {
	if cfg.TLSAddr == "" {
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("mqttbridge: TLS certificate %s, key %s: %w", cfg.TLSCertFile, cfg.TLSKeyFile, err)
	}
	return newTLSListener(cfg.TLSAddr, &tls.Config{
		Certificates: []tls.Certificate{pair},
		MinVersion:   tls.VersionTLS12, // IoT Core's minimum
	}), nil
}

// tlsListener is a tcpListener whose connections speak TLS: the same
// stop-accepting and close-everything behaviour, so that Close drains both
// listeners alike.
type tlsListener struct {
	*tcpListener
	config *tls.Config
}

func newTLSListener(address string, config *tls.Config) *tlsListener {
	return &tlsListener{tcpListener: newTCPListener("mqtt-tls", address), config: config}
}

func (l *tlsListener) Protocol() string { return "tls" }

// Init binds the address; the handshake runs on each connection's own
// goroutine when mochi first reads from it.
func (l *tlsListener) Init(log *slog.Logger) error {
	if err := l.tcpListener.Init(log); err != nil {
		return err
	}
	l.ln = tls.NewListener(deadlineListener{l.ln}, l.config)
	return nil
}

// deadlineListener gives each accepted connection connectTimeout to
// complete its handshake and CONNECT; mochi replaces the deadline with the
// keepalive's once the CONNECT is read.
type deadlineListener struct{ net.Listener }

func (l deadlineListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err // tcpListener.Serve takes any error for closed
		}
		if err := c.SetDeadline(time.Now().Add(connectTimeout)); err != nil {
			c.Close() // already gone
			continue
		}
		return c, nil
	}
}

// listeners returns the bridge's listeners: the plain one, and the TLS one
// when configured.
func (b *Bridge) listeners() []*tcpListener {
	if b.tls == nil {
		return []*tcpListener{b.listener}
	}
	return []*tcpListener{b.listener, b.tls.tcpListener}
}

// TLSAddr returns the address of the TLS listener (after Start, the bound
// one), or "" when the bridge has none.
func (b *Bridge) TLSAddr() string {
	if b.tls == nil {
		return ""
	}
	return b.tls.Address()
}
