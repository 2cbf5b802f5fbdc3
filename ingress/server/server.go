// Package server assembles the device bridge: the MQTT front end, the HTTP
// device bridge, the admin API and /metrics over one registry and one Pub/Sub
// publisher, started in order and shut down in the order that loses nothing.
//
// The ingress command and the local stack (testing/stack) both run exactly
// this; they differ only in where the registry store and the publisher point
// (flags and the environment, or the emulators) and in whether devices
// authenticate.
//
// With a registry store, devices are looked up in it (and authenticate with
// JWTs against their registered keys unless Config.Auth says otherwise),
// messages are routed by the registry's notification configs, and the
// registry brings the device bus (config and commands) and the admin API.
// Without one, any device of the registry is admitted on loopback listeners
// only, and messages go to Config.EventsTopic and Config.StateTopic.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/iotpipe/iotpipe/ingress/adminapi"
	"github.com/iotpipe/iotpipe/ingress/devicebus"
	"github.com/iotpipe/iotpipe/ingress/httpbridge"
	"github.com/iotpipe/iotpipe/ingress/internal/loopback"
	"github.com/iotpipe/iotpipe/ingress/jwtauth"
	"github.com/iotpipe/iotpipe/ingress/metrics"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
)

// DefaultDrainTimeout is Config.DrainTimeout when zero: HTTP requests in
// flight wait for Pub/Sub up to httpbridge.DefaultPublishTimeout, and get a
// little more to write their answers.
const DefaultDrainTimeout = httpbridge.DefaultPublishTimeout + 5*time.Second

// startTimeout bounds reading (or creating) the registry at start.
const startTimeout = 30 * time.Second

// Config is the bridge's configuration, filled from flags in main (or by the
// local stack).
type Config struct {
	// Project, Location and Registry name the one registry whose devices
	// the bridge serves, as in their client ids
	// projects/{Project}/locations/{Location}/registries/{Registry}/devices/{id};
	// Project is also the Pub/Sub topics' project.
	Project, Location, Registry string
	// EventsTopic and StateTopic are Pub/Sub topics (ids in Project or full
	// names). Without a registry store telemetry goes to EventsTopic
	// (required) and state to StateTopic (empty: acknowledged and dropped).
	// With one, the registry's notification configs route messages, and
	// these only seed a registry that Start creates when it does not exist.
	EventsTopic, StateTopic string

	// MQTTAddr is the plain MQTT listener (mqttbridge.DefaultMQTTAddr when
	// empty); TLSAddr, when set, an MQTT over TLS listener with the PEM
	// certificate chain and key in TLSCertFile and TLSKeyFile. Port 0
	// picks a free port: see MQTTAddr and TLSAddr on Server.
	MQTTAddr, TLSAddr, TLSCertFile, TLSKeyFile string
	// HTTPAddr serves, on one listener, the HTTP device bridge, the admin
	// API (with a registry store) and /metrics; empty: none.
	HTTPAddr string
	// ExpiryGrace is how long an MQTT device stays connected after its JWT
	// expires (mqttbridge.DefaultExpiryGrace when zero).
	ExpiryGrace time.Duration
	// Limits are the MQTT rate limits and per-tenant backpressure; the zero
	// value is IoT Core's (see mqttbridge.Limits).
	Limits mqttbridge.Limits

	// Auth admits devices over MQTT and HTTP. Nil means: with a registry
	// store, JWTs checked against the devices' registered keys (jwtauth);
	// without one, mqttbridge.AllowAll, whose listeners must be loopback.
	Auth mqttbridge.Authenticator

	// Instance names this bridge among those sharing the registry and
	// FanoutTopic is the Pub/Sub topic through which they reach each
	// other's devices (see devicebus.Config); AdminToken is the bearer
	// token every admin API request must present, and without it the
	// admin API listens on loopback only. All three need a registry store
	// and are ignored without one.
	Instance, FanoutTopic, AdminToken string

	// DrainTimeout bounds the wait for HTTP requests in flight at Close;
	// DefaultDrainTimeout when zero.
	DrainTimeout time.Duration
}

// ConfigError is a Start failure that comes down to one Config field (a bad
// value, or an address that cannot be bound), so that a command can name
// the flag that set it.
type ConfigError struct {
	Field string // the Config field: "Instance", "HTTPAddr", ...
	Err   error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("server: %s: %v", e.Field, e.Err) }
func (e *ConfigError) Unwrap() error { return e.Err }

// Server is the running bridge.
type Server struct {
	cfg     Config
	log     *slog.Logger
	store   *registry.Store // nil without a registry
	pub     *publisher.Publisher
	bus     *devicebus.Bus // nil without a registry
	metrics *metrics.Metrics
	bridge  *mqttbridge.Bridge // set once it serves
	http    *http.Server       // nil without Config.HTTPAddr
	httpLn  net.Listener
	failed  chan error // the HTTP server's own failure

	closeOnce sync.Once
	closeErr  error
}

// Start assembles the bridge from cfg over store (nil: no registry) and pub,
// and starts it: it reads the registry (creating it from EventsTopic and
// StateTopic if it does not exist), starts the device bus, then the MQTT
// listeners, then the HTTP listener. Everything is built and checked before
// anything connects, so a bad Config fails without network traffic.
//
// Start takes ownership of store and pub: Close closes them last, after
// everything that uses them has drained, and a failed Start closes them
// before it returns. ctx bounds the start only; the bridge runs until Close.
// A nil logger means slog.Default().
func Start(ctx context.Context, cfg Config, store *registry.Store, pub *publisher.Publisher, logger *slog.Logger) (_ *Server, err error) {
	if logger == nil {
		logger = slog.Default()
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	s := &Server{cfg: cfg, log: logger, store: store, pub: pub, metrics: metrics.New()}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close())
		}
	}()
	if pub == nil {
		return nil, errors.New("server: nil publisher")
	}
	if cfg.DrainTimeout < 0 {
		return nil, &ConfigError{Field: "DrainTimeout", Err: fmt.Errorf("negative %v", cfg.DrainTimeout)}
	}
	if store != nil && cfg.HTTPAddr != "" && cfg.AdminToken == "" && !loopback.Addr(cfg.HTTPAddr) {
		return nil, &ConfigError{Field: "AdminToken", Err: fmt.Errorf("HTTPAddr %q is not loopback: without a token the admin API, which creates devices and their keys, would be open to anyone who reaches it", cfg.HTTPAddr)}
	}

	auth, routes := cfg.Auth, publisher.Routes{EventsTopic: cfg.EventsTopic, StateTopic: cfg.StateTopic}
	var opts []mqttbridge.Option
	if store != nil {
		if auth == nil {
			auth = jwtauth.New(store, jwtauth.Config{})
		}
		routes = publisher.Routes{Registries: store}
		s.bus, err = devicebus.New(store, devicebus.Config{Instance: cfg.Instance, FanoutTopic: cfg.FanoutTopic, Project: cfg.Project}, pub, logger)
		if err != nil {
			return nil, &ConfigError{Field: "Instance", Err: err}
		}
		opts = append(opts, mqttbridge.WithDeviceBus(s.bus))
	}
	if auth == nil {
		auth = mqttbridge.AllowAll{}
	}
	router, err := publisher.NewRouter(pub, routes)
	if err != nil {
		return nil, err
	}
	bridge, err := mqttbridge.NewWithRouter(mqttbridge.Config{
		Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry,
		EventsTopic: cfg.EventsTopic, StateTopic: cfg.StateTopic,
		MQTTAddr: cfg.MQTTAddr, TLSAddr: cfg.TLSAddr, TLSCertFile: cfg.TLSCertFile, TLSKeyFile: cfg.TLSKeyFile,
		ExpiryGrace: cfg.ExpiryGrace, Limits: cfg.Limits, Metrics: s.metrics,
	}, router, auth, logger, opts...)
	if err != nil {
		return nil, err
	}
	var handler http.Handler
	if cfg.HTTPAddr != "" {
		if handler, err = s.httpHandler(router, auth); err != nil {
			return nil, err
		}
	}

	// Everything is configured: now connect.
	if store != nil {
		sctx, cancel := context.WithTimeout(ctx, startTimeout)
		err := ensureRegistry(sctx, store, cfg, logger)
		cancel()
		if err != nil {
			return nil, err
		}
		// Before the bridge: devices may subscribe as soon as it listens.
		if err := s.bus.Start(context.WithoutCancel(ctx)); err != nil {
			return nil, err
		}
	}
	if err := bridge.Start(); err != nil {
		return nil, err
	}
	s.bridge = bridge
	if handler != nil {
		if err := s.serveHTTP(handler); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// httpHandler serves, on one listener, /metrics, the HTTP device bridge and,
// with a registry, the admin API: the two share IoT Core's /v1/projects/...
// paths, so the bridge takes its own methods and passes the rest on.
func (s *Server) httpHandler(router *publisher.Router, auth mqttbridge.Authenticator) (http.Handler, error) {
	cfg := s.cfg
	var devices httpbridge.Devices // a nil *registry.Store would be a non-nil interface
	var admin http.Handler
	if s.store != nil {
		devices = s.store
		a, err := adminapi.New(s.store, s.bus, adminapi.Config{Project: cfg.Project, Location: cfg.Location,
			Registry: cfg.Registry, Token: cfg.AdminToken}, s.log)
		if err != nil {
			return nil, err
		}
		admin = a
	}
	hb, err := httpbridge.New(httpbridge.Config{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry, Metrics: s.metrics},
		router, auth, devices, s.log)
	if err != nil {
		return nil, err
	}
	api, scrape := hb.Handler(admin), s.metrics.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			scrape.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	}), nil
}

// serveHTTP binds Config.HTTPAddr and serves handler on it in the background.
func (s *Server) serveHTTP(handler http.Handler) error {
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return &ConfigError{Field: "HTTPAddr", Err: err}
	}
	s.httpLn = ln
	s.http = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ConnState:         s.metrics.HTTPConnState,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.failed = make(chan error, 1)
	go func() {
		if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("HTTP listener stopped", "addr", ln.Addr().String(), "error", err)
			s.failed <- err
		}
	}()
	return nil
}

// MQTTAddr is the bound address of the plain MQTT listener.
func (s *Server) MQTTAddr() string { return s.bridge.Addr() }

// TLSAddr is the bound address of the MQTT over TLS listener; "" without one.
func (s *Server) TLSAddr() string { return s.bridge.TLSAddr() }

// HTTPAddr is the bound address of the HTTP listener; "" without one.
func (s *Server) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Metrics are the bridge's, served on HTTPAddr/metrics.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// Bus delivers config updates and commands to the devices connected here;
// nil without a registry store.
func (s *Server) Bus() *devicebus.Bus { return s.bus }

// Failed receives the error with which the HTTP listener stopped serving on
// its own, which leaves the bridge without its HTTP front end: a caller
// that should not run so shuts down. It never receives without an HTTP
// listener, nor after Close.
func (s *Server) Failed() <-chan error { return s.failed }

// Close shuts the bridge down in the order that loses nothing: the HTTP
// server finishes the requests in flight (for up to Config.DrainTimeout),
// the MQTT bridge drains its publishes, then the device bus, the publisher
// (flushing what it holds) and the registry store close. It returns every
// failure, each naming what failed to close; calls after the first return
// the first's result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Server) close() error {
	var errs []error
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
		if err := s.http.Shutdown(ctx); err != nil {
			s.http.Close()
			errs = append(errs, fmt.Errorf("stop HTTP server: %w", err))
		}
		cancel()
	}
	closeIf := func(what string, open bool, close func() error) {
		if !open {
			return
		}
		if err := close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", what, err))
		}
	}
	closeIf("MQTT bridge", s.bridge != nil, func() error { return s.bridge.Close() })
	closeIf("device bus", s.bus != nil, func() error { return s.bus.Close() })
	closeIf("publisher", s.pub != nil, func() error { return s.pub.Close() })
	closeIf("registry", s.store != nil, func() error { return s.store.Close() })
	return errors.Join(errs...)
}
