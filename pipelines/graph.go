// Package pipelines builds iotpipe's transform graph, shared unchanged by the
// streaming job (pipelines/streaming) and the batch backfill (pipelines/backfill).
package pipelines

import (
	"fmt"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/bigtablesink"
	"github.com/iotpipe/iotpipe/transforms/dedupe"
	"github.com/iotpipe/iotpipe/transforms/parse"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

func init() {
	register.Function1x1(schemas.TelemetryRow)
	register.Function1x1(schemas.DeadLetterRow)
}

// SinkConfig says where the graph writes.
type SinkConfig struct {
	BigtableProject  string
	BigtableInstance string
	// BigtableWriteTimeout bounds one bundle's Bigtable write, retries included.
	BigtableWriteTimeout time.Duration
	Dedupe               dedupe.Config
}

// Validate reports the first missing or malformed setting.
func (c SinkConfig) Validate() error {
	if c.BigtableProject == "" {
		return fmt.Errorf("bigtable project is empty: set --bigtable_project")
	}
	if c.BigtableInstance == "" {
		return fmt.Errorf("bigtable instance is empty: set --bigtable_instance")
	}
	return nil
}

// Graph applies the shared transforms to raw messages (a PCollection of
// pubsubsource.Message): parse, drop repeated (device, seq), then write
// readings and dead letters. It returns the receipts (PCollections of
// string) of the messages it is done with: written, or dropped as repeats.
// Dead letters a source found itself (PCollections of schemas.DeadLetter)
// join the graph's own.
func Graph(s beam.Scope, cfg SinkConfig, msgs beam.PCollection, sourceDead ...beam.PCollection) []beam.PCollection {
	events, dead := parse.Parse(s, msgs)
	if len(sourceDead) > 0 {
		dead = beam.Flatten(s, append([]beam.PCollection{dead}, sourceDead...)...)
	}
	events, repeats := dedupe.Dedupe(s, events, cfg.Dedupe)
	written := bigtablesink.Write(s.Scope("Telemetry"), bigtablesink.Config{
		Project: cfg.BigtableProject, Instance: cfg.BigtableInstance,
		Table: schemas.TelemetryTable, WriteTimeout: cfg.BigtableWriteTimeout,
	}, beam.ParDo(s, schemas.TelemetryRow, events))
	deadWritten := bigtablesink.Write(s.Scope("DeadLetters"), bigtablesink.Config{
		Project: cfg.BigtableProject, Instance: cfg.BigtableInstance,
		Table: schemas.DeadLetterTable, WriteTimeout: cfg.BigtableWriteTimeout,
	}, beam.ParDo(s, schemas.DeadLetterRow, dead))
	return []beam.PCollection{written, deadWritten, repeats}
}

// StreamingConfig is the streaming job's configuration.
type StreamingConfig struct {
	// Subscription is projects/{project}/subscriptions/{id}.
	Subscription string
	Sinks        SinkConfig
}

// Validate reports the first missing or malformed setting.
func (c StreamingConfig) Validate() error {
	if _, err := pubsubsource.ValidateSubscription(c.Subscription); err != nil {
		return fmt.Errorf("--input_subscription: %w", err)
	}
	return c.Sinks.Validate()
}

// Streaming builds the streaming job for runner ("prism" or "dataflow"):
// the subscription through Graph. On prism the project's own source reads
// and the graph acks at its sinks; Dataflow reads with its native Pub/Sub
// source and acks by itself.
func Streaming(cfg StreamingConfig, runner string) (*beam.Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p, s := beam.NewPipelineWithRoot()
	switch runner {
	case "prism":
		msgs := pubsubsource.Read(s, pubsubsource.Config{Subscription: cfg.Subscription})
		pubsubsource.Ack(s, cfg.Subscription, Graph(s, cfg.Sinks, msgs)...)
	case "dataflow":
		msgs, err := pubsubsource.ReadNative(s, cfg.Subscription)
		if err != nil {
			return nil, err
		}
		Graph(s, cfg.Sinks, msgs)
	default:
		return nil, fmt.Errorf("streaming job: unknown runner %q", runner)
	}
	return p, nil
}
