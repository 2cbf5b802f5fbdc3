package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/iotpipe/iotpipe/ingress/adminapi"
	"github.com/iotpipe/iotpipe/ingress/devicebus"
	"github.com/iotpipe/iotpipe/ingress/httpbridge"
	"github.com/iotpipe/iotpipe/ingress/jwtauth"
	"github.com/iotpipe/iotpipe/ingress/metrics"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
)

// Bounds on waiting for the network at start and at shutdown. HTTP requests
// in flight wait for Pub/Sub up to httpbridge.DefaultPublishTimeout.
const (
	startTimeout        = 30 * time.Second
	httpShutdownTimeout = httpbridge.DefaultPublishTimeout + 5*time.Second
)

// serve builds the bridge from o, serves until ctx is done, then shuts down:
// the HTTP server (requests in flight finish), the MQTT bridge (publishes in
// flight are confirmed and acknowledged), the device bus, the publisher and
// the registry, in that order.
func serve(ctx context.Context, o options, logger *slog.Logger) (err error) {
	var closers []func() error
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			err = errors.Join(err, closers[i]())
		}
	}()

	// The clients must outlive ctx: the shutdown flushes through them after
	// the signal. Neither dials before its first call, so a configuration
	// error below still fails before any network traffic.
	var (
		store  *registry.Store
		auth   mqttbridge.Authenticator = mqttbridge.AllowAll{}
		routes                          = publisher.Routes{EventsTopic: o.bridge.EventsTopic, StateTopic: o.bridge.StateTopic}
		bus    *devicebus.Bus
		opts   []mqttbridge.Option
	)
	if o.withRegistry() {
		store, err = registry.New(context.WithoutCancel(ctx), registry.Config{Project: o.btProject, Instance: o.btInstance})
		if err != nil {
			return err
		}
		closers = append(closers, closer("registry", store.Close))
	}
	pub, err := publisher.New(context.WithoutCancel(ctx), o.bridge.Project)
	if err != nil {
		return err
	}
	closers = append(closers, closer("publisher", pub.Close))
	if store != nil {
		auth = jwtauth.New(store, jwtauth.Config{})
		routes = publisher.Routes{Registries: store}
		bus, err = devicebus.New(store, devicebus.Config{Instance: o.instance, FanoutTopic: o.c2dTopic, Project: o.bridge.Project}, pub, logger)
		if err != nil {
			return fmt.Errorf("-instance %q, -c2d_topic %q: %w", o.instance, o.c2dTopic, err)
		}
		closers = append(closers, closer("device bus", bus.Close))
		opts = append(opts, mqttbridge.WithDeviceBus(bus))
	}
	router, err := publisher.NewRouter(pub, routes)
	if err != nil {
		return err
	}
	var m *metrics.Metrics
	if o.httpAddr != "" {
		m = metrics.New() // served on /metrics, so only with an HTTP listener
	}
	cfg := o.bridge
	cfg.Metrics = m
	bridge, err := mqttbridge.NewWithRouter(cfg, router, auth, logger, opts...)
	if err != nil {
		return err
	}
	var handler http.Handler
	if o.httpAddr != "" {
		if handler, err = httpHandler(o, router, auth, store, bus, m, logger); err != nil {
			return err
		}
	}

	// Everything is configured: now connect.
	if store != nil {
		sctx, cancel := context.WithTimeout(ctx, startTimeout)
		err := ensureRegistry(sctx, store, o.bridge, logger)
		cancel()
		if err != nil {
			return err
		}
	}
	if bus != nil {
		// Before the bridge: devices may subscribe as soon as it listens.
		if err := bus.Start(context.WithoutCancel(ctx)); err != nil {
			return err
		}
	}
	if err := bridge.Start(); err != nil {
		return err
	}
	closers = append(closers, closer("MQTT bridge", bridge.Close))

	var srv *http.Server
	serveErr := make(chan error, 1)
	httpAddr := ""
	if handler != nil {
		ln, err := net.Listen("tcp", o.httpAddr)
		if err != nil {
			return fmt.Errorf("-http_addr: %w", err)
		}
		httpAddr = ln.Addr().String()
		srv = &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ConnState:         m.HTTPConnState,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		}
		go func() { serveErr <- srv.Serve(ln) }()
		// Runs first among the closers: no new request reaches a bridge
		// that is closing.
		closers = append(closers, func() error {
			sctx, cancel := context.WithTimeout(context.Background(), httpShutdownTimeout)
			defer cancel()
			if err := srv.Shutdown(sctx); err != nil {
				srv.Close()
				return fmt.Errorf("stop HTTP server: %w", err)
			}
			return nil
		})
	}

	logger.Info("ingress listening", "mqtt_addr", bridge.Addr(), "tls_addr", bridge.TLSAddr(), "http_addr", httpAddr,
		"project", o.bridge.Project, "location", o.bridge.Location, "registry", o.bridge.Registry,
		"device_registry", registryName(o), "instance", busInstance(bus), "c2d_topic", o.c2dTopic,
		"events_topic", o.bridge.EventsTopic, "state_topic", o.bridge.StateTopic,
		"pubsub_emulator", os.Getenv("PUBSUB_EMULATOR_HOST"), "bigtable_emulator", os.Getenv("BIGTABLE_EMULATOR_HOST"))

	select {
	case <-ctx.Done():
	case serr := <-serveErr:
		logger.Error("HTTP server failed; shutting down", "error", serr)
		err = fmt.Errorf("HTTP server: %w", serr)
	}
	logger.Info("ingress shutting down: draining in-flight messages")
	for i := len(closers) - 1; i >= 0; i-- {
		err = errors.Join(err, closers[i]())
	}
	closers = nil
	if err != nil {
		return err
	}
	logger.Info("ingress stopped")
	return nil
}

// httpHandler serves, on one listener, /metrics, the HTTP device bridge and,
// with a registry, the admin API: the two share IoT Core's /v1/projects/...
// paths, so the bridge takes its own methods and passes the rest on.
func httpHandler(o options, router *publisher.Router, auth mqttbridge.Authenticator, store *registry.Store,
	bus *devicebus.Bus, m *metrics.Metrics, logger *slog.Logger) (http.Handler, error) {
	hcfg := httpbridge.Config{Project: o.bridge.Project, Location: o.bridge.Location, Registry: o.bridge.Registry}
	var devices httpbridge.Devices // a nil *registry.Store would be a non-nil interface
	var admin http.Handler
	if store != nil {
		devices = store
		a, err := adminapi.New(store, bus, adminapi.Config{Project: o.bridge.Project, Location: o.bridge.Location,
			Registry: o.bridge.Registry, Token: o.adminToken}, logger)
		if err != nil {
			return nil, err
		}
		admin = a
	}
	hb, err := httpbridge.New(hcfg, router, auth, devices, logger)
	if err != nil {
		return nil, err
	}
	api, scrape := hb.Handler(admin), m.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			scrape.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	}), nil
}

// ensureRegistry makes sure the bridge's registry exists, creating it with
// -events_topic and -state_topic as its notification configs if it does not
// and they are given. An existing registry is left as it is: its configs,
// which the admin API owns, are what routes messages.
func ensureRegistry(ctx context.Context, store *registry.Store, cfg mqttbridge.Config, logger *slog.Logger) error {
	p := registry.Path{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry}
	want := registry.Registry{ID: cfg.Registry}
	if cfg.EventsTopic != "" {
		want.EventNotificationConfigs = []registry.EventNotificationConfig{{PubsubTopicName: topicName(cfg.Project, cfg.EventsTopic)}}
	}
	if cfg.StateTopic != "" {
		want.StateNotificationConfig.PubsubTopicName = topicName(cfg.Project, cfg.StateTopic)
	}
	seed := cfg.EventsTopic != "" || cfg.StateTopic != ""

	got, err := store.GetRegistry(ctx, p)
	if errors.Is(err, registry.ErrNotFound) && seed {
		got, err = store.CreateRegistry(ctx, cfg.Project, cfg.Location, want)
		if err == nil {
			logger.Info("created the device registry", "registry", p.String(),
				"events_topic", want.EventNotificationConfigs, "state_topic", want.StateNotificationConfig.PubsubTopicName)
			return nil
		}
		if errors.Is(err, registry.ErrAlreadyExists) { // another instance was first
			got, err = store.GetRegistry(ctx, p)
		}
	}
	switch {
	case errors.Is(err, registry.ErrNotFound):
		logger.Warn("the device registry does not exist: no device can connect until it is created (admin API POST /v1/projects/{p}/locations/{l}/registries, or start with -events_topic)",
			"registry", p.String())
		return nil
	case err != nil:
		return fmt.Errorf("reading registry %s: %w", p, err)
	}
	if seed {
		events, _ := registry.EventTopic(got, "")
		if (cfg.EventsTopic != "" && events != topicName(cfg.Project, cfg.EventsTopic)) ||
			(cfg.StateTopic != "" && got.StateNotificationConfig.PubsubTopicName != topicName(cfg.Project, cfg.StateTopic)) {
			logger.Warn("the registry exists with other notification configs, which route messages: -events_topic and -state_topic only seed a new registry",
				"registry", p.String(), "eventNotificationConfigs", got.EventNotificationConfigs, "stateNotificationConfig", got.StateNotificationConfig)
		}
	}
	return nil
}

// topicName returns the full name of topic, an id in project or already a
// projects/{p}/topics/{t} name: the form notification configs hold.
func topicName(project, topic string) string {
	if strings.HasPrefix(topic, "projects/") {
		return topic
	}
	return "projects/" + project + "/topics/" + topic
}

func registryName(o options) string {
	if !o.withRegistry() {
		return ""
	}
	return "bigtable projects/" + o.btProject + "/instances/" + o.btInstance
}

func busInstance(bus *devicebus.Bus) string {
	if bus == nil {
		return ""
	}
	return bus.Instance()
}

// closer names what failed to close.
func closer(what string, close func() error) func() error {
	return func() error {
		if err := close(); err != nil {
			return fmt.Errorf("close %s: %w", what, err)
		}
		return nil
	}
}
