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
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/graph/mtime"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/sdf"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/io/fileio"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem/gcs"   // gs:// archives
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/io/filesystem/local" // local archives
	"github.com/apache/beam/sdks/v2/go/pkg/beam/io/rtrackers/offsetrange"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

func init() {
	register.DoFn4x2[context.Context, *sdf.LockRTracker, fileio.ReadableFile, func([]byte), sdf.ProcessContinuation, error](&readFn{})
	register.Emitter1[[]byte]()
	register.DoFn4x0[context.Context, []byte, func(beam.EventTime, pubsubsource.Message), func(schemas.DeadLetter)](&parseFn{})
	register.Emitter2[beam.EventTime, pubsubsource.Message]()
	register.Emitter1[schemas.DeadLetter]()
}

// Stage is the dead-letter stage of archive lines that are not records.
const Stage = "archive"

// DefaultChunkBytes is Config.ChunkBytes when zero.
const DefaultChunkBytes = 4 << 20

// Config tunes the reading.
type Config struct {
	// ChunkBytes is about how much one bundle reads (default 4 MiB): the
	// reader hands lines on in chunks of this size and checkpoints after
	// each, leaving the rest of the file, and the files it has not opened,
	// to the next bundle; the chunks are parsed in bundles of their own,
	// after a fusion break. A runner that finishes a bundle before it moves
	// its output (prism) thus parses chunks in parallel and hands each one's
	// messages on while reading goes on, instead of reading and parsing
	// everything in one bundle, on one core, before anything downstream
	// starts. A file on a filesystem whose readers cannot seek (GCS) is read
	// to the end of its block in one bundle, still in chunks: resuming in
	// it would read it again from its start.
	ChunkBytes int64
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
	if cfg.ChunkBytes <= 0 {
		cfg.ChunkBytes = DefaultChunkBytes
	}
	files := fileio.ReadMatches(s, fileio.MatchFiles(s, glob, fileio.MatchEmptyAllow()), fileio.ReadUncompressed())
	chunks := beam.ParDo(s, &readFn{ChunkBytes: cfg.ChunkBytes}, files)
	return beam.ParDo2(s, &parseFn{}, beam.Reshuffle(s, chunks))
}

// blockBytes is the size of a file's initial restrictions, which a runner
// may hand to different workers.
const blockBytes = 64 << 20

// readFn reads the lines that start within its restriction of byte offsets
// (a line belongs to the restriction its first byte is in), as textio
// does, and emits them in chunks.
type readFn struct {
	ChunkBytes int64

	chunks beam.Counter
	buf    *bufio.Reader
	// read is how many bytes the bundle has read so far.
	read int64
}

func (fn *readFn) Setup() {
	fn.chunks = beam.NewCounter("iotpipe.archive", "chunks")
}

func (fn *readFn) StartBundle(_ context.Context, _ func([]byte)) { fn.read = 0 }

func (fn *readFn) CreateInitialRestriction(file fileio.ReadableFile) offsetrange.Restriction {
	return offsetrange.Restriction{Start: 0, End: file.Metadata.Size}
}

func (fn *readFn) SplitRestriction(_ fileio.ReadableFile, rest offsetrange.Restriction) []offsetrange.Restriction {
	return rest.SizedSplits(blockBytes)
}

func (fn *readFn) RestrictionSize(_ fileio.ReadableFile, rest offsetrange.Restriction) float64 {
	return rest.Size()
}

func (fn *readFn) CreateTracker(rest offsetrange.Restriction) *sdf.LockRTracker {
	return sdf.NewLockRTracker(offsetrange.NewTracker(rest))
}

func (fn *readFn) ProcessElement(ctx context.Context, rt *sdf.LockRTracker, file fileio.ReadableFile, emit func([]byte)) (sdf.ProcessContinuation, error) {
	if fn.read >= fn.ChunkBytes {
		// The bundle has read its share: leave this file, whole, to the next.
		return sdf.ResumeProcessingIn(0), nil
	}
	path := file.Metadata.Path
	rest := rt.GetRestriction().(offsetrange.Restriction)
	fd, err := file.Open(ctx)
	if err != nil {
		return sdf.StopProcessing(), fmt.Errorf("archive: opening %s: %w", path, err)
	}
	defer fd.Close()
	seeker, seekable := fd.(io.Seeker)
	rd := fn.reader(fd)

	// i is the offset of the next line. A restriction that does not start
	// the file starts with the first line that begins at or after its start:
	// read on from the byte before it to the end of that byte's line.
	i := rest.Start
	if i > 0 {
		skip := i - 1
		if seekable {
			_, err = seeker.Seek(skip, io.SeekStart)
			rd.Reset(fd)
		} else {
			_, err = rd.Discard(int(skip))
		}
		if err != nil {
			return sdf.StopProcessing(), fmt.Errorf("archive: %s: moving to byte %d: %w", path, skip, err)
		}
		line, err := readLine(rd, nil)
		if errors.Is(err, io.EOF) {
			rt.TryClaim(rest.End) // no line starts in the restriction
			return sdf.StopProcessing(), nil
		}
		if err != nil {
			return sdf.StopProcessing(), fmt.Errorf("archive: %s: reading from byte %d: %w", path, skip, err)
		}
		i = skip + int64(len(line))
	}

	// chunk is whole lines read and not yet handed on.
	var chunk []byte
	flush := func() {
		if len(chunk) > 0 {
			fn.chunks.Inc(ctx, 1)
			emit(chunk)
		}
		chunk = nil
	}
	for rt.TryClaim(i) {
		if chunk == nil {
			chunk = make([]byte, 0, min(fn.ChunkBytes, 16<<20)+64<<10)
		}
		n := len(chunk)
		chunk, err = readLine(rd, chunk)
		if err != nil && !errors.Is(err, io.EOF) {
			return sdf.StopProcessing(), fmt.Errorf("archive: %s: reading the line at byte %d: %w", path, i, err)
		}
		i += int64(len(chunk) - n)
		fn.read += int64(len(chunk) - n)
		if err != nil { // the file ended inside the restriction
			rt.TryClaim(rest.End)
			break
		}
		if seekable && fn.read >= fn.ChunkBytes {
			// Checkpoint: the runner takes the rest of the restriction
			// (from just after the line claimed last) to a new bundle.
			flush()
			return sdf.ResumeProcessingIn(0), nil
		}
		if int64(len(chunk)) >= fn.ChunkBytes {
			flush()
		}
	}
	flush()
	return sdf.StopProcessing(), nil
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

// parseFn turns a chunk's lines into their messages, or dead letters.
type parseFn struct {
	bad beam.Counter
}

func (fn *parseFn) Setup() {
	fn.bad = beam.NewCounter("iotpipe.archive", "bad_lines")
}

func (fn *parseFn) ProcessElement(ctx context.Context, lines []byte, emit func(beam.EventTime, pubsubsource.Message), dead func(schemas.DeadLetter)) {
	for rest := lines; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			continue
		}
		r, data, err := schemas.ParseArchive(line)
		if err != nil {
			fn.bad.Inc(ctx, 1)
			// A bad line is named by its content, so a re-run
			// dead-letters it onto the same row.
			dead(schemas.NewDeadLetter(Stage, bytes.Clone(line), nil, fmt.Sprintf("line-%x", fnv64(line)), "", 0, time.Now().UnixMilli(), err))
			continue
		}
		emit(mtime.FromMilliseconds(r.PublishMillis), pubsubsource.Message{
			ID: r.ID, Data: data, Attributes: r.Attributes, PublishMillis: r.PublishMillis,
		})
	}
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
