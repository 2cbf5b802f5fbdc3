// Package emulators starts, in process, the local stand-ins for the GCP services
// iotpipe uses (Pub/Sub, Bigtable, GCS, the BigQuery Storage Write API, and a
// DuckDB file as the warehouse), and provisions on them what Terraform creates
// in the cloud.
package emulators

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"cloud.google.com/go/bigtable/bttest"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"google.golang.org/grpc"
)

// Config says where each emulator listens. A port of 0 picks a free port.
type Config struct {
	Host          string // default "127.0.0.1"
	PubsubPort    int    // default 8085
	BigtablePort  int    // default 8086
	GCSPort       int    // default 4443
	WarehousePath string // DuckDB database file; "" means <os.TempDir()>/iotpipe-<random>/warehouse.duckdb

	// BigQueryPort is the BigQuery Storage Write API fake's port. No
	// Google tool looks for one, so there is no conventional port: the
	// default 0 picks a free one (see Emulators.BigQueryWriteAddr).
	BigQueryPort int
}

// DefaultConfig returns the ports the Google emulators and fake-gcs-server use
// by convention, so tools configured for them work unchanged.
func DefaultConfig() Config {
	return Config{
		Host:         "127.0.0.1",
		PubsubPort:   8085,
		BigtablePort: 8086,
		GCSPort:      4443,
	}
}

// RegisterFlags binds c's fields to flags on fs; c's current values are the defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Host, "emulator_host", c.Host, "interface the emulators listen on")
	fs.IntVar(&c.PubsubPort, "pubsub_port", c.PubsubPort, "Pub/Sub emulator port (0 picks a free port)")
	fs.IntVar(&c.BigtablePort, "bigtable_port", c.BigtablePort, "Bigtable emulator port (0 picks a free port)")
	fs.IntVar(&c.GCSPort, "gcs_port", c.GCSPort, "GCS emulator port (0 picks a free port)")
	fs.IntVar(&c.BigQueryPort, "bigquery_port", c.BigQueryPort, "BigQuery Storage Write API emulator port (0 picks a free port)")
	fs.StringVar(&c.WarehousePath, "warehouse", c.WarehousePath, `DuckDB warehouse file ("" means a new file in a temporary directory, removed on exit)`)
}

// Emulators is a running set of emulators. Close stops them.
type Emulators struct {
	PubsubAddr, BigtableAddr, GCSAddr string // host:port actually bound
	GCSURL                            string // plain HTTP base URL of the GCS emulator, e.g. http://127.0.0.1:4443
	WarehousePath                     string

	// BigQueryWriteAddr is the BigQuery Storage Write API fake's host:port:
	// warehousesink.Config.BigQueryEmulator, or the variable
	// warehousesink.BigQueryEmulatorHostEnv. Env leaves it out because no
	// Google client library reads it.
	BigQueryWriteAddr string

	Pubsub   *pstest.Server
	Bigtable *bttest.Server
	GCS      *fakestorage.Server
	// BigQueryWrite holds the warehouse tables (see Resources.BigQueryDataset)
	// and the rows appended to them.
	BigQueryWrite *BigQueryWriteServer

	faults     writeFaults
	pubsubAcks atomic.Int64

	bigtableListener net.Listener
	gcsHTTP          *http.Server
	warehouseTmpDir  string // removed on Close; set only when Start chose the warehouse path

	closeOnce sync.Once
	closeErr  error
}

// StartForTest starts every emulator on free ports, with the warehouse in
// tb's temporary directory, points this process's Google clients at them
// for the rest of tb (t.Setenv), and closes them when tb ends.
func StartForTest(tb testing.TB) *Emulators {
	tb.Helper()
	e, err := Start(Config{WarehousePath: filepath.Join(tb.TempDir(), "w.duckdb")})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() })
	for k, v := range e.Env() {
		tb.Setenv(k, v)
	}
	return e
}

// Start starts every emulator and checks that the warehouse file can be opened.
// On error nothing is left running.
func Start(cfg Config) (_ *Emulators, err error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	e := &Emulators{}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()

	if err := e.startBigtable(cfg); err != nil {
		return nil, err
	}
	if err := e.startPubsub(cfg); err != nil {
		return nil, err
	}
	if err := e.startGCS(cfg); err != nil {
		return nil, err
	}
	if err := e.startBigQueryWrite(cfg); err != nil {
		return nil, err
	}
	if err := e.initWarehouse(cfg.WarehousePath); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *Emulators) startBigtable(cfg Config) error {
	l, err := listen("bigtable", "bigtable_port", cfg.Host, cfg.BigtablePort)
	if err != nil {
		return err
	}
	e.bigtableListener = l
	// NewServerWithListener cannot fail; it returns an error only for API symmetry.
	srv, err := bttest.NewServerWithListener(l,
		grpc.ChainUnaryInterceptor(recoverUnary, e.faults.unary),
		grpc.ChainStreamInterceptor(recoverStream, e.faults.stream),
	)
	if err != nil {
		return fmt.Errorf("bigtable emulator: %w", err)
	}
	e.Bigtable = srv
	e.BigtableAddr = advertised(l.Addr())
	return nil
}

func (e *Emulators) startPubsub(cfg Config) (err error) {
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.PubsubPort))
	if cfg.PubsubPort != 0 {
		// pstest listens itself and panics when it cannot; probe first so the
		// usual case (port taken) gets the same clear error as the others.
		l, err := listen("pubsub", "pubsub_port", cfg.Host, cfg.PubsubPort)
		if err != nil {
			return err
		}
		l.Close()
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("pubsub emulator: listen %s: %v; pass -pubsub_port to choose another port (0 picks a free one)", addr, r)
		}
	}()
	e.Pubsub = pstest.NewServerWithAddress(addr, pstest.ServerReactorOption{FuncName: "Acknowledge", Reactor: ackCounter{&e.pubsubAcks}})
	tcp, err := net.ResolveTCPAddr("tcp", e.Pubsub.Addr)
	if err != nil {
		return fmt.Errorf("pubsub emulator: bound address %q: %w", e.Pubsub.Addr, err)
	}
	e.PubsubAddr = advertised(tcp)
	return nil
}

func (e *Emulators) startGCS(cfg Config) error {
	l, err := listen("gcs", "gcs_port", cfg.Host, cfg.GCSPort)
	if err != nil {
		return err
	}
	addr := advertised(l.Addr())
	url := "http://" + addr
	// We own the listener so that the bound port is known before the server is
	// built: PublicHost must equal the Host header clients send, or the Go
	// client's XML-API reads (GET /bucket/object) find no route.
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		NoListener:  true,
		Scheme:      "http",
		PublicHost:  addr,
		ExternalURL: url,
	})
	if err != nil {
		l.Close()
		return fmt.Errorf("gcs emulator: %w", err)
	}
	e.GCS = srv
	e.GCSAddr = addr
	e.GCSURL = url
	e.gcsHTTP = &http.Server{Handler: srv.HTTPHandler()}
	go e.gcsHTTP.Serve(l) // returns http.ErrServerClosed on Close
	return nil
}

func (e *Emulators) startBigQueryWrite(cfg Config) error {
	l, err := listen("bigquery", "bigquery_port", cfg.Host, cfg.BigQueryPort)
	if err != nil {
		return err
	}
	e.BigQueryWrite = NewBigQueryWriteServer(l)
	e.BigQueryWriteAddr = e.BigQueryWrite.Addr
	return nil
}

// Env returns the variables that point Google's client libraries at the emulators.
func (e *Emulators) Env() map[string]string {
	return map[string]string{
		// Both are host:port without scheme: pubsub passes it to option.WithEndpoint,
		// bigtable dials it (stripping a scheme if present).
		"PUBSUB_EMULATOR_HOST":   e.PubsubAddr,
		"BIGTABLE_EMULATOR_HOST": e.BigtableAddr,
		// cloud.google.com/go/storage accepts host:port (assumes http) or a full
		// URL; other languages' clients want the scheme, so give it.
		"STORAGE_EMULATOR_HOST": e.GCSURL,
	}
}

// Close stops every emulator. It is safe to call more than once.
func (e *Emulators) Close() error {
	e.closeOnce.Do(func() {
		var errs []error
		if e.BigQueryWrite != nil {
			e.BigQueryWrite.Close()
		}
		if e.gcsHTTP != nil {
			errs = append(errs, e.gcsHTTP.Close())
		}
		if e.GCS != nil {
			e.GCS.Stop()
		}
		if e.Pubsub != nil {
			errs = append(errs, e.Pubsub.Close())
		}
		if e.bigtableListener != nil {
			// bttest never closes a listener it was given, and its Close
			// (grpc.Server.Stop) waits for Serve to return, which happens
			// only once the listener is closed: close it first or hang.
			if err := e.bigtableListener.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
		if e.Bigtable != nil {
			e.Bigtable.Close()
		}
		if e.warehouseTmpDir != "" {
			errs = append(errs, os.RemoveAll(e.warehouseTmpDir))
		}
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}

// listen binds host:port and turns "address already in use" into an error
// that names the flag to change.
func listen(service, portFlag, host string, port int) (net.Listener, error) {
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%s emulator: listen %s: %w; pass -%s to choose another port (0 picks a free one)",
			service, addr, syscall.EADDRINUSE, portFlag)
	}
	if err != nil {
		return nil, fmt.Errorf("%s emulator: %w", service, err)
	}
	return l, nil
}

// advertised is the host:port clients should dial: a listener on the
// unspecified address (0.0.0.0, ::) is reached through loopback.
func advertised(a net.Addr) string {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a.String()
	}
	host := tcp.IP.String()
	if tcp.IP == nil || tcp.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(tcp.Port))
}

// PubsubAcks counts the ack ids the Pub/Sub emulator was asked to
// acknowledge, over all subscriptions: a cheap progress signal for load
// tests, where listing every message would cost more than the work.
func (e *Emulators) PubsubAcks() int64 { return e.pubsubAcks.Load() }

// ackCounter is a pstest reactor that counts ack ids and lets the
// emulator handle the call.
type ackCounter struct{ n *atomic.Int64 }

func (a ackCounter) React(req any) (bool, any, error) {
	if r, ok := req.(*pubsubpb.AcknowledgeRequest); ok {
		a.n.Add(int64(len(r.GetAckIds())))
	}
	return false, nil, nil
}
