package mqttbridge

import (
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// tcpListener is a mochi listener that, unlike listeners.TCP, can stop
// accepting before clients are disconnected (so Close can drain publishes
// with no new devices arriving) and closes every connection it accepted,
// including those still between accept and CONNACK, which mochi's client
// list does not know yet.
type tcpListener struct {
	id      string
	address string
	ln      net.Listener
	log     *slog.Logger

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup // connection goroutines
}

var _ listeners.Listener = (*tcpListener)(nil)

func newTCPListener(id, address string) *tcpListener {
	return &tcpListener{id: id, address: address, conns: make(map[net.Conn]struct{})}
}

func (l *tcpListener) ID() string       { return l.id }
func (l *tcpListener) Protocol() string { return "tcp" }

// Address returns the bound address once Init has run.
func (l *tcpListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

// Init binds the address; mochi calls it from AddListener.
func (l *tcpListener) Init(log *slog.Logger) error {
	l.log = log
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", l.address, err)
	}
	l.ln = ln
	return nil
}

func (l *tcpListener) Serve(establish listeners.EstablishFn) {
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			return // closed
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			conn.Close()
			return
		}
		l.conns[conn] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			if err := establish(l.id, conn); err != nil {
				l.log.Debug("connection ended", "remote", conn.RemoteAddr().String(), "error", err)
			}
			conn.Close()
			l.mu.Lock()
			delete(l.conns, conn)
			l.mu.Unlock()
		}()
	}
}

// stopAccepting closes the listening socket; established connections go on.
func (l *tcpListener) stopAccepting() {
	if l.ln != nil {
		_ = l.ln.Close()
	}
}

// Close stops accepting, lets mochi disconnect its clients politely, then
// closes whatever connections remain and waits for their goroutines.
func (l *tcpListener) Close(closeClients listeners.CloseFn) {
	l.stopAccepting()
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()

	closeClients(l.id)

	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}
