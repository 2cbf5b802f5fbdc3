// Package pipelines builds iotpipe's transform graph, shared unchanged by the
// streaming job (pipelines/streaming) and the batch backfill (pipelines/backfill).
package pipelines

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/window"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/aggregate"
	"github.com/iotpipe/iotpipe/transforms/alerts"
	"github.com/iotpipe/iotpipe/transforms/archivesink"
	"github.com/iotpipe/iotpipe/transforms/bigtablesink"
	"github.com/iotpipe/iotpipe/transforms/dedupe"
	"github.com/iotpipe/iotpipe/transforms/enrich"
	"github.com/iotpipe/iotpipe/transforms/pubsubsink"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
	"github.com/iotpipe/iotpipe/transforms/validate"
	"github.com/iotpipe/iotpipe/transforms/warehousesink"
)

func init() {
	register.Function1x1(schemas.TelemetryRow)
	register.Function1x1(schemas.DeadLetterRow)
	register.Function1x1(schemas.AggregateRow)
	register.Function1x1(schemas.AlertRow)
	register.Function1x1(deadLetterMessage)
	register.Function1x1(alertMessage)
	register.DoFn2x0[beam.T, func(int)](&countFn{})
	register.Emitter1[int]()
}

// deadLetterMessage is d on the dead-letter topic (see DeadLetter.PubsubMessage).
func deadLetterMessage(d schemas.DeadLetter) pubsubsink.Message {
	data, attrs := d.PubsubMessage()
	return pubsubsink.Message{Data: data, Attributes: attrs, AckID: d.AckID}
}

// alertMessage is a on the alerts topic. Alerts are derived data and carry no receipt.
func alertMessage(a schemas.Alert) pubsubsink.Message {
	data, attrs := a.PubsubMessage()
	return pubsubsink.Message{Data: data, Attributes: attrs}
}

// GraphConfig tunes the graph's transforms and says where it writes.
type GraphConfig struct {
	Validation validate.Config
	Dedupe     dedupe.Config
	Aggregate  aggregate.Config
	Alerts     alerts.Config
	// Reference is the static reference data (Dataset B), CSV or NDJSON,
	// local or gs://; empty means none (every device is unknown to the join).
	Reference string
	// Warehouse, if set, is where readings and dead letters are also
	// written for analytics: duckdb:///path/to/file.duckdb.
	Warehouse string
	// DeadLetterTopic, if set, also receives every dead letter
	// (projects/{p}/topics/{t}): the refused payload and its attributes,
	// plus why (schemas.AttrDeadLetterError and the other iotpipe_* attributes).
	DeadLetterTopic string
	// AlertsTopic, if set, also receives every threshold alert as JSON.
	AlertsTopic string

	BigtableProject  string
	BigtableInstance string
	// BigtableWriteTimeout bounds one bundle's Bigtable write, retries included.
	BigtableWriteTimeout time.Duration
}

// RegisterFlags binds the settings both jobs share to flags on fs, with
// their defaults. Event-time lateness is the streaming job's own flag.
func (c *GraphConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.BigtableProject, "bigtable_project", "", "Bigtable project")
	fs.StringVar(&c.BigtableInstance, "bigtable_instance", "", "Bigtable instance")
	fs.StringVar(&c.Warehouse, "warehouse", "", "also write readings and dead letters here: duckdb:///path/to/file.duckdb or bigquery://project/dataset (BIGQUERY_STORAGE_EMULATOR_HOST points it at a local Storage Write API)")
	fs.StringVar(&c.DeadLetterTopic, "deadletter_topic", "", "also publish dead letters to this Pub/Sub topic (projects/P/topics/T)")
	fs.StringVar(&c.AlertsTopic, "alerts_topic", "", "also publish threshold alerts to this Pub/Sub topic (projects/P/topics/T)")
	fs.StringVar(&c.Reference, "reference", "", "static reference data (Dataset B), CSV or NDJSON, local or gs://")
	fs.DurationVar(&c.Dedupe.Horizon, "dedupe_horizon", 24*time.Hour, "event-time horizon of exact (device, seq) deduplication")
	fs.DurationVar(&c.Validation.MaxFuture, "max_future", 10*time.Minute, "how far ahead of its publish time a reading's ts may be")
	fs.DurationVar(&c.Validation.MaxPast, "max_past", 0, "how far behind its publish time a reading's ts may be (0: no limit)")
	fs.DurationVar(&c.BigtableWriteTimeout, "bigtable_write_timeout", 30*time.Second, "bound on one bundle's Bigtable write, retries included")
}

// Validate reports the first missing or malformed setting.
func (c GraphConfig) Validate() error {
	if c.BigtableProject == "" {
		return fmt.Errorf("bigtable project is empty: set --bigtable_project")
	}
	if c.BigtableInstance == "" {
		return fmt.Errorf("bigtable instance is empty: set --bigtable_instance")
	}
	if c.Warehouse != "" {
		if err := (warehousesink.Config{URL: c.Warehouse}).Validate(); err != nil {
			return fmt.Errorf("--warehouse: %w", err)
		}
	}
	for _, t := range []struct{ flag, topic string }{{"deadletter_topic", c.DeadLetterTopic}, {"alerts_topic", c.AlertsTopic}} {
		if t.topic == "" {
			continue
		}
		if err := (pubsubsink.Config{Topic: t.topic}).Validate(); err != nil {
			return fmt.Errorf("--%s: %w", t.flag, err)
		}
	}
	return nil
}

// Graph applies the shared transforms to raw messages (a PCollection of
// pubsubsource.Message): validate, drop repeated (device, seq), write the
// readings and per-minute aggregates; join the reference data, then write
// threshold alerts. Dead letters a source found itself (PCollections of
// schemas.DeadLetter) join the graph's own.
//
// It returns what its sinks hand back (see Sinks).
func Graph(ctx context.Context, s beam.Scope, cfg GraphConfig, msgs beam.PCollection, sourceDead ...beam.PCollection) (Sinks, error) {
	if cfg.Reference != "" {
		// Fail at start on a missing or malformed file, not in every worker.
		refs, err := enrich.LoadReference(ctx, cfg.Reference)
		if err != nil {
			return Sinks{}, err
		}
		if _, err := enrich.NewIndex(refs); err != nil {
			return Sinks{}, err
		}
		// The dashboard view joins the reference tables. A DuckDB warehouse
		// gets them from the job, at each start; BigQuery's come from a load
		// job (warehousesink.WriteReferenceLoadFiles).
		if wh := (warehousesink.Config{URL: cfg.Warehouse}); cfg.Warehouse != "" && wh.LoadsReference() {
			if err := warehousesink.LoadReference(ctx, wh, refs, time.Now()); err != nil {
				return Sinks{}, fmt.Errorf("loading the reference data into the warehouse: %w", err)
			}
		}
	}
	readings, dead := validate.Validate(s, msgs, cfg.Validation)
	if len(sourceDead) > 0 {
		dead = beam.Flatten(s, append([]beam.PCollection{dead}, sourceDead...)...)
	}
	unique, repeats := dedupe.Dedupe(s, readings, cfg.Dedupe)
	write := func(name, table string, rows beam.PCollection) beam.PCollection {
		return bigtablesink.Write(s.Scope(name), bigtablesink.Config{
			Project: cfg.BigtableProject, Instance: cfg.BigtableInstance,
			Table: table, WriteTimeout: cfg.BigtableWriteTimeout,
		}, rows)
	}
	written := write("Telemetry", schemas.TelemetryTable, beam.ParDo(s, schemas.TelemetryRow, unique))
	deadWritten := write("DeadLetters", schemas.DeadLetterTable, beam.ParDo(s, schemas.DeadLetterRow, dead))

	// Aggregates read the readings before dedupe: their summaries count
	// each (device, seq) once by themselves (aggregate.Accumulator), so they
	// need not wait for dedupe's state.
	aggregated := write("Aggregates", schemas.AggregatesTable, beam.ParDo(s, schemas.AggregateRow, aggregate.PerMinute(s, readings, cfg.Aggregate)))
	enriched := enrich.Enrich(s, unique, cfg.Reference)
	alerted := alerts.Thresholds(s, enriched, cfg.Reference, cfg.Alerts)
	out := Sinks{Derived: []beam.PCollection{aggregated, write("Alerts", schemas.AlertsTable, beam.ParDo(s, schemas.AlertRow, alerted))}}
	if cfg.AlertsTopic != "" {
		out.Derived = append(out.Derived, pubsubsink.Publish(s.Scope("AlertsTopic"), pubsubsink.Config{Topic: cfg.AlertsTopic}, beam.ParDo(s, alertMessage, alerted)))
	}
	groups := []pubsubsource.ReceiptGroup{{written}, {deadWritten}, {repeats}}
	if cfg.DeadLetterTopic != "" {
		groups[1] = append(groups[1], pubsubsink.Publish(s.Scope("DeadLetterTopic"),
			pubsubsink.Config{Topic: cfg.DeadLetterTopic}, beam.ParDo(s, deadLetterMessage, dead)))
	}
	if cfg.Warehouse != "" {
		wh := warehousesink.Config{URL: cfg.Warehouse}
		groups[0] = append(groups[0], warehousesink.Write(s.Scope("Warehouse"), wh, unique))
		groups[1] = append(groups[1], warehousesink.WriteDeadLetters(s.Scope("WarehouseDeadLetters"), wh, dead))
	}
	out.Receipts = groups
	return out, nil
}

// Sinks is what Graph's sinks hand back.
type Sinks struct {
	// Receipts are the receipts of the messages the graph is done with,
	// grouped by the sinks each kind of message must reach: a reading is
	// done once Bigtable (and the warehouse, if set) wrote it, a dead letter
	// likewise, a repeat as soon as dedupe dropped it.
	Receipts []pubsubsource.ReceiptGroup
	// Derived are the outputs of the sinks of derived data (aggregates and
	// alerts), which hold no receipt: on a runner without durable state
	// (prism) a crash can lose the open windows, never a reading, and a
	// backfill recomputes them from the archive.
	Derived []beam.PCollection
}

// all is every PCollection the sinks hand back.
func (k Sinks) all() []beam.PCollection {
	all := slices.Clone(k.Derived)
	for _, g := range k.Receipts {
		all = append(all, g...)
	}
	return all
}

// endStages gives each stage that ends in one of outs (PCollections that
// sinks hand back and nothing else reads) an output the runner carries
// out: one count per bundle, into a Flatten that nothing reads.
//
// Prism (2.77) waits for a bundle's response in a select loop
// (stage.Execute) that, once every output of the bundle has reported done,
// polls that closed channel instead of blocking. In a stage without
// outputs, which is what a stage ending in sinks is, that is from the
// bundle's first moment to its last, and the polling loops of all bundles
// in flight contend on the job's context. Measured on the 1M streaming
// backlog: 25 s of the run's 139 s of CPU in that loop, and the drain at
// 14–18k events/s against 21–24k with the loop fixed in prism. Prism
// carries out a Flatten itself, so a stage writing into one has an output,
// done only when the bundle ends. A Flatten of one PCollection is that
// PCollection, so a lone one is flattened with an empty one.
func endStages(s beam.Scope, outs ...beam.PCollection) {
	s = s.Scope("EndStages")
	counts := make([]beam.PCollection, len(outs))
	for i, o := range outs {
		counts[i] = beam.WindowInto(s, window.NewGlobalWindows(), beam.ParDo(s, &countFn{}, o))
	}
	if len(counts) == 1 {
		counts = append(counts, beam.CreateList(s, []int{}))
	}
	beam.Flatten(s, counts...)
}

// countFn counts a bundle's elements and emits the count at its end.
type countFn struct{ n int }

func (fn *countFn) ProcessElement(_ beam.T, _ func(int)) { fn.n++ }

func (fn *countFn) FinishBundle(emit func(int)) {
	if fn.n > 0 {
		emit(fn.n)
	}
	fn.n = 0
}

// StreamingConfig is the streaming job's configuration.
type StreamingConfig struct {
	// Subscription is projects/{project}/subscriptions/{id}.
	Subscription string
	// Archive, if set, is where every raw message is kept before use
	// (gs://bucket/prefix or a local directory), in the hourly layout the
	// backfill reads.
	Archive string
	Graph   GraphConfig
}

// Validate reports the first missing or malformed setting.
func (c StreamingConfig) Validate() error {
	if _, err := pubsubsource.ValidateSubscription(c.Subscription); err != nil {
		return fmt.Errorf("--input_subscription: %w", err)
	}
	return c.Graph.Validate()
}

// Streaming builds the streaming job for runner ("prism" or "dataflow"):
// the subscription through Graph. On prism the project's own source reads
// and the graph acks at its sinks; Dataflow reads with its native Pub/Sub
// source and acks by itself.
func Streaming(ctx context.Context, cfg StreamingConfig, runner string) (*beam.Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p, s := beam.NewPipelineWithRoot()
	switch runner {
	case "prism":
		msgs := pubsubsource.Read(s, pubsubsource.Config{Subscription: cfg.Subscription})
		if cfg.Archive != "" {
			msgs = archivesink.Write(s, cfg.Archive, msgs)
		}
		sinks, err := Graph(ctx, s, cfg.Graph, msgs)
		if err != nil {
			return nil, err
		}
		acked := pubsubsource.Ack(s, cfg.Subscription, sinks.Receipts...)
		endStages(s, append(sinks.Derived, acked)...)
	case "dataflow":
		msgs, err := pubsubsource.ReadNative(s, cfg.Subscription)
		if err != nil {
			return nil, err
		}
		if cfg.Archive != "" {
			msgs = archivesink.Write(s, cfg.Archive, msgs)
		}
		if _, err := Graph(ctx, s, cfg.Graph, msgs); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("streaming job: unknown runner %q", runner)
	}
	return p, nil
}
