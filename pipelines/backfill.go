package pipelines

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/mtime"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem/gcs"   // gs:// archives
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem/local" // local archives
	"github.com/apache/beam/sdks/v2/go/pkg/beam/io/textio"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

func init() {
	register.DoFn4x0[context.Context, string, func(beam.EventTime, pubsubsource.Message), func(schemas.DeadLetter)](&archiveFn{})
	register.Emitter2[beam.EventTime, pubsubsource.Message]()
	register.Emitter1[schemas.DeadLetter]()
}

// BackfillConfig is the batch job's configuration.
type BackfillConfig struct {
	// Input is a file glob of archived raw messages (schemas.ArchiveRecord
	// lines), local or gs://bucket/prefix/dt=2024-01-01/hour=*/*.ndjson.
	Input string
	Graph GraphConfig
}

// Validate reports the first missing or malformed setting.
func (c BackfillConfig) Validate() error {
	if c.Input == "" {
		return errors.New("--input is empty: give a glob of archived NDJSON files")
	}
	return c.Graph.Validate()
}

// Backfill builds the batch job: the archive through the same Graph as the
// streaming job. Its writes are idempotent, so re-running a day rewrites the
// same rows and adds none.
func Backfill(ctx context.Context, cfg BackfillConfig) (*beam.Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p, s := beam.NewPipelineWithRoot()
	msgs, dead := ReadArchive(s, cfg.Input)
	sinks, err := Graph(ctx, s, cfg.Graph, msgs, dead)
	if err != nil {
		return nil, err
	}
	endStages(s, sinks.all()...)
	return p, nil
}

// ReadArchive reads the archived raw messages (schemas.ArchiveRecord lines)
// of the files glob matches: the messages (PCollection of
// pubsubsource.Message), each stamped with its original publish time, and
// the dead letters (schemas.DeadLetter) of lines that are not records.
func ReadArchive(s beam.Scope, glob string) (msgs, dead beam.PCollection) {
	lines := textio.Read(s.Scope("ReadArchive"), glob)
	return beam.ParDo2(s, &archiveFn{}, lines)
}

// ArchiveStage is the dead-letter stage of archive lines that are not records.
const ArchiveStage = "archive"

// archiveFn turns archive lines back into the messages they were, stamped
// with their original publish time.
type archiveFn struct {
	bad beam.Counter
}

func (fn *archiveFn) Setup() { fn.bad = beam.NewCounter("iotpipe.backfill", "bad_archive_lines") }

func (fn *archiveFn) ProcessElement(ctx context.Context, line string, emit func(beam.EventTime, pubsubsource.Message), dead func(schemas.DeadLetter)) {
	if line == "" {
		return
	}
	r, data, err := schemas.ParseArchive([]byte(line))
	if err != nil {
		fn.bad.Inc(ctx, 1)
		dead(schemas.NewDeadLetter(ArchiveStage, []byte(line), nil, fmt.Sprintf("line-%x", fnv64(line)), "", 0, time.Now().UnixMilli(), err))
		return
	}
	emit(mtime.FromMilliseconds(r.PublishMillis), pubsubsource.Message{
		ID: r.ID, Data: data, Attributes: r.Attributes, PublishMillis: r.PublishMillis,
	})
}

// fnv64 names a bad line deterministically, so a re-run dead-letters it onto the same row.
func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
