package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/iotpipe/iotpipe/ingress/adminapi"
	"github.com/iotpipe/iotpipe/ingress/devicebus"
	"github.com/iotpipe/iotpipe/ingress/httpbridge"
	"github.com/iotpipe/iotpipe/ingress/metrics"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/tlscert"
)

// startBridge starts the device bridge as the ingress command runs it with a
// registry, except that devices are not authenticated (AllowAll: any client
// id of the registry, no password), so that mosquitto_pub and curl work as
// they are; every listener is on loopback, which the bridge enforces.
// Messages are routed by the registry's notification configs, and the device
// bus delivers in process (one instance, no fan-out topic).
func (st *Stack) startBridge(ctx context.Context) (err error) {
	cfg := st.Config
	st.Registry, err = registry.New(context.WithoutCancel(ctx), registry.Config{Project: cfg.Project, Instance: cfg.Instance})
	if err != nil {
		return err
	}
	if _, err := st.Registry.CreateRegistry(ctx, cfg.Project, cfg.Location, registry.Registry{
		ID: cfg.Registry,
		EventNotificationConfigs: []registry.EventNotificationConfig{
			{PubsubTopicName: fmt.Sprintf("projects/%s/topics/%s", cfg.Project, EventsTopic)},
		},
		StateNotificationConfig: registry.StateNotificationConfig{PubsubTopicName: fmt.Sprintf("projects/%s/topics/%s", cfg.Project, StateTopic)},
	}); err != nil && !errors.Is(err, registry.ErrAlreadyExists) {
		return fmt.Errorf("creating registry %s: %w", cfg.Registry, err)
	}

	st.publisher, err = publisher.New(context.WithoutCancel(ctx), cfg.Project)
	if err != nil {
		return err
	}
	router, err := publisher.NewRouter(st.publisher, publisher.Routes{Registries: st.Registry})
	if err != nil {
		return err
	}
	st.Bus, err = devicebus.New(st.Registry, devicebus.Config{Instance: "sandbox", Project: cfg.Project}, st.publisher, st.logger)
	if err != nil {
		return err
	}
	st.Metrics = metrics.New()

	bcfg := mqttbridge.Config{
		Project:  cfg.Project,
		Location: cfg.Location,
		Registry: cfg.Registry,
		MQTTAddr: cfg.MQTTAddr,
		Metrics:  st.Metrics,
	}
	if cfg.TLSAddr != "" {
		dir := cfg.CertDir
		if dir == "" {
			if dir, err = os.MkdirTemp("", "iotpipe-sandbox-tls-"); err != nil {
				return err
			}
			st.tempCertDir = dir
		}
		if st.TLS, err = tlscert.Ensure(dir); err != nil {
			return fmt.Errorf("sandbox TLS certificate in %s: %w", dir, err)
		}
		bcfg.TLSAddr, bcfg.TLSCertFile, bcfg.TLSKeyFile = cfg.TLSAddr, st.TLS.Cert, st.TLS.Key
	}
	auth := mqttbridge.AllowAll{}
	st.Bridge, err = mqttbridge.NewWithRouter(bcfg, router, auth, st.logger, mqttbridge.WithDeviceBus(st.Bus))
	if err != nil {
		return err
	}
	var handler http.Handler
	if cfg.HTTPAddr != "" {
		hb, err := httpbridge.New(httpbridge.Config{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry},
			router, auth, st.Registry, st.logger)
		if err != nil {
			return err
		}
		// Open to loopback clients: the sandbox has no admin token.
		admin, err := adminapi.New(st.Registry, st.Bus, adminapi.Config{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry}, st.logger)
		if err != nil {
			return err
		}
		// The device bridge and the admin API share IoT Core's paths: the
		// bridge takes its methods and passes the rest on.
		api, scrape := hb.Handler(admin), st.Metrics.Handler()
		handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/metrics" {
				scrape.ServeHTTP(w, r)
				return
			}
			api.ServeHTTP(w, r)
		})
	}

	if err := st.Bus.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	if err := st.Bridge.Start(); err != nil {
		st.Bridge = nil // not serving: nothing to close
		return err
	}
	if handler != nil {
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("HTTP listener: %w", err)
		}
		st.HTTPAddr = ln.Addr().String()
		st.httpServer = &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: 10 * time.Second,
			ConnState:         st.Metrics.HTTPConnState,
			ErrorLog:          slog.NewLogLogger(st.logger.Handler(), slog.LevelWarn),
		}
		go func() {
			if err := st.httpServer.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				st.logger.Error("HTTP listener stopped", "addr", st.HTTPAddr, "error", err)
			}
		}()
	}
	return nil
}

// stopBridge stops the front ends in the order that loses nothing: HTTP
// requests in flight finish, the MQTT bridge drains its publishes, then the
// device bus, the publisher and the registry close.
func (st *Stack) stopBridge() error {
	var errs []error
	if st.httpServer != nil {
		ctx, cancel := context.WithTimeout(context.Background(), st.Config.DrainTimeout)
		if err := st.httpServer.Shutdown(ctx); err != nil {
			st.httpServer.Close()
			errs = append(errs, fmt.Errorf("stop HTTP listener: %w", err))
		}
		cancel()
		st.httpServer = nil
	}
	if st.Bridge != nil {
		errs = append(errs, st.Bridge.Close())
		st.Bridge = nil
	}
	if st.Bus != nil {
		errs = append(errs, st.Bus.Close())
		st.Bus = nil
	}
	if st.publisher != nil {
		errs = append(errs, st.publisher.Close())
		st.publisher = nil
	}
	if st.Registry != nil {
		errs = append(errs, st.Registry.Close())
		st.Registry = nil
	}
	return errors.Join(errs...)
}
