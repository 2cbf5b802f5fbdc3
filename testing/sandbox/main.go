// Command sandbox runs all of iotpipe on this machine: in-process Pub/Sub,
// Bigtable and GCS emulators, a DuckDB warehouse, the device bridge (MQTT on
// localhost:1883, MQTT over TLS on localhost:8883 with a sandbox CA, the HTTP
// bridge, the admin API and /metrics on localhost:8080, a device registry in
// the Bigtable emulator) and the streaming job on prism. It prints its
// endpoints, runs until Ctrl-C, then drains and stops.
//
//	go run ./testing/sandbox
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/stack"
)

func main() {
	cfg := stack.DefaultConfig()
	cfg.Emulators.RegisterFlags(flag.CommandLine)
	flag.StringVar(&cfg.Project, "project", cfg.Project, "GCP project id of the local deployment (and of device client ids)")
	flag.StringVar(&cfg.Location, "location", cfg.Location, "IoT Core location (region) of the registry")
	flag.StringVar(&cfg.Registry, "registry", cfg.Registry, "IoT Core registry id")
	flag.StringVar(&cfg.Instance, "instance", cfg.Instance, "Bigtable instance id")
	flag.StringVar(&cfg.MQTTAddr, "mqtt_addr", cfg.MQTTAddr, "MQTT listen address (loopback only: sandbox devices are not authenticated)")
	flag.StringVar(&cfg.TLSAddr, "tls_addr", cfg.TLSAddr, "MQTT over TLS listen address (loopback only); empty: none")
	flag.StringVar(&cfg.CertDir, "tls_dir", cfg.CertDir, "directory of the sandbox CA (ca.pem) and server certificate, made if missing or expiring; empty: a temporary one")
	flag.StringVar(&cfg.HTTPAddr, "http_addr", cfg.HTTPAddr, "listen address of the HTTP device bridge, the admin API and /metrics (loopback only); empty: none")
	verbose := flag.Bool("v", false, "log the runner's own progress messages too")
	flag.Parse()
	beam.Init()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if !*verbose {
		// Prism logs every job transition at INFO through the default logger.
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	}
	if err := run(cfg, logger); err != nil {
		logger.Error("sandbox", "error", err)
		os.Exit(1)
	}
}

func run(cfg stack.Config, logger *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	st, err := stack.Start(ctx, cfg, logger)
	if err != nil {
		return err
	}
	printBanner(st)
	logger.Info("sandbox ready", "mqtt", st.Server.MQTTAddr(), "mqtts", st.Server.TLSAddr(), "ca", st.TLS.CA, "http", st.Server.HTTPAddr())
	<-ctx.Done()
	stop() // a second Ctrl-C kills the process
	logger.Info("shutting down: bridge first, then the pipeline drains, then the emulators")
	if err := st.Close(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	logger.Info("sandbox stopped cleanly")
	return nil
}

func printBanner(st *stack.Stack) {
	c, e := st.Config, st.Emulators
	reg := fmt.Sprintf("projects/%s/locations/%s/registries/%s", c.Project, c.Location, c.Registry)
	var b strings.Builder
	fmt.Fprintf(&b, "\niotpipe sandbox is running (Ctrl-C stops it cleanly)\n\n")
	fmt.Fprintf(&b, "Device bridge, registry %s (devices are not authenticated: any device id, no password)\n", reg)
	row := func(name, where, what string) { fmt.Fprintf(&b, "  %-14s %-28s %s\n", name, where, what) }
	row("MQTT", "tcp://"+st.Server.MQTTAddr(), "client id "+reg+"/devices/{device}")
	if a := st.Server.TLSAddr(); a != "" {
		row("MQTT over TLS", "ssl://"+a, "CA "+st.TLS.CA+" (certificate for localhost, 127.0.0.1, ::1)")
	}
	if a := st.Server.HTTPAddr(); a != "" {
		row("HTTP bridge", "http://"+a, "POST /v1/"+reg+"/devices/{device}:publishEvent, :setState, GET .../config; POST /v1/ingest/{device}")
		row("Admin API", "http://"+a, "/v1/"+reg+"/devices (IoT Core's REST API: devices, config, commands); POST /v1/devices")
		row("Metrics", "http://"+a, "/metrics (Prometheus)")
	}
	fmt.Fprintf(&b, "\nCloud emulators and the pipeline\n")
	row("Pub/Sub", e.PubsubAddr, fmt.Sprintf("PUBSUB_EMULATOR_HOST=%s (topic %s, subscription %s)", e.PubsubAddr, stack.EventsTopic, stack.EventsSubscription))
	row("Bigtable", e.BigtableAddr, fmt.Sprintf("BIGTABLE_EMULATOR_HOST=%s (instance %s, tables %s)", e.BigtableAddr, c.Instance, strings.Join(tables(), ", ")))
	row("GCS", e.GCSURL, "STORAGE_EMULATOR_HOST="+e.GCSURL)
	row("Warehouse", "DuckDB", e.WarehousePath)
	row("Streaming job", "prism", "reading "+st.Subscription)
	row("Archive", "GCS", fmt.Sprintf("gs://%s/%s/dt=YYYY-MM-DD/hour=HH/", stack.Bucket, stack.ArchivePrefix))
	row("Reference data", "GCS", fmt.Sprintf("gs://%s/%s", stack.Bucket, stack.ReferenceObject))

	reading := `'{"ts":1700000000000,"seq":1,"metrics":{"temperature":21.5}}'`
	addr := st.Server.MQTTAddr()
	fmt.Fprintf(&b, "\nPublish a reading:\n  mosquitto_pub -h %s -p %s -i %s/devices/d1 -t /devices/d1/events -q 1 \\\n    -m %s\n",
		host(addr), port(addr), reg, reading)
	if a := st.Server.TLSAddr(); a != "" {
		fmt.Fprintf(&b, "Over TLS:\n  mosquitto_pub -h localhost -p %s --cafile %s -i %s/devices/d1 -t /devices/d1/events -q 1 \\\n    -m %s\n",
			port(a), st.TLS.CA, reg, reading)
	}
	if a := st.Server.HTTPAddr(); a != "" {
		fmt.Fprintf(&b, "Over HTTP:\n  curl -H 'Content-Type: application/json' http://%s/v1/ingest/d1 -d '{\"ts\":1700000000000,\"seq\":2,\"metrics\":{\"temperature\":22}}'\n", a)
		// Registering is optional here (any device may connect), but config
		// and commands need a registered device, whose id IoT Core's
		// stricter rule checks: 3 or more characters.
		fmt.Fprintf(&b, "Register a device, watch its config, change it; list the devices:\n")
		fmt.Fprintf(&b, "  curl http://%s/v1/%s/devices -d '{\"id\":\"dev-1\"}'\n", a, reg)
		fmt.Fprintf(&b, "  mosquitto_sub -h %s -p %s -i %s/devices/dev-1 -t /devices/dev-1/config -q 1 &\n", host(addr), port(addr), reg)
		fmt.Fprintf(&b, "  curl http://%s/v1/%s/devices/dev-1:modifyCloudToDeviceConfig -d \"{\\\"binaryData\\\":\\\"$(printf fan=on | base64)\\\"}\"\n", a, reg)
		fmt.Fprintf(&b, "  curl http://%s/v1/%s/devices\n", a, reg)
	}
	fmt.Fprintf(&b, "See it in Bigtable:\n  BIGTABLE_EMULATOR_HOST=%s go run ./testing/btrows -project %s -instance %s -table telemetry\n\n",
		e.BigtableAddr, c.Project, c.Instance)
	fmt.Print(b.String())
}

func tables() []string {
	var names []string
	for _, t := range schemas.BigtableLayout {
		names = append(names, t.Name)
	}
	return names
}

func host(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}

func port(addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return p
}
