package pipelines_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/bigtable"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"github.com/iotpipe/iotpipe/pipelines"
	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/emulators"
	"github.com/iotpipe/iotpipe/testing/stack"
	"github.com/iotpipe/iotpipe/transforms/validate"
)

func TestMain(m *testing.M) { ptest.Main(m) }

const project, instance = "p", "i"

var deadLetterTopic = fmt.Sprintf("projects/%s/topics/%s", project, stack.DeadLetterTopic)

// startEmulators starts emulators on free ports with the local resources and
// points this process's Google clients at them.
func startEmulators(t testing.TB) *emulators.Emulators {
	t.Helper()
	emu := emulators.StartForTest(t)
	if err := emu.Provision(context.Background(), stack.Resources(project, instance)); err != nil {
		t.Fatal(err)
	}
	return emu
}

// streamingJob is the streaming job on the local events subscription, with
// graph; it reports a failure to tb.
func streamingJob(tb testing.TB, graph pipelines.GraphConfig) *pipelines.Supervisor {
	return &pipelines.Supervisor{
		Config: pipelines.StreamingConfig{
			Subscription: fmt.Sprintf("projects/%s/subscriptions/%s", project, stack.EventsSubscription),
			Graph:        graph,
		},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnFailure: func(err error) { tb.Errorf("streaming job failed: %v", err) },
	}
}

// job is a streaming job running in the background.
type job struct {
	cancel context.CancelFunc
	done   chan struct{} // closed once Run has returned
	err    error         // what Run returned
}

// runJob runs sv in the background until stop, or until tb ends.
func runJob(tb testing.TB, sv *pipelines.Supervisor) *job {
	ctx, cancel := context.WithCancel(context.Background())
	j := &job{cancel: cancel, done: make(chan struct{})}
	go func() {
		j.err = sv.Run(ctx)
		close(j.done)
	}()
	tb.Cleanup(func() {
		cancel()
		select { // a job that does not stop is the test's failure to report, not its cleanup's
		case <-j.done:
		case <-time.After(time.Minute):
		}
	})
	return j
}

// stop drains the job and returns what Run returned.
func (j *job) stop() error {
	j.cancel()
	<-j.done
	return j.err
}

// openTable opens a table of the local Bigtable instance for the rest of tb.
func openTable(tb testing.TB, table string) *bigtable.Table {
	tb.Helper()
	c, err := bigtable.NewClient(context.Background(), project, instance)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c.Open(table)
}

func publish(t *testing.T, emu *emulators.Emulators, device, payload string) string {
	t.Helper()
	return emu.Pubsub.Publish(fmt.Sprintf("projects/%s/topics/%s", project, stack.EventsTopic), []byte(payload),
		map[string]string{schemas.AttrDeviceID: device, schemas.AttrRegistryID: "r", schemas.AttrRegistryRegion: "l", schemas.AttrProjectID: project})
}

// waitRow polls Bigtable until the row exists; the deadline only bounds a failure.
func waitRow(t *testing.T, tbl *bigtable.Table, key string, within time.Duration) bigtable.Row {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		row, err := tbl.ReadRow(context.Background(), key)
		if err != nil {
			t.Fatalf("reading row %q: %v", key, err)
		}
		if row != nil {
			return row
		}
		if time.Now().After(deadline) {
			t.Fatalf("row %q did not appear within %v", key, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func cellValue(row bigtable.Row, family, column string) string {
	for _, item := range row[family] {
		if item.Column == family+":"+column {
			return string(item.Value)
		}
	}
	return ""
}

func TestStreamingWritesReadingsAndDeadLettersThenDrains(t *testing.T) {
	emu := startEmulators(t)
	j := runJob(t, streamingJob(t, pipelines.GraphConfig{BigtableProject: project, BigtableInstance: instance,
		DeadLetterTopic: deadLetterTopic}))

	publish(t, emu, "d1", `{"ts":1700000000000,"seq":1,"metrics":{"temperature":21.5,"humidity":40}}`)
	badID := publish(t, emu, "d1", `{"ts":"yesterday"}`)

	row := waitRow(t, openTable(t, schemas.TelemetryTable), schemas.TelemetryKey("d1", 1700000000000, 1), 30*time.Second)
	if got := cellValue(row, schemas.FamilyMetrics, "temperature"); got != "21.5" {
		t.Errorf("temperature cell = %q, want 21.5", got)
	}
	if got := cellValue(row, schemas.FamilyMetrics, "humidity"); got != "40" {
		t.Errorf("humidity cell = %q, want 40", got)
	}
	bad := emu.Pubsub.Message(badID)
	dl := waitRow(t, openTable(t, schemas.DeadLetterTable), schemas.DeadLetterKey(validate.Stage, bad.PublishTime.UnixMilli(), badID), 10*time.Second)
	if got := cellValue(dl, schemas.FamilyDeadLetter, "payload"); got != `{"ts":"yesterday"}` {
		t.Errorf("dead letter payload = %q", got)
	}
	if got := cellValue(dl, schemas.FamilyDeadLetter, "error"); got == "" {
		t.Error("dead letter has no error message")
	}
	// The dead letter is acked only once it is on the dead-letter topic too.
	waitAcked(t, emu, badID, 10*time.Second)
	var onTopic []string
	for _, m := range emu.Pubsub.Messages() {
		if m.Topic == deadLetterTopic {
			onTopic = append(onTopic, m.ID)
			if string(m.Data) != `{"ts":"yesterday"}` || m.Attributes[schemas.AttrSourceMessageID] != badID ||
				m.Attributes[schemas.AttrDeadLetterStage] != validate.Stage || m.Attributes[schemas.AttrDeadLetterError] == "" ||
				m.Attributes[schemas.AttrDeviceID] != "d1" {
				t.Errorf("dead-letter topic message: data %q, attributes %v", m.Data, m.Attributes)
			}
		}
	}
	if len(onTopic) != 1 {
		t.Errorf("dead-letter topic holds %d messages (%v), want 1", len(onTopic), onTopic)
	}

	// A message published just before the drain is still processed and acked.
	last := publish(t, emu, "d2", `{"ts":1700000000500,"seq":9,"metrics":{"t":1}}`)
	waitAcked(t, emu, last, 10*time.Second)
	j.cancel()
	select {
	case <-j.done:
		if j.err != nil {
			t.Fatalf("drain: %v", j.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("streaming job did not drain within 60 s")
	}
	for _, m := range emu.Pubsub.Messages() {
		if m.Topic != deadLetterTopic && m.Acks == 0 {
			t.Errorf("message %s (%s) was never acked", m.ID, m.Data)
		}
	}
}

func waitAcked(t *testing.T, emu *emulators.Emulators, id string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for emu.Pubsub.Message(id).Acks == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("message %s not acked within %v", id, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A Bigtable outage longer than the write timeout fails the bundle; the
// message is not acked, Pub/Sub redelivers it, and the restarted job writes it.
func TestStreamingRedeliversWhenBigtableWritesFail(t *testing.T) {
	emu := startEmulators(t)
	var failures atomic.Int32
	failed := make(chan struct{}, 1)
	sv := streamingJob(t, pipelines.GraphConfig{BigtableProject: project, BigtableInstance: instance, BigtableWriteTimeout: time.Second})
	sv.OnFailure = func(error) {
		if failures.Add(1) == 1 {
			failed <- struct{}{}
		}
	}
	runJob(t, sv)
	tbl := openTable(t, schemas.TelemetryTable)

	emu.FailBigtableWrites(-1)
	id := publish(t, emu, "d1", `{"ts":1700000000000,"seq":42,"metrics":{"temperature":19}}`)
	select {
	case <-failed:
	case <-time.After(60 * time.Second):
		t.Fatal("the streaming job never failed although every Bigtable write did")
	}
	if emu.BigtableWriteFailures() == 0 {
		t.Fatal("no Bigtable write was refused; the fault was not exercised")
	}
	if acks := emu.Pubsub.Message(id).Acks; acks != 0 {
		t.Fatalf("message acked %d times although its write failed", acks)
	}
	emu.ClearBigtableFaults()

	row := waitRow(t, tbl, schemas.TelemetryKey("d1", 1700000000000, 42), 60*time.Second)
	if got := cellValue(row, schemas.FamilyMetrics, "temperature"); got != "19" {
		t.Errorf("temperature = %q, want 19", got)
	}
	if d := emu.Pubsub.Message(id).Deliveries; d < 2 {
		t.Errorf("message delivered %d times; want a redelivery after the failed write", d)
	}
	waitAcked(t, emu, id, 10*time.Second)
}

// Readings stamped with the current time keep flowing: each reading of one
// device is written while the job runs, not held until its watermark passes
// dedupe's garbage-collection timer a horizon (24 h) ahead. On prism a
// timer that is not yet due holds back every later element of its key, so
// dedupe must never put a reading behind one.
func TestStreamingWritesCurrentReadingsOneAfterAnother(t *testing.T) {
	emu := startEmulators(t)
	runJob(t, streamingJob(t, pipelines.GraphConfig{BigtableProject: project, BigtableInstance: instance}))
	tbl := openTable(t, schemas.TelemetryTable)

	now := time.Now().UnixMilli()
	for seq := int64(1); seq <= 3; seq++ {
		ts := now + seq*1000
		publish(t, emu, "d1", fmt.Sprintf(`{"ts":%d,"seq":%d,"metrics":{"temperature":21.5}}`, ts, seq))
		waitRow(t, tbl, schemas.TelemetryKey("d1", ts, seq), 30*time.Second)
	}
}
