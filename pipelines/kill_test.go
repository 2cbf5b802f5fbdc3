package pipelines_test

import (
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/pipelines"
	"github.com/iotpipe/iotpipe/pipelines/internal/sinktest"
	"github.com/iotpipe/iotpipe/testing/stack"
)

// Kill the streaming job mid-stream (cancelled, not drained: its in-memory
// state is gone) and start it again: every unique reading ends up in
// Bigtable and in the warehouse's dedup view, once.
func TestKilledJobLosesNothing(t *testing.T) {
	emu := startEmulators(t)
	path := filepath.Join(t.TempDir(), "wh.duckdb")
	const devices, perDevice = 200, 10
	for seq := 1; seq <= perDevice; seq++ {
		for d := 0; d < devices; d++ {
			payload := fmt.Sprintf(`{"ts":%d,"seq":%d,"metrics":{"temperature":%d}}`, 1700000000000+int64(seq)*1000, seq, d)
			publish(t, emu, fmt.Sprintf("dev-%04d", d), payload)
			if d%10 == 0 { // a device retry: the same reading again
				publish(t, emu, fmt.Sprintf("dev-%04d", d), payload)
			}
		}
	}
	total := len(emu.Pubsub.Messages())
	cfg := pipelines.StreamingConfig{
		Subscription: fmt.Sprintf("projects/%s/subscriptions/%s", project, stack.EventsSubscription),
		Graph:        pipelines.GraphConfig{BigtableProject: project, BigtableInstance: instance, Warehouse: "duckdb://" + path},
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))

	// First run: killed once part of the stream is through. A drain timeout
	// of 1 ns turns the stop into an immediate cancel.
	killed := runJob(t, &pipelines.Supervisor{Config: cfg, Logger: logger, DrainTimeout: time.Nanosecond})
	deadline := time.Now().Add(60 * time.Second)
	for emu.PubsubAcks() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d messages acked before the kill", emu.PubsubAcks(), total)
		}
		time.Sleep(5 * time.Millisecond)
	}
	killed.stop() // a cancelled job may report an error; what matters is what it left behind
	if acked := emu.PubsubAcks(); acked >= int64(total) {
		t.Fatalf("the whole stream (%d) was acked before the kill; nothing was cut off", acked)
	}

	// Second run: reads what the first left unacked, including what the
	// killed job held in memory (redelivered once its lease lapses).
	restarted := runJob(t, &pipelines.Supervisor{Config: cfg, Logger: logger,
		OnFailure: func(err error) { t.Errorf("restarted job failed: %v", err) }})
	for _, m := range emu.Pubsub.Messages() {
		waitAcked(t, emu, m.ID, 90*time.Second)
	}
	if err := restarted.stop(); err != nil {
		t.Fatal(err)
	}

	sinktest.WantEachOnce(t, project, instance, path, devices*perDevice)
}
