// Package stack runs all of iotpipe on one machine: the emulators, the device
// bridge (MQTT, MQTT over TLS, HTTP, the admin API over a registry in the
// Bigtable emulator, config and commands, /metrics) and the streaming job,
// wired as in the cloud. The sandbox and the end-to-end tests both run exactly
// this.
package stack

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"cloud.google.com/go/storage"

	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/server"
	"github.com/iotpipe/iotpipe/ingress/tlscert"
	"github.com/iotpipe/iotpipe/pipelines"
	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/emulators"
	"github.com/iotpipe/iotpipe/transforms/aggregate"
)

// Config is the local deployment.
type Config struct {
	Emulators emulators.Config
	// Project, Location and Registry are the IoT Core names devices use in
	// their client ids: projects/{Project}/locations/{Location}/registries/{Registry}/devices/{id}.
	Project  string
	Location string
	Registry string
	// Instance is the Bigtable instance id.
	Instance string
	// MQTTAddr is where the bridge listens for plain MQTT (default
	// 127.0.0.1:1883). Devices are not authenticated in the sandbox, so this
	// and TLSAddr and HTTPAddr must be loopback addresses.
	MQTTAddr string
	// TLSAddr is the bridge's MQTT over TLS listener, with a certificate
	// from CertDir; empty: none.
	TLSAddr string
	// CertDir holds the sandbox CA and the bridge's certificate
	// (ingress/tlscert): made on first use, reused while valid, so devices
	// keep trusting the same CA across restarts. Empty: a temporary
	// directory, removed at Close.
	CertDir string
	// HTTPAddr serves the HTTP device bridge, the admin API and /metrics;
	// empty: none.
	HTTPAddr string
	// BigtableWriteTimeout bounds one bundle's Bigtable write (default 30 s).
	BigtableWriteTimeout time.Duration
	// DrainTimeout bounds each shutdown step that waits for data (default 30 s).
	DrainTimeout time.Duration
	// OnPipelineFailure, if set, sees each failed run of the streaming job
	// before the supervisor restarts it.
	OnPipelineFailure func(error)
}

// DefaultConfig is the sandbox's configuration: the emulators on their
// conventional ports and the bridge on IoT Core's: localhost:1883 (MQTT),
// localhost:8883 (MQTT over TLS) and localhost:8080 (HTTP).
func DefaultConfig() Config {
	return Config{
		Emulators: emulators.DefaultConfig(),
		// Short names, so a device's client id is short to type:
		// projects/p/locations/l/registries/r/devices/{device}.
		Project:  "p",
		Location: "l",
		Registry: "r",
		Instance: "iotpipe",
		MQTTAddr: "127.0.0.1:1883",
		TLSAddr:  "127.0.0.1:8883",
		CertDir:  DefaultCertDir(),
		HTTPAddr: "127.0.0.1:8080",
	}
}

// DefaultCertDir is where the sandbox keeps its certificates: in the user's
// cache directory, or "" (a temporary directory) when there is none.
func DefaultCertDir() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "iotpipe", "sandbox-tls")
}

// Topic and subscription ids, and the bucket, of the local deployment.
const (
	EventsTopic        = "iot-events"
	StateTopic         = "iot-state"
	EventsSubscription = "iot-events-pipeline"
	// DeadLetterTopic receives every dead letter and AlertsTopic every
	// threshold alert; each has a subscription for whoever reviews them.
	DeadLetterTopic        = "iot-deadletters"
	DeadLetterSubscription = "iot-deadletters-review"
	AlertsTopic            = "iot-alerts"
	AlertsSubscription     = "iot-alerts-notify"
	Bucket                 = "iotpipe-local"
	// ArchivePrefix and ReferenceObject live in Bucket.
	ArchivePrefix   = "raw"
	ReferenceObject = "reference/devices.csv"
)

// sampleReference is the reference data (Dataset B) the sandbox starts with.
//
//go:embed reference.csv
var sampleReference []byte

// Resources is what the local deployment needs on the emulators: the same
// topics, subscription and Bigtable tables Terraform creates in the cloud.
func Resources(project, instance string) emulators.Resources {
	tables := map[string][]string{}
	for _, t := range schemas.BigtableLayout {
		for _, f := range t.Families {
			tables[t.Name] = append(tables[t.Name], f.Name)
		}
	}
	return emulators.Resources{
		Project:  project,
		Instance: instance,
		Topics:   []string{EventsTopic, StateTopic, DeadLetterTopic, AlertsTopic},
		Subscriptions: map[string]string{
			EventsSubscription:     EventsTopic,
			DeadLetterSubscription: DeadLetterTopic,
			AlertsSubscription:     AlertsTopic,
		},
		BigtableTables: tables,
		Buckets:        []string{Bucket},
	}
}

// Stack is the running local deployment.
type Stack struct {
	Config    Config
	Emulators *emulators.Emulators
	// Server is the device bridge: its bound addresses (MQTTAddr, TLSAddr,
	// HTTPAddr), its metrics and its device bus.
	Server *server.Server
	// Registry is the device registry, in the Bigtable emulator; it holds
	// the registry Config.Registry, routing telemetry to EventsTopic and
	// state to StateTopic. Server owns it and closes it at Drain.
	Registry *registry.Store
	// TLS are the certificate files of the TLS listener: devices trust
	// TLS.CA. Zero without Config.TLSAddr.
	TLS tlscert.Files
	// Subscription is the full path the streaming job reads.
	Subscription string

	logger       *slog.Logger
	tempCertDir  string
	stopPipeline context.CancelFunc
	pipelineDone chan error
}

// Start brings the deployment up: emulators, resources, then the streaming
// job, then the bridge, so no device message arrives before its reader.
// It points this process's Google clients at the emulators through
// PUBSUB_EMULATOR_HOST, BIGTABLE_EMULATOR_HOST and STORAGE_EMULATOR_HOST,
// the variables Google's client libraries read.
func Start(ctx context.Context, cfg Config, logger *slog.Logger) (_ *Stack, err error) {
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	st := &Stack{Config: cfg, logger: logger}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	st.Emulators, err = emulators.Start(cfg.Emulators)
	if err != nil {
		return nil, err
	}
	for k, v := range st.Emulators.Env() {
		if err := os.Setenv(k, v); err != nil {
			return nil, fmt.Errorf("setting %s: %w", k, err)
		}
	}
	if err := st.Emulators.Provision(ctx, Resources(cfg.Project, cfg.Instance)); err != nil {
		return nil, err
	}
	st.Subscription = fmt.Sprintf("projects/%s/subscriptions/%s", cfg.Project, EventsSubscription)
	if err := uploadReference(ctx); err != nil {
		return nil, err
	}

	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	st.stopPipeline = cancel
	st.pipelineDone = make(chan error, 1)
	sv := &pipelines.Supervisor{
		Config: pipelines.StreamingConfig{
			Subscription: st.Subscription,
			Archive:      "gs://" + Bucket + "/" + ArchivePrefix,
			Graph: pipelines.GraphConfig{
				Reference:            "gs://" + Bucket + "/" + ReferenceObject,
				Warehouse:            "duckdb://" + st.Emulators.WarehousePath,
				DeadLetterTopic:      fmt.Sprintf("projects/%s/topics/%s", cfg.Project, DeadLetterTopic),
				AlertsTopic:          fmt.Sprintf("projects/%s/topics/%s", cfg.Project, AlertsTopic),
				Aggregate:            aggregate.Config{AllowedLateness: 5 * time.Minute},
				BigtableProject:      cfg.Project,
				BigtableInstance:     cfg.Instance,
				BigtableWriteTimeout: cfg.BigtableWriteTimeout,
			},
		},
		Logger:       logger,
		DrainTimeout: cfg.DrainTimeout,
		OnFailure:    cfg.OnPipelineFailure,
	}
	go func() { st.pipelineDone <- sv.Run(pctx) }()

	if err := st.startBridge(ctx); err != nil {
		return nil, err
	}
	return st, nil
}

// Drain stops taking device messages and drains the streaming job: the
// HTTP listener finishes its requests and the MQTT bridge its publishes; the job reads what is left in the
// subscription, its source stops, its last bundles commit and ack, and its
// windows close. The emulators keep running, so what was written can be read.
func (st *Stack) Drain() error {
	errs := []error{st.stopBridge()}
	if st.pipelineDone != nil {
		if err := st.waitSubscriptionSettled(st.Config.DrainTimeout); err != nil {
			st.logger.Warn("stopping with messages not yet processed", "error", err)
		}
		st.stopPipeline()
		errs = append(errs, <-st.pipelineDone)
		st.pipelineDone = nil
	}
	return errors.Join(errs...)
}

// Close drains (see Drain), then stops the emulators.
func (st *Stack) Close() error {
	err := st.Drain()
	if st.Emulators != nil {
		err = errors.Join(err, st.Emulators.Close())
		st.Emulators = nil
	}
	if st.tempCertDir != "" {
		err = errors.Join(err, os.RemoveAll(st.tempCertDir))
		st.tempCertDir = ""
	}
	return err
}

// Unacked counts the messages on the events topic the pipeline has not acked.
func (st *Stack) Unacked() int {
	n := 0
	for _, m := range st.Emulators.Pubsub.Messages() {
		if m.Topic == fmt.Sprintf("projects/%s/topics/%s", st.Config.Project, EventsTopic) && m.Acks == 0 {
			n++
		}
	}
	return n
}

func (st *Stack) waitSubscriptionSettled(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		n := st.Unacked()
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d messages still unacked after %v", n, timeout)
		}
		<-tick.C
	}
}

// uploadReference puts the sample reference data in the local bucket, where
// the pipeline reads it as it would from GCS in the cloud.
func uploadReference(ctx context.Context) error {
	c, err := storage.NewClient(ctx) // honours STORAGE_EMULATOR_HOST
	if err != nil {
		return fmt.Errorf("storage client: %w", err)
	}
	defer c.Close()
	w := c.Bucket(Bucket).Object(ReferenceObject).NewWriter(ctx)
	if _, err := w.Write(sampleReference); err != nil {
		w.Close()
		return fmt.Errorf("uploading reference data: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("uploading reference data: %w", err)
	}
	return nil
}
