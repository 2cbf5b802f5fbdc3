// Command ingress is the device bridge: Cloud IoT Core's MQTT and HTTP device
// protocols in front of Pub/Sub, its admin REST API over a Bigtable device
// registry, and cloud-to-device config and commands.
//
// Usage:
//
//	ingress -project P -location L -registry R -events_topic T [-state_topic S]
//	        [-mqtt_addr 127.0.0.1:1883] [-tls_addr A -tls_cert F -tls_key F]
//	        [-http_addr 127.0.0.1:8080] [rate limit flags]
//
//	ingress -project P -location L -registry R -bigtable_instance I [-bigtable_project P]
//	        [-events_topic T [-state_topic S]] [-instance NAME] [-c2d_topic T] [-admin_token TOKEN]
//	        [-mqtt_addr A] [-tls_addr A -tls_cert F -tls_key F] [-http_addr A] [rate limit flags]
//
// Without -bigtable_instance there is no registry: any client id of the
// registry is accepted without a password, telemetry goes to -events_topic and
// state to -state_topic, and every listener must be on loopback (the HTTP
// bridge also answers loopback clients only).
//
// With -bigtable_instance, devices are looked up in the Bigtable registry and
// authenticate with JWTs signed by one of their registered keys (IoT Core's
// rules), over MQTT and HTTP alike; telemetry is routed by the registry's
// eventNotificationConfigs and state by its stateNotificationConfig.
// -events_topic and -state_topic then only create the registry with those
// topics if it does not exist yet. The registry also brings the admin API,
// config and commands: a device gets its config when it subscribes to
// /devices/{id}/config and when it changes, and commands sent through the admin
// API reach it on /devices/{id}/commands. With -c2d_topic, several instances
// (each with its own -instance name) share the registry and reach each other's
// devices through that Pub/Sub topic; without it an instance reaches only its
// own devices.
//
// -http_addr serves, on one listener, the HTTP device bridge (:publishEvent,
// :setState, /config, POST /v1/ingest/{device}), the admin API (with a
// registry; -admin_token is required off loopback) and Prometheus /metrics.
// -tls_addr adds an MQTT-over-TLS listener (IoT Core's 8883) with the PEM
// certificate chain and key in -tls_cert and -tls_key.
//
// PUBSUB_EMULATOR_HOST and BIGTABLE_EMULATOR_HOST select emulators. SIGINT or
// SIGTERM stops accepting devices, waits for messages in flight to reach
// Pub/Sub, and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/iotpipe/iotpipe/ingress/internal/loopback"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/server"
)

func main() {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second signal during the drain gets the default behaviour: exit now.
	context.AfterFunc(ctx, stop)

	err := run(ctx, os.Args[1:], os.Stderr, logger)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		logger.Error("ingress failed", "error", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// options is the command's configuration, filled from flags.
type options struct {
	// server is the bridge; its Instance, FanoutTopic and AdminToken
	// configure the device bus and the admin API, which exist only with a
	// registry.
	server server.Config
	// btProject and btInstance name the registry's Bigtable instance;
	// btInstance empty means no registry.
	btProject, btInstance string
}

func (o options) withRegistry() bool { return o.btInstance != "" }

// run serves until ctx is done, then shuts down cleanly.
func run(ctx context.Context, args []string, usage io.Writer, logger *slog.Logger) error {
	o, err := parseFlags(args, usage)
	if err != nil {
		return err
	}
	return serve(ctx, o, logger)
}

// parseFlags fills options from args and checks how the flags combine, so
// that a bad command line fails before anything connects.
func parseFlags(args []string, usage io.Writer) (options, error) {
	fs := flag.NewFlagSet("ingress", flag.ContinueOnError)
	fs.SetOutput(usage)
	var o options
	cfg := &o.server
	fs.StringVar(&cfg.Project, "project", "", "Google Cloud project of the device registry and the Pub/Sub topics (required)")
	fs.StringVar(&cfg.Location, "location", "", "registry location (region), as in device client ids (required)")
	fs.StringVar(&cfg.Registry, "registry", "", "registry id, as in device client ids (required)")
	fs.StringVar(&cfg.EventsTopic, "events_topic", "", "Pub/Sub topic id (or projects/P/topics/T) for telemetry; required without -bigtable_instance, "+
		"with it only the catch-all eventNotificationConfig of a registry created at start when it does not exist")
	fs.StringVar(&cfg.StateTopic, "state_topic", "", "Pub/Sub topic for device state; empty: state is acknowledged and not forwarded. "+
		"With -bigtable_instance, only the stateNotificationConfig of a registry created at start")
	fs.StringVar(&cfg.MQTTAddr, "mqtt_addr", mqttbridge.DefaultMQTTAddr, "MQTT listen address; loopback only without -bigtable_instance (no device auth)")
	fs.StringVar(&cfg.TLSAddr, "tls_addr", "", "MQTT over TLS listen address (IoT Core's 8883), with -tls_cert and -tls_key; empty: none")
	fs.StringVar(&cfg.TLSCertFile, "tls_cert", "", "PEM certificate chain of the -tls_addr listener")
	fs.StringVar(&cfg.TLSKeyFile, "tls_key", "", "PEM private key of the -tls_addr listener")
	fs.DurationVar(&cfg.ExpiryGrace, "expiry_grace", mqttbridge.DefaultExpiryGrace, "how long a device stays connected after its JWT expires")
	fs.StringVar(&cfg.HTTPAddr, "http_addr", "127.0.0.1:8080", "HTTP listen address of the HTTP device bridge, the admin API (with -bigtable_instance) and /metrics; "+
		"loopback only without -bigtable_instance; empty: none")
	fs.StringVar(&o.btProject, "bigtable_project", "", "project of the Bigtable device registry (default: -project)")
	fs.StringVar(&o.btInstance, "bigtable_instance", "", "Bigtable instance of the device registry; when set, devices authenticate with JWTs against their registered keys, "+
		"and the registry routes their messages and brings the admin API, config and commands")
	fs.StringVar(&cfg.Instance, "instance", hostname(), "name of this bridge instance among those sharing the registry (1 to 64 of [a-zA-Z0-9-_.]); needs -bigtable_instance")
	fs.StringVar(&cfg.FanoutTopic, "c2d_topic", "", "Pub/Sub topic through which instances sharing the registry pass config updates and commands for each other's devices; "+
		"each instance reads it through a subscription of its own, made at start and deleted at shutdown. Empty: a single instance. Needs -bigtable_instance")
	fs.StringVar(&cfg.AdminToken, "admin_token", "", "bearer token every admin API request must present; required when -http_addr is not loopback. Needs -bigtable_instance")

	l := &cfg.Limits
	fs.Float64Var(&l.ConnectionMessagesPerSecond, "connection_messages_per_second", mqttbridge.DefaultConnectionMessagesPerSecond,
		"messages one MQTT connection may publish per second; negative: no limit")
	fs.Float64Var(&l.DeviceBytesPerSecond, "device_bytes_per_second", mqttbridge.DefaultDeviceBytesPerSecond,
		"payload bytes one device may publish per second over all its connections; negative: no limit")
	fs.Float64Var(&l.DeviceStatePerSecond, "device_state_per_second", mqttbridge.DefaultDeviceStatePerSecond,
		"state updates one device may publish per second; negative: no limit")
	fs.DurationVar(&l.MaxThrottleDelay, "max_throttle_delay", mqttbridge.DefaultMaxThrottleDelay,
		"longest a publish waits for the rate limits before its connection is closed instead; negative: never wait")
	fs.IntVar(&l.TenantMaxOutstanding, "tenant_max_outstanding", mqttbridge.DefaultTenantMaxOutstanding,
		"publishes of one registry waiting for Pub/Sub, beyond which its devices wait (backpressure); negative: no bound")
	fs.Int64Var(&l.TenantMaxOutstandingBytes, "tenant_max_outstanding_bytes", mqttbridge.DefaultTenantMaxOutstandingBytes,
		"payload bytes of one registry waiting for Pub/Sub, beyond which its devices wait; negative: no bound")
	fs.DurationVar(&l.TenantMaxWait, "tenant_max_wait", mqttbridge.DefaultTenantMaxWait,
		"longest a publish waits under backpressure before its connection is closed (server busy); negative: never wait")

	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return o, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.btProject == "" {
		o.btProject = cfg.Project
	}
	return o, o.check(set)
}

// check reports the first flag that is missing, or that needs another one.
// set holds the flags given on the command line.
func (o options) check(set map[string]bool) error {
	for _, f := range []struct{ name, value string }{
		{"project", o.server.Project}, {"location", o.server.Location}, {"registry", o.server.Registry},
	} {
		if f.value == "" {
			return fmt.Errorf("-%s is required", f.name)
		}
	}
	if o.server.TLSAddr == "" && (o.server.TLSCertFile != "" || o.server.TLSKeyFile != "") {
		return errors.New("-tls_cert and -tls_key need -tls_addr: there is no TLS listener to use them")
	}
	if o.server.TLSAddr != "" && (o.server.TLSCertFile == "" || o.server.TLSKeyFile == "") {
		return fmt.Errorf("-tls_addr %q needs -tls_cert and -tls_key", o.server.TLSAddr)
	}
	if o.server.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(o.server.HTTPAddr); err != nil {
			return fmt.Errorf("-http_addr: %w", err)
		}
	}
	if !o.withRegistry() {
		for _, name := range []string{"bigtable_project", "instance", "c2d_topic", "admin_token"} {
			if set[name] {
				return fmt.Errorf("-%s needs -bigtable_instance: without the device registry there is nothing for it to configure", name)
			}
		}
		if o.server.EventsTopic == "" {
			return errors.New("-events_topic is required without -bigtable_instance (with it, the registry's eventNotificationConfigs route telemetry)")
		}
		if o.server.HTTPAddr != "" && !loopback.Addr(o.server.HTTPAddr) {
			return fmt.Errorf("-http_addr %q is not loopback: without -bigtable_instance devices are not authenticated, so the HTTP bridge listens only on 127.0.0.1, ::1 or localhost", o.server.HTTPAddr)
		}
		// -mqtt_addr and -tls_addr: mqttbridge's rule (Config.ValidateFor).
		return nil
	}
	if o.server.HTTPAddr != "" && !loopback.Addr(o.server.HTTPAddr) && o.server.AdminToken == "" {
		return fmt.Errorf("-http_addr %q is not loopback: set -admin_token, or the admin API (which creates devices and their keys) is open to anyone who reaches it", o.server.HTTPAddr)
	}
	return nil
}

// hostname is -instance's default: unique per machine, stable across restarts.
func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "" // devicebus picks a random name
	}
	return h
}
