// Command ingress is the device bridge: it accepts Cloud IoT Core MQTT connections and
// publishes device telemetry and state to Pub/Sub, acknowledging each message once stored.
//
// Usage:
//
//	ingress -project P -location L -registry R -events_topic T [-state_topic S] [-mqtt_addr 127.0.0.1:1883]
//	        [-bigtable_instance I [-bigtable_project P]]
//
// With -bigtable_instance, devices are looked up in the Bigtable registry and
// authenticate with JWTs signed by one of their registered keys (IoT Core's
// rules); without it, any client id of the registry is accepted and the
// bridge listens on loopback only.
//
// PUBSUB_EMULATOR_HOST selects a Pub/Sub emulator. SIGINT or SIGTERM stops
// accepting devices, waits for messages in flight to reach Pub/Sub, and exits 0.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/iotpipe/iotpipe/ingress/jwtauth"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
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

// run serves until ctx is done, then shuts down cleanly.
func run(ctx context.Context, args []string, usage io.Writer, logger *slog.Logger) error {
	fs := flag.NewFlagSet("ingress", flag.ContinueOnError)
	fs.SetOutput(usage)
	var cfg mqttbridge.Config
	fs.StringVar(&cfg.Project, "project", "", "Google Cloud project of the device registry and the Pub/Sub topics (required)")
	fs.StringVar(&cfg.Location, "location", "", "registry location (region), as in device client ids (required)")
	fs.StringVar(&cfg.Registry, "registry", "", "registry id, as in device client ids (required)")
	fs.StringVar(&cfg.EventsTopic, "events_topic", "", "Pub/Sub topic id (or projects/P/topics/T) for telemetry (required)")
	fs.StringVar(&cfg.StateTopic, "state_topic", "", "Pub/Sub topic for device state; empty: state is acknowledged and not forwarded")
	fs.StringVar(&cfg.MQTTAddr, "mqtt_addr", mqttbridge.DefaultMQTTAddr, "MQTT listen address; loopback only without -bigtable_instance (no device auth)")
	btProject := fs.String("bigtable_project", "", "project of the Bigtable device registry (default: -project)")
	btInstance := fs.String("bigtable_instance", "", "Bigtable instance of the device registry; when set, devices authenticate with JWTs against their registered keys")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}

	var auth mqttbridge.Authenticator = mqttbridge.AllowAll{}
	if *btInstance != "" {
		if *btProject == "" {
			*btProject = cfg.Project
		}
		// The registry client does not dial until first use.
		store, err := registry.New(context.WithoutCancel(ctx), registry.Config{Project: *btProject, Instance: *btInstance})
		if err != nil {
			return err
		}
		defer store.Close()
		auth = jwtauth.New(store, jwtauth.Config{})
	}
	if err := cfg.ValidateFor(auth); err != nil {
		return err
	}
	// The client must outlive ctx: Close flushes through it after the signal.
	pub, err := publisher.New(context.WithoutCancel(ctx), cfg.Project)
	if err != nil {
		return err
	}
	defer pub.Close()
	bridge, err := mqttbridge.NewWithAuth(cfg, pub, auth, logger)
	if err != nil {
		return err
	}
	if err := bridge.Start(); err != nil {
		return err
	}
	logger.Info("ingress listening", "mqtt_addr", bridge.Addr(), "project", cfg.Project,
		"events_topic", cfg.EventsTopic, "state_topic", cfg.StateTopic,
		"pubsub_emulator", os.Getenv("PUBSUB_EMULATOR_HOST"))

	<-ctx.Done()
	logger.Info("ingress shutting down: draining in-flight messages")
	if err := bridge.Close(); err != nil {
		return fmt.Errorf("close MQTT bridge: %w", err)
	}
	if err := pub.Close(); err != nil {
		return fmt.Errorf("close publisher: %w", err)
	}
	logger.Info("ingress stopped")
	return nil
}
