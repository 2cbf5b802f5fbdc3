package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/pipelines/internal/sinktest"
	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/emulators"
	"github.com/iotpipe/iotpipe/testing/stack"
)

// childArgsEnv, when set, makes the test binary run main() with these
// newline-separated arguments: the streaming command as its own OS process.
const childArgsEnv = "IOTPIPE_STREAMING_ARGS"

// syncBuffer collects a child's output while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startJob starts the streaming command as a separate OS process.
func startJob(t *testing.T, emu *emulators.Emulators, args []string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childArgsEnv+"="+strings.Join(args, "\n"))
	for k, v := range emu.Env() {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the streaming job: %v", err)
	}
	return cmd, out
}

// SIGKILL the streaming job's process mid-stream — its prism runner, its
// in-memory state and its open DuckDB file go with it — and start a new
// process: every unique reading ends up in Bigtable and in the warehouse's
// dedup view, once.
func TestKilledProcessLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two streaming processes")
	}
	const project, instance = "p", "i"
	warehouse := filepath.Join(t.TempDir(), "wh.duckdb")
	emu, err := emulators.Start(emulators.Config{WarehousePath: warehouse})
	if err != nil {
		t.Fatal(err)
	}
	defer emu.Close()
	for k, v := range emu.Env() {
		t.Setenv(k, v)
	}
	if err := emu.Provision(context.Background(), stack.Resources(project, instance)); err != nil {
		t.Fatal(err)
	}
	topic := fmt.Sprintf("projects/%s/topics/%s", project, stack.EventsTopic)
	const devices, perDevice = 200, 10
	for seq := 1; seq <= perDevice; seq++ {
		for d := 0; d < devices; d++ {
			payload := fmt.Sprintf(`{"ts":%d,"seq":%d,"metrics":{"temperature":%d}}`, 1700000000000+int64(seq)*1000, seq, d)
			attrs := map[string]string{schemas.AttrDeviceID: fmt.Sprintf("dev-%04d", d)}
			emu.Pubsub.Publish(topic, []byte(payload), attrs)
			if d%10 == 0 { // a device retry: the same reading again
				emu.Pubsub.Publish(topic, []byte(payload), attrs)
			}
		}
	}
	total := int64(len(emu.Pubsub.Messages()))
	args := []string{
		"--input_subscription=" + fmt.Sprintf("projects/%s/subscriptions/%s", project, stack.EventsSubscription),
		"--bigtable_project=" + project, "--bigtable_instance=" + instance,
		"--warehouse=duckdb://" + warehouse,
	}

	first, out1 := startJob(t, emu, args)
	deadline := time.Now().Add(90 * time.Second)
	for emu.PubsubAcks() == 0 {
		if time.Now().After(deadline) {
			first.Process.Kill()
			first.Wait()
			t.Fatalf("no message acked within 90 s; job output:\n%s", out1)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	acked := emu.PubsubAcks()
	if acked >= total {
		t.Fatalf("the whole stream (%d) was acked before the kill; nothing was cut off", acked)
	}
	t.Logf("killed the first process after %d of %d acks", acked, total)

	second, out2 := startJob(t, emu, args)
	deadline = time.Now().Add(120 * time.Second)
	for _, m := range emu.Pubsub.Messages() {
		for emu.Pubsub.Message(m.ID).Acks == 0 {
			if time.Now().After(deadline) {
				second.Process.Kill()
				second.Wait()
				t.Fatalf("message %s not acked within 120 s of the restart; job output:\n%s", m.ID, out2)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// SIGTERM drains: the process exits 0 and releases the DuckDB file.
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Fatalf("restarted job after SIGTERM: %v; output:\n%s", err, out2)
	}

	sinktest.WantEachOnce(t, project, instance, warehouse, devices*perDevice)
}
