// Command streaming runs iotpipe's streaming job: Pub/Sub telemetry in,
// parsed readings and dead letters out to Bigtable.
//
//	go run ./pipelines/streaming --input_subscription=projects/p/subscriptions/telemetry \
//	    --bigtable_project=p --bigtable_instance=iotpipe
//
// Locally it runs on prism (the default; --runner=direct also runs on prism)
// and honours PUBSUB_EMULATOR_HOST and BIGTABLE_EMULATOR_HOST. With
// --runner=dataflow it submits to Dataflow (--project, --region,
// --staging_location; --dry_run translates the job and prints it, offline).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/dataflow"

	"github.com/iotpipe/iotpipe/pipelines"
)

func main() {
	var cfg pipelines.StreamingConfig
	flag.StringVar(&cfg.Subscription, "input_subscription", "", "Pub/Sub subscription to read, projects/{project}/subscriptions/{id}")
	cfg.Graph.RegisterFlags(flag.CommandLine)
	flag.StringVar(&cfg.Archive, "archive", "", "keep every raw message here first: gs://bucket/prefix or a directory (hourly NDJSON, the backfill's input)")
	flag.DurationVar(&cfg.Graph.Aggregate.AllowedLateness, "allowed_lateness", 5*time.Minute, "how late a reading may arrive and still update its 1-minute aggregate")
	drain := flag.Duration("drain_timeout", 30*time.Second, "bound on the drain at shutdown")
	flag.Parse()
	beam.Init()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(cfg, *drain, logger); err != nil {
		logger.Error("streaming job", "error", err)
		os.Exit(1)
	}
}

func run(cfg pipelines.StreamingConfig, drain time.Duration, logger *slog.Logger) error {
	runner, err := pipelines.ResolveRunner(*runners.Runner, logger)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if runner == "dataflow" {
		// Dataflow reads its own flags: --project, --region,
		// --staging_location, --temp_location, --dry_run (translate only).
		p, err := pipelines.Streaming(ctx, cfg, runner)
		if err != nil {
			return err
		}
		if _, err := dataflow.Execute(ctx, p); err != nil {
			return fmt.Errorf("submitting to Dataflow: %w", err)
		}
		return nil
	}
	sv := &pipelines.Supervisor{Config: cfg, Logger: logger, DrainTimeout: drain}
	return sv.Run(ctx)
}
