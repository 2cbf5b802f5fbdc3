// Command backfill replays archived raw messages through the streaming job's
// transforms, in batch:
//
//	go run ./pipelines/backfill --input='gs://bucket/raw/dt=2024-01-01/hour=*/*.ndjson' \
//	    --bigtable_project=p --bigtable_instance=iotpipe
//
// Writes are idempotent, so re-running a day adds nothing twice.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"

	"github.com/iotpipe/iotpipe/pipelines"
)

func main() {
	var cfg pipelines.BackfillConfig
	flag.StringVar(&cfg.Input, "input", "", "glob of archived NDJSON files, local or gs://")
	cfg.Graph.RegisterFlags(flag.CommandLine)
	flag.Parse()
	beam.Init()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(cfg, logger); err != nil {
		logger.Error("backfill", "error", err)
		os.Exit(1)
	}
}

func run(cfg pipelines.BackfillConfig, logger *slog.Logger) error {
	runner, err := pipelines.ResolveRunner(*runners.Runner, logger)
	if err != nil {
		return err
	}
	if runner != "prism" {
		return fmt.Errorf("--runner=%s: the backfill runs on prism here; the Dataflow launch path is not built yet", runner)
	}
	p, err := pipelines.Backfill(context.Background(), cfg)
	if err != nil {
		return err
	}
	_, err = prism.Execute(context.Background(), p)
	return err
}
