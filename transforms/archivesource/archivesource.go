// Package archivesource reads the raw-message archive back into messages:
// the NDJSON records archivesink writes (schemas.ArchiveRecord lines), local
// or on GCS, for the batch backfill.
package archivesource

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"cloud.google.com/go/storage"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/mtime"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/sdf"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/io/fileio"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem/gcs"   // gs:// archives
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem/local" // local archives
	"github.com/apache/beam/sdks/v2/go/pkg/beam/io/rtrackers/offsetrange"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

func init() {
	register.DoFn4x2[context.Context, *sdf.LockRTracker, fileio.FileMetadata, func(Span), sdf.ProcessContinuation, error](&spanFn{})
	register.Emitter1[Span]()
	register.DoFn4x1[context.Context, Span, func(beam.EventTime, pubsubsource.Message), func(schemas.DeadLetter), error](&readFn{})
	register.Emitter2[beam.EventTime, pubsubsource.Message]()
	register.Emitter1[schemas.DeadLetter]()
}

// Stage is the dead-letter stage of archive lines that are not records.
const Stage = "archive"

// DefaultSpanBytes is Config.SpanBytes when zero.
const DefaultSpanBytes = 4 << 20

// Config tunes the reading.
type Config struct {
	// SpanBytes is about how much of the archive one bundle reads (default
	// 4 MiB). The files are cut into spans of this many bytes, and the
	// spans, which name a file and a byte range and hold no data, are
	// handed on one bundle at a time, each after a checkpoint, and read and
	// parsed after a fusion break. A runner that finishes a bundle before it
	// moves its output (prism) thus reads and parses spans in parallel and
	// hands each one's messages on while the next are read, instead of
	// reading everything in one bundle, on one core, before anything
	// downstream starts; and the archive's bytes never pass through the
	// runner.
	SpanBytes int64
}

// Read reads the archive files glob matches (local, or gs://bucket/prefix/...
// with wildcards; no match reads nothing) and returns the messages
// (PCollection of pubsubsource.Message), each stamped with its original
// publish time, and the dead letters (schemas.DeadLetter) of the lines
// that are not records. Empty lines are skipped. Files are read as they
// are, uncompressed, as archivesink writes them: a compressed file's lines
// are not records, and dead-letter.
func Read(s beam.Scope, glob string, cfg Config) (msgs, dead beam.PCollection) {
	s = s.Scope("archivesource.Read")
	if cfg.SpanBytes <= 0 {
		cfg.SpanBytes = DefaultSpanBytes
	}
	spans := beam.ParDo(s, &spanFn{SpanBytes: cfg.SpanBytes}, fileio.MatchFiles(s, glob, fileio.MatchEmptyAllow()))
	return beam.ParDo2(s, &readFn{}, beam.Reshuffle(s, spans))
}

// Span is the lines of a file that start in its byte range [Start, End):
// a line belongs to the span its first byte is in, as in textio.
type Span struct {
	Path       string
	Start, End int64
}

// blockBytes is the size of a file's initial restrictions, which a runner
// may hand to different workers.
const blockBytes = 64 << 20

// spanFn cuts a file into spans of SpanBytes. A bundle hands on about
// SpanBytes of spans, then checkpoints, leaving the rest of its file, and
// the files it has not started, to the next bundle.
type spanFn struct {
	SpanBytes int64

	spans beam.Counter
	// share is how many bytes of spans the bundle has handed on so far.
	share int64
}

func (fn *spanFn) Setup() {
	fn.spans = beam.NewCounter("iotpipe.archive", "spans")
}

func (fn *spanFn) StartBundle(_ context.Context, _ func(Span)) { fn.share = 0 }

func (fn *spanFn) CreateInitialRestriction(file fileio.FileMetadata) offsetrange.Restriction {
	return offsetrange.Restriction{Start: 0, End: file.Size}
}

func (fn *spanFn) SplitRestriction(_ fileio.FileMetadata, rest offsetrange.Restriction) []offsetrange.Restriction {
	return rest.SizedSplits(blockBytes)
}

func (fn *spanFn) RestrictionSize(_ fileio.FileMetadata, rest offsetrange.Restriction) float64 {
	return rest.Size()
}

func (fn *spanFn) CreateTracker(rest offsetrange.Restriction) *sdf.LockRTracker {
	return sdf.NewLockRTracker(offsetrange.NewTracker(rest))
}

func (fn *spanFn) ProcessElement(ctx context.Context, rt *sdf.LockRTracker, file fileio.FileMetadata, emit func(Span)) (sdf.ProcessContinuation, error) {
	rest := rt.GetRestriction().(offsetrange.Restriction)
	for start := rest.Start; start < rest.End; {
		if fn.share >= fn.SpanBytes {
			// Checkpoint: the runner takes the rest of the restriction
			// (from just after the span claimed last) to a new bundle.
			return sdf.ResumeProcessingIn(0), nil
		}
		end := min(start+fn.SpanBytes, rest.End)
		// Claiming a span's last offset claims the whole span.
		if !rt.TryClaim(end - 1) {
			return sdf.StopProcessing(), nil
		}
		fn.spans.Inc(ctx, 1)
		emit(Span{Path: file.Path, Start: start, End: end})
		fn.share += end - start
		start = end
	}
	rt.TryClaim(rest.End) // done: nothing is left to claim
	return sdf.StopProcessing(), nil
}

// readFn reads a span's lines and parses them into their messages, or dead
// letters.
type readFn struct {
	bad    beam.Counter
	buf    *bufio.Reader
	line   []byte
	parser schemas.ArchiveParser
	files  map[string]filesystem.Interface
	client *storage.Client
}

func (fn *readFn) Setup() {
	fn.bad = beam.NewCounter("iotpipe.archive", "bad_lines")
	fn.files = map[string]filesystem.Interface{}
}

func (fn *readFn) Teardown() error {
	var errs []error
	for _, f := range fn.files {
		errs = append(errs, f.Close())
	}
	if fn.client != nil {
		errs = append(errs, fn.client.Close())
	}
	return errors.Join(errs...)
}

func (fn *readFn) ProcessElement(ctx context.Context, span Span, emit func(beam.EventTime, pubsubsource.Message), dead func(schemas.DeadLetter)) error {
	// A span that does not start its file starts with the first line that
	// begins at or after its start: read on from the byte before it to the
	// end of that byte's line.
	from := max(span.Start-1, 0)
	rc, err := fn.openAt(ctx, span.Path, from)
	if err != nil {
		return fmt.Errorf("archive: %s: opening at byte %d: %w", span.Path, from, err)
	}
	defer rc.Close()
	rd := fn.reader(rc)
	i := from
	if span.Start > 0 {
		fn.line, err = readLine(rd, fn.line[:0])
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("archive: %s: reading from byte %d: %w", span.Path, from, err)
		}
		i += int64(len(fn.line))
	}
	for i < span.End {
		fn.line, err = readLine(rd, fn.line[:0])
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("archive: %s: reading the line at byte %d: %w", span.Path, i, err)
		}
		i += int64(len(fn.line))
		fn.parse(ctx, fn.line, emit, dead)
		if err != nil { // the end of the file
			break
		}
	}
	return nil
}

// parse emits line's message, or its dead letter; an empty line is skipped.
func (fn *readFn) parse(ctx context.Context, line []byte, emit func(beam.EventTime, pubsubsource.Message), dead func(schemas.DeadLetter)) {
	line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	if len(line) == 0 {
		return
	}
	r, data, err := fn.parser.Parse(line)
	if err != nil {
		fn.bad.Inc(ctx, 1)
		// A bad line is named by its content, so a re-run dead-letters it
		// onto the same row.
		dead(schemas.NewDeadLetter(Stage, bytes.Clone(line), nil, fmt.Sprintf("line-%x", fnv64(line)), "", 0, time.Now().UnixMilli(), err))
		return
	}
	emit(mtime.FromMilliseconds(r.PublishMillis), pubsubsource.Message{
		ID: r.ID, Data: data, Attributes: r.Attributes, PublishMillis: r.PublishMillis,
	})
}

// openAt opens the file at path for reading from byte off: a GCS object
// with a ranged read, any other file through its Beam filesystem.
func (fn *readFn) openAt(ctx context.Context, path string, off int64) (io.ReadCloser, error) {
	if rest, ok := strings.CutPrefix(path, "gs://"); ok {
		bucket, object, _ := strings.Cut(rest, "/")
		if bucket == "" || object == "" {
			return nil, fmt.Errorf("want gs://bucket/object")
		}
		if fn.client == nil {
			c, err := storage.NewClient(ctx) // honours STORAGE_EMULATOR_HOST
			if err != nil {
				return nil, err
			}
			fn.client = c
		}
		return fn.client.Bucket(bucket).Object(object).NewRangeReader(ctx, off, -1)
	}
	scheme, _, _ := strings.Cut(path, "://")
	f := fn.files[scheme]
	if f == nil {
		var err error
		if f, err = filesystem.New(ctx, path); err != nil {
			return nil, err
		}
		fn.files[scheme] = f
	}
	rc, err := f.OpenRead(ctx, path)
	if err != nil {
		return nil, err
	}
	if seeker, ok := rc.(io.Seeker); ok {
		_, err = seeker.Seek(off, io.SeekStart)
	} else {
		_, err = io.CopyN(io.Discard, rc, off)
	}
	if err != nil {
		rc.Close()
		return nil, err
	}
	return rc, nil
}

// reader is fn's buffered reader, reset onto r.
func (fn *readFn) reader(r io.Reader) *bufio.Reader {
	if fn.buf == nil {
		fn.buf = bufio.NewReaderSize(r, 256<<10)
	} else {
		fn.buf.Reset(r)
	}
	return fn.buf
}

// readLine appends the next line of rd to buf, its newline included (none
// at the end of the file, where err is io.EOF).
func readLine(rd *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		part, err := rd.ReadSlice('\n')
		buf = append(buf, part...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			return buf, err
		}
	}
}

// fnv64 is the FNV-1a hash of b.
func fnv64(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}
