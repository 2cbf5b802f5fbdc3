package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/iotpipe/iotpipe/ingress/devicebus"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/server"
)

// serve opens the registry store (with -bigtable_instance) and the
// publisher, hands them to the bridge (ingress/server), which owns them
// from then on, serves until ctx is done or the HTTP server fails, then
// shuts the bridge down in the order that loses nothing.
func serve(ctx context.Context, o options, logger *slog.Logger) (err error) {
	// The clients must outlive ctx: the shutdown flushes through them after
	// the signal. Neither dials before its first call, so a configuration
	// error in server.Start still fails before any network traffic.
	var store *registry.Store
	if o.withRegistry() {
		store, err = registry.New(context.WithoutCancel(ctx), registry.Config{Project: o.btProject, Instance: o.btInstance})
		if err != nil {
			return err
		}
	}
	pub, err := publisher.New(context.WithoutCancel(ctx), o.server.Project)
	if err != nil {
		if store != nil {
			err = errors.Join(err, store.Close())
		}
		return err
	}
	srv, err := server.Start(ctx, o.server, store, pub, logger)
	if err != nil {
		return flagError(o, err)
	}

	logger.Info("ingress listening", "mqtt_addr", srv.MQTTAddr(), "tls_addr", srv.TLSAddr(), "http_addr", srv.HTTPAddr(),
		"project", o.server.Project, "location", o.server.Location, "registry", o.server.Registry,
		"device_registry", registryName(o), "instance", busInstance(srv.Bus()), "c2d_topic", o.server.FanoutTopic,
		"events_topic", o.server.EventsTopic, "state_topic", o.server.StateTopic,
		"pubsub_emulator", os.Getenv("PUBSUB_EMULATOR_HOST"), "bigtable_emulator", os.Getenv("BIGTABLE_EMULATOR_HOST"))

	select {
	case <-ctx.Done():
	case serr := <-srv.Failed():
		logger.Error("HTTP server failed; shutting down", "error", serr)
		err = fmt.Errorf("HTTP server: %w", serr)
	}
	logger.Info("ingress shutting down: draining in-flight messages")
	if err := errors.Join(err, srv.Close()); err != nil {
		return err
	}
	logger.Info("ingress stopped")
	return nil
}

// flagError names the flag behind a server.ConfigError.
func flagError(o options, err error) error {
	ce, ok := errors.AsType[*server.ConfigError](err)
	if !ok {
		return err
	}
	switch ce.Field {
	case "Instance":
		return fmt.Errorf("-instance %q, -c2d_topic %q: %w", o.server.Instance, o.server.FanoutTopic, ce.Err)
	case "HTTPAddr":
		return fmt.Errorf("-http_addr: %w", ce.Err)
	case "AdminToken":
		return fmt.Errorf("-admin_token: %w", ce.Err)
	}
	return err
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
