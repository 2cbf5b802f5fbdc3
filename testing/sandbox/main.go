// Command sandbox runs all of iotpipe on this machine: in-process Pub/Sub,
// Bigtable and GCS emulators, a DuckDB warehouse, the MQTT device bridge and
// the streaming job on prism. It runs until Ctrl-C, then drains and stops.
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
	flag.StringVar(&cfg.MQTTAddr, "mqtt_addr", cfg.MQTTAddr, "MQTT bridge listen address (loopback only until device auth lands)")
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
	device := fmt.Sprintf("projects/%s/locations/%s/registries/%s/devices/d1", c.Project, c.Location, c.Registry)
	fmt.Printf(`
iotpipe sandbox is running (Ctrl-C stops it cleanly)

  MQTT bridge    %s   client id projects/%s/locations/%s/registries/%s/devices/{device}
  Pub/Sub        %s   PUBSUB_EMULATOR_HOST=%s   (topic %s, subscription %s)
  Bigtable       %s   BIGTABLE_EMULATOR_HOST=%s  (instance %s, tables %s)
  GCS            %s   STORAGE_EMULATOR_HOST=%s
  Warehouse      %s
  Streaming job  prism, reading %s
  Archive        gs://%s/%s/dt=YYYY-MM-DD/hour=HH/
  Reference data gs://%s/%s

Publish a reading:
  mosquitto_pub -h %s -p %s -i %s -t /devices/d1/events -q 1 \
    -m '{"ts":1700000000000,"seq":1,"metrics":{"temperature":21.5}}'
See it in Bigtable:
  BIGTABLE_EMULATOR_HOST=%s go run ./testing/btrows -project %s -instance %s -table telemetry

`, st.Bridge.Addr(), c.Project, c.Location, c.Registry,
		e.PubsubAddr, e.PubsubAddr, stack.EventsTopic, stack.EventsSubscription,
		e.BigtableAddr, e.BigtableAddr, c.Instance, strings.Join(tables(), ", "),
		e.GCSURL, e.GCSURL,
		e.WarehousePath,
		st.Subscription,
		stack.Bucket, stack.ArchivePrefix,
		stack.Bucket, stack.ReferenceObject,
		host(st.Bridge.Addr()), port(st.Bridge.Addr()), device,
		e.BigtableAddr, c.Project, c.Instance)
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
