package stack

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/server"
	"github.com/iotpipe/iotpipe/ingress/tlscert"
)

// startBridge starts the device bridge as the ingress command runs it with a
// registry, except that devices are not authenticated (AllowAll: any client
// id of the registry, no password), so that mosquitto_pub and curl work as
// they are; every listener is on loopback, which the bridge enforces.
// Messages are routed by the registry's notification configs (a registry
// made at start routing to EventsTopic and StateTopic), and the device bus
// delivers in process (one instance, no fan-out topic).
func (st *Stack) startBridge(ctx context.Context) (err error) {
	cfg := st.Config
	scfg := server.Config{
		Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry,
		EventsTopic: EventsTopic, StateTopic: StateTopic,
		MQTTAddr: cfg.MQTTAddr, HTTPAddr: cfg.HTTPAddr,
		Auth:         mqttbridge.AllowAll{},
		Instance:     "sandbox",
		DrainTimeout: cfg.DrainTimeout,
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
		scfg.TLSAddr, scfg.TLSCertFile, scfg.TLSKeyFile = cfg.TLSAddr, st.TLS.Cert, st.TLS.Key
	}

	// The clients outlive ctx: the drain flushes through them.
	store, err := registry.New(context.WithoutCancel(ctx), registry.Config{Project: cfg.Project, Instance: cfg.Instance})
	if err != nil {
		return err
	}
	pub, err := publisher.New(context.WithoutCancel(ctx), cfg.Project)
	if err != nil {
		return errors.Join(err, store.Close())
	}
	// From here on the server owns store and pub, and closes them.
	if st.Server, err = server.Start(ctx, scfg, store, pub, st.logger); err != nil {
		return err
	}
	st.Registry = store
	return nil
}

// stopBridge stops the bridge in the order that loses nothing (see
// server.Server.Close), the registry store and the publisher last.
func (st *Stack) stopBridge() error {
	if st.Server == nil {
		return nil
	}
	err := st.Server.Close()
	st.Server, st.Registry = nil, nil
	return err
}
