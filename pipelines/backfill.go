package pipelines

import (
	"context"
	"errors"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"

	"github.com/iotpipe/iotpipe/transforms/archivesource"
)

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

// ReadArchive reads the archived raw messages of the files glob matches
// (see archivesource.Read): the messages, stamped with their publish
// times, and the dead letters of lines that are not records.
func ReadArchive(s beam.Scope, glob string) (msgs, dead beam.PCollection) {
	return archivesource.Read(s, glob, archivesource.Config{})
}
