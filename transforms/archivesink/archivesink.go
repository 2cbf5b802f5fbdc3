// Package archivesink keeps every raw message in the archive (GCS or a local
// directory) as NDJSON in hourly partitions, before the pipeline uses it.
package archivesink

import (
	"context"
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/mtime"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem/gcs"   // gs:// archives
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem/local" // local archives
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

func init() {
	register.DoFn3x1[context.Context, pubsubsource.Message, func(beam.EventTime, pubsubsource.Message), error](&writeFn{})
	register.Emitter2[beam.EventTime, pubsubsource.Message]()
}

// Partition is the archive object prefix of a message published at
// publishMillis: dt=YYYY-MM-DD/hour=HH (UTC). The backfill reads exactly
// this layout, e.g. --input=gs://bucket/raw/dt=2024-01-01/hour=*/*.ndjson.
func Partition(publishMillis int64) string {
	t := time.UnixMilli(publishMillis).UTC()
	return fmt.Sprintf("dt=%s/hour=%02d", t.Format("2006-01-02"), t.Hour())
}

// Write archives the messages (PCollection of pubsubsource.Message) under
// root (gs://bucket/prefix or a local directory) and returns the same
// messages once their bundle's objects are written: whatever reads the
// output reads only archived messages. Each bundle writes one object per
// hour partition it touches, named from the messages it holds, so a
// retried bundle rewrites the same object.
func Write(s beam.Scope, root string, msgs beam.PCollection) beam.PCollection {
	s = s.Scope("archivesink.Write")
	return beam.ParDo(s, &writeFn{Root: strings.TrimSuffix(root, "/")}, msgs)
}

type writeFn struct {
	Root string

	fs      filesystem.Interface
	pending []pubsubsource.Message
	objects beam.Counter
	records beam.Counter
}

func (fn *writeFn) Setup(ctx context.Context) error {
	var err error
	fn.fs, err = filesystem.New(ctx, fn.Root+"/")
	if err != nil {
		return fmt.Errorf("archive %s: %w", fn.Root, err)
	}
	fn.objects = beam.NewCounter("iotpipe.archive", "objects_written")
	fn.records = beam.NewCounter("iotpipe.archive", "messages_archived")
	return nil
}

func (fn *writeFn) Teardown() error {
	if fn.fs == nil {
		return nil
	}
	return fn.fs.Close()
}

func (fn *writeFn) StartBundle(context.Context, func(beam.EventTime, pubsubsource.Message)) {
	fn.pending = fn.pending[:0]
}

func (fn *writeFn) ProcessElement(_ context.Context, m pubsubsource.Message, _ func(beam.EventTime, pubsubsource.Message)) error {
	fn.pending = append(fn.pending, m)
	return nil
}

func (fn *writeFn) FinishBundle(ctx context.Context, emit func(beam.EventTime, pubsubsource.Message)) error {
	byPartition := map[string][]pubsubsource.Message{}
	for _, m := range fn.pending {
		p := Partition(m.PublishMillis)
		byPartition[p] = append(byPartition[p], m)
	}
	for part, msgs := range byPartition {
		if err := fn.writeObject(ctx, part, msgs); err != nil {
			return err
		}
	}
	for _, m := range fn.pending {
		emit(mtime.FromMilliseconds(m.PublishMillis), m)
	}
	fn.pending = fn.pending[:0]
	return nil
}

func (fn *writeFn) writeObject(ctx context.Context, part string, msgs []pubsubsource.Message) error {
	sort.Slice(msgs, func(i, j int) bool {
		if msgs[i].PublishMillis != msgs[j].PublishMillis {
			return msgs[i].PublishMillis < msgs[j].PublishMillis
		}
		return msgs[i].ID < msgs[j].ID
	})
	h := fnv.New64a()
	var body []byte
	for _, m := range msgs {
		h.Write([]byte(m.ID))
		line, err := schemas.MarshalArchive(m.ID, m.PublishMillis, m.Attributes, m.Data)
		if err != nil {
			return fmt.Errorf("archive: encoding message %s: %w", m.ID, err)
		}
		body = append(append(body, line...), '\n')
	}
	name := fmt.Sprintf("%s/%s/%013d-%016x.ndjson", fn.Root, part, msgs[0].PublishMillis, h.Sum64())
	w, err := fn.fs.OpenWrite(ctx, name)
	if err != nil {
		return fmt.Errorf("archive: opening %s: %w", name, err)
	}
	if _, err := w.Write(body); err != nil {
		w.Close()
		return fmt.Errorf("archive: writing %s: %w", name, err)
	}
	// For GCS the object exists only once Close succeeds.
	if err := w.Close(); err != nil {
		return fmt.Errorf("archive: finishing %s: %w", name, err)
	}
	fn.objects.Inc(ctx, 1)
	fn.records.Inc(ctx, int64(len(msgs)))
	return nil
}
