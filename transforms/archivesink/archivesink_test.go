package archivesink

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/passert"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/transforms/pubsubsource"
)

func TestMain(m *testing.M) { ptest.Main(m) }

func init() { register.Function1x1(messageID) }

func messageID(m pubsubsource.Message) string { return m.ID }

func TestPartition(t *testing.T) {
	for ms, want := range map[int64]string{
		1700000000000: "dt=2023-11-14/hour=22",
		1700006399999: "dt=2023-11-14/hour=23",
		1700006400000: "dt=2023-11-15/hour=00",
	} {
		if got := Partition(ms); got != want {
			t.Errorf("Partition(%d) = %s, want %s", ms, got, want)
		}
	}
}

// Every message is archived under its publish hour and handed on; the
// archive reads back as the same messages.
func TestWriteArchivesAndHandsOn(t *testing.T) {
	root := t.TempDir()
	msgs := []pubsubsource.Message{
		{ID: "a", Data: []byte(`{"ts":1}`), Attributes: map[string]string{schemas.AttrDeviceID: "d1"}, PublishMillis: 1700000000000},
		{ID: "b", Data: []byte{0xff, 0x00}, PublishMillis: 1700003600000},
		{ID: "c", Data: []byte(`x`), PublishMillis: 1700000000500},
	}
	p, s := beam.NewPipelineWithRoot()
	out := Write(s, root, beam.CreateList(s, msgs))
	passert.Equals(s, beam.ParDo(s, messageID, out), "a", "b", "c")
	ptest.RunAndValidate(t, p)

	files, err := filepath.Glob(filepath.Join(root, "dt=*", "hour=*", "*.ndjson"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no archive objects under %s (%v)", root, err)
	}
	got := map[string]string{}
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(body)), "\n") {
			r, data, err := schemas.ParseArchive([]byte(line))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if want := Partition(r.PublishMillis); !strings.Contains(f, want) {
				t.Errorf("message %s (published %d) archived in %s, want under %s", r.ID, r.PublishMillis, f, want)
			}
			got[r.ID] = string(data)
		}
	}
	var ids []string
	for id := range got {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if strings.Join(ids, ",") != "a,b,c" || got["b"] != string([]byte{0xff, 0x00}) || got["a"] != `{"ts":1}` {
		t.Errorf("archive holds %q, want the three messages byte for byte", got)
	}
}
