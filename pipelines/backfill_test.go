package pipelines_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigtable"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"

	"github.com/iotpipe/iotpipe/pipelines"
	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/stack"
)

// The streaming job and the backfill run one graph: the same messages, live
// through Pub/Sub or replayed from the archive, give the same tables; and a
// re-run of the backfill adds nothing.
func TestStreamingAndBackfillWriteTheSameRows(t *testing.T) {
	emu := startEmulators(t)
	for _, inst := range []string{"streamed", "backfilled"} {
		r := stack.Resources(project, inst)
		r.Topics, r.Subscriptions = nil, nil
		if err := emu.Provision(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	// Readings a minute or two ahead of their publish time (within the
	// allowed skew), so their windows are still open when the streaming job
	// reads them: both jobs then close every window on time, and the
	// aggregates and alerts must match too.
	base := time.Now().Truncate(time.Minute).Add(2 * time.Minute).UnixMilli()
	reading := func(offset int64, rest string) string { return fmt.Sprintf(`{"ts":%d,%s}`, base+offset, rest) }
	payloads := []struct{ device, data string }{
		{"d1", reading(0, `"seq":1,"metrics":{"temperature":21.5}`)},
		{"d1", reading(60000, `"seq":2,"metrics":{"temperature":32,"humidity":40}`)},  // above d1's threshold
		{"d1", reading(0, `"seq":1,"metrics":{"temperature":21.5}`)},                  // device retry: same (device, seq)
		{"d1", reading(1000, `"seq":3,"metrics":{"temperature":35},"buffered":true`)}, // buffered: aggregated, not alerted
		{"d2", reading(-10000, `"seq":7,"metrics":{"power_w":120}`)},
		{"d2", reading(-20000, `"seq":6,"metrics":{"power_w":110}`)}, // out of order
		{"d2", `{"seq":8}`}, // no ts: dead letter
		{"d3", "\xff\xfe not even text"},
	}
	reference := filepath.Join(t.TempDir(), "reference.csv")
	if err := os.WriteFile(reference, []byte("device_id,site,location,device_class,owner,thresholds\nd1,plant-a,hall-1,generic,ops,temperature::30\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range payloads {
		publish(t, emu, p.device, p.data)
	}

	// Streaming, until every message is acked, then drain.
	j := runJob(t, streamingJob(t, pipelines.GraphConfig{BigtableProject: project, BigtableInstance: "streamed", Reference: reference}))
	for _, m := range emu.Pubsub.Messages() {
		waitAcked(t, emu, m.ID, 30*time.Second)
	}
	if err := j.stop(); err != nil {
		t.Fatal(err)
	}

	// The archive of the same messages, replayed twice.
	dir := filepath.Join(t.TempDir(), time.UnixMilli(base).UTC().Format("dt=2006-01-02/hour=15"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, m := range emu.Pubsub.Messages() {
		line, err := schemas.MarshalArchive(m.ID, m.PublishTime.UnixMilli(), m.Attributes, m.Data)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(line))
	}
	lines = append(lines, "this line is not an archive record")
	if err := os.WriteFile(filepath.Join(dir, "part-0.ndjson"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runBackfill := func() {
		p, err := pipelines.Backfill(context.Background(), pipelines.BackfillConfig{
			Input: filepath.Join(filepath.Dir(filepath.Dir(dir)), "dt=*", "hour=*", "*.ndjson"),
			Graph: pipelines.GraphConfig{BigtableProject: project, BigtableInstance: "backfilled", Reference: reference},
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := prism.Execute(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	runBackfill()

	streamed := dump(t, "streamed", schemas.TelemetryTable)
	backfilled := dump(t, "backfilled", schemas.TelemetryTable)
	if len(streamed) != 5 {
		t.Errorf("streamed telemetry has %d rows, want 5 (unique readings):\n%s", len(streamed), strings.Join(streamed, "\n"))
	}
	if a, b := strings.Join(streamed, "\n"), strings.Join(backfilled, "\n"); a != b {
		t.Errorf("telemetry differs:\nstreamed:\n%s\nbackfilled:\n%s", a, b)
	}
	streamedDead := dump(t, "streamed", schemas.DeadLetterTable)
	backfilledDead := dump(t, "backfilled", schemas.DeadLetterTable)
	if len(streamedDead) != 2 {
		t.Errorf("streamed dead letters: %d rows, want 2:\n%s", len(streamedDead), strings.Join(streamedDead, "\n"))
	}
	// The backfill also dead-letters the line that is not a record.
	if got, want := strings.Join(backfilledDead, "\n"), strings.Join(streamedDead, "\n"); !strings.Contains(got, want) || len(backfilledDead) != 3 {
		t.Errorf("dead letters differ:\nstreamed:\n%s\nbackfilled:\n%s", want, got)
	}

	for _, tc := range []struct {
		table string
		rows  int
	}{
		// d1: temperature in two minutes, humidity in one; d2: power_w in one.
		{schemas.AggregatesTable, 4},
		// d1 seq 2 only: seq 3 is buffered.
		{schemas.AlertsTable, 1},
	} {
		streamed, backfilled := dump(t, "streamed", tc.table), dump(t, "backfilled", tc.table)
		if len(streamed) != tc.rows {
			t.Errorf("streamed %s: %d rows, want %d:\n%s", tc.table, len(streamed), tc.rows, strings.Join(streamed, "\n"))
		}
		if a, b := strings.Join(streamed, "\n"), strings.Join(backfilled, "\n"); a != b {
			t.Errorf("%s differ:\nstreamed:\n%s\nbackfilled:\n%s", tc.table, a, b)
		}
	}

	runBackfill()
	if again := dump(t, "backfilled", schemas.TelemetryTable); strings.Join(again, "\n") != strings.Join(backfilled, "\n") {
		t.Errorf("re-running the backfill changed the table:\nbefore:\n%s\nafter:\n%s", strings.Join(backfilled, "\n"), strings.Join(again, "\n"))
	}
}

// dump lists a table as one line per row, cells sorted, every version shown,
// leaving out the wall-clock column dead_lettered_ms.
func dump(t *testing.T, instance, table string) []string {
	t.Helper()
	c, err := bigtable.NewClient(context.Background(), project, instance)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var rows []string
	err = c.Open(table).ReadRows(context.Background(), bigtable.InfiniteRange(""), func(r bigtable.Row) bool {
		var cells []string
		for _, items := range r {
			for _, it := range items {
				if strings.HasSuffix(it.Column, ":dead_lettered_ms") {
					continue
				}
				cells = append(cells, fmt.Sprintf("%s=%q@%d", it.Column, it.Value, it.Timestamp))
			}
		}
		sort.Strings(cells)
		rows = append(rows, r.Key()+" "+strings.Join(cells, " "))
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return rows
}
