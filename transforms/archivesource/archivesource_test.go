package archivesource

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/core/metrics"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	"github.com/fsouza/fake-gcs-server/fakestorage"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/emulators"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

func TestMain(m *testing.M) { ptest.Main(m) }

func init() {
	register.Function2x1(stamped)
	register.Function1x1(deadSummary)
}

// stamped is a message as its id, publish time, element timestamp and payload length.
func stamped(ts beam.EventTime, m pubsubsource.Message) string {
	return fmt.Sprintf("%s@%d/%d/%d", m.ID, m.PublishMillis, ts.Milliseconds(), len(m.Data))
}

func deadSummary(d schemas.DeadLetter) string { return d.Stage + ":" + d.PayloadString }

// archiveLine is the record of message i, whose payload is size bytes.
func archiveLine(t *testing.T, i, size int) (line []byte, want string) {
	t.Helper()
	data := []byte(fmt.Sprintf(`{"ts":%d,"seq":%d,"pad":"%s"}`, 1700000000000+i, i, strings.Repeat("x", max(0, size-40))))
	line, err := schemas.MarshalArchive(fmt.Sprintf("m%d", i), 1700000000000+int64(i), map[string]string{schemas.AttrDeviceID: "d"}, data)
	if err != nil {
		t.Fatal(err)
	}
	return line, fmt.Sprintf("m%d@%d/%d/%d", i, 1700000000000+i, 1700000000000+i, len(data))
}

// alignedLine is the record of message i as a line of exactly size bytes,
// its newline included.
func alignedLine(t *testing.T, i, size int) (line []byte, want string) {
	t.Helper()
	for pad := size; pad > 0; pad-- {
		if line, want = archiveLine(t, i, pad); len(line)+1 == size {
			return append(line, '\n'), want
		}
	}
	t.Fatalf("no payload makes record %d a line of %d bytes", i, size)
	return nil, ""
}

// Every record of every file comes out exactly once, stamped with its
// publish time, however the files are cut into spans and bundles: spans
// far smaller than a line, a line longer than the reader's buffer, CRLF and
// empty lines, a bad line, a last line without a newline, and files smaller
// than a span.
func TestReadEveryRecordOnce(t *testing.T) {
	dir := t.TempDir()
	var want []any
	var big strings.Builder
	for i := 0; i < 2000; i++ {
		size := 60
		if i == 700 {
			size = 600 << 10 // longer than the 256 KiB buffer
		}
		line, w := archiveLine(t, i, size)
		want = append(want, w)
		big.Write(line)
		switch i {
		case 10:
			big.WriteString("\r\n")
		case 20:
			big.WriteString("\n\n") // an empty line
		case 30:
			big.WriteString("\nnot a record")
			fallthrough
		default:
			big.WriteString("\n")
		}
	}
	small, w := archiveLine(t, 5000, 60) // no newline at its end
	want = append(want, w)
	files := map[string][]byte{"a.ndjson": []byte(big.String()), "b.ndjson": small, "empty.ndjson": nil}
	// Many files of a few records each: a bundle reads its share of them
	// and leaves the rest to the next.
	for f := 0; f < 40; f++ {
		var body []byte
		for i := 6000 + 10*f; i < 6000+10*f+10; i++ {
			line, w := archiveLine(t, i, 200)
			want = append(want, w)
			body = append(append(body, line...), '\n')
		}
		files[fmt.Sprintf("small-%02d.ndjson", f)] = body
	}
	// Lines of exactly 1 KiB, so that every span of 4 KiB starts and ends
	// on a line's first byte.
	var aligned []byte
	for i := 8000; i < 8040; i++ {
		line, w := alignedLine(t, i, 1<<10)
		want = append(want, w)
		aligned = append(aligned, line...)
	}
	files["aligned.ndjson"] = aligned
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	p, s := beam.NewPipelineWithRoot()
	msgs, dead := Read(s, filepath.Join(dir, "*.ndjson"), Config{SpanBytes: 4 << 10})
	passert.Equals(s, beam.ParDo(s, stamped, msgs), want...)
	passert.Equals(s, beam.ParDo(s, deadSummary, dead), Stage+":not a record")
	res, err := ptest.RunWithMetrics(p)
	if err != nil {
		t.Fatal(err)
	}
	counters := map[string]int64{}
	for _, c := range res.Metrics().Query(func(r metrics.SingleResult) bool { return r.Namespace() == "iotpipe.archive" }).Counters() {
		counters[c.Name()] += c.Result()
	}
	if counters["bad_lines"] != 1 {
		t.Errorf("bad_lines = %d, want 1", counters["bad_lines"])
	}
	// About 150 KB of small lines and one of 600 KB in a.ndjson, and 40
	// files of 3 KB, in spans of 4 KiB.
	if counters["spans"] < 220 {
		t.Errorf("spans = %d, want at least 220", counters["spans"])
	}
}

// On GCS every record comes out once too: a span is a ranged read of its
// object.
func TestReadFromGCS(t *testing.T) {
	emu := emulators.StartForTest(t)
	emu.GCS.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: "archive"})
	var want []any
	for f := 0; f < 5; f++ {
		var body []byte
		for i := 100 * f; i < 100*f+50; i++ {
			line, w := archiveLine(t, i, 100)
			want = append(want, w)
			body = append(append(body, line...), '\n')
		}
		emu.GCS.CreateObject(fakestorage.Object{
			ObjectAttrs: fakestorage.ObjectAttrs{BucketName: "archive", Name: fmt.Sprintf("raw/dt=2023-11-14/hour=22/part-%d.ndjson", f)},
			Content:     body,
		})
	}
	p, s := beam.NewPipelineWithRoot()
	msgs, dead := Read(s, "gs://archive/raw/dt=*/hour=*/*.ndjson", Config{SpanBytes: 4 << 10})
	passert.Equals(s, beam.ParDo(s, stamped, msgs), want...)
	passert.Empty(s, dead)
	ptest.RunAndValidate(t, p)
}
