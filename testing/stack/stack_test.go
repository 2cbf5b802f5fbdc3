package stack_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/bigtable"
	"cloud.google.com/go/storage"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	_ "github.com/duckdb/duckdb-go/v2"
	paho "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/api/iterator"

	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/emulators"
	"github.com/iotpipe/iotpipe/testing/stack"
)

func TestMain(m *testing.M) { ptest.Main(m) }

// TestDeviceToBigtable drives the whole local deployment the way the sandbox
// runs it: a device publishes over MQTT, the reading lands in Bigtable; a
// reading whose Bigtable write fails is redelivered and lands after recovery;
// shutdown drains with every message acked.
func TestDeviceToBigtable(t *testing.T) {
	failures := make(chan error, 16)
	cfg := stack.DefaultConfig()
	cfg.Emulators = emulators.Config{WarehousePath: filepath.Join(t.TempDir(), "w.duckdb")}
	cfg.MQTTAddr = "127.0.0.1:0"
	cfg.BigtableWriteTimeout = time.Second
	cfg.OnPipelineFailure = func(err error) { failures <- err }
	st, err := stack.Start(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			st.Close()
		}
	}()

	bt, err := bigtable.NewClient(context.Background(), cfg.Project, cfg.Instance)
	if err != nil {
		t.Fatal(err)
	}
	defer bt.Close()
	telemetry := bt.Open(schemas.TelemetryTable)

	device := "dev-1"
	client := paho.NewClient(paho.NewClientOptions().
		AddBroker("tcp://" + st.Bridge.Addr()).
		SetClientID(fmt.Sprintf("projects/%s/locations/%s/registries/%s/devices/%s", cfg.Project, cfg.Location, cfg.Registry, device)).
		SetAutoReconnect(false))
	if tok := client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("MQTT connect: %v", tok.Error())
	}
	defer client.Disconnect(100)
	publish := func(seq int, temp float64) {
		t.Helper()
		payload := fmt.Sprintf(`{"ts":1700000000000,"seq":%d,"metrics":{"temperature":%g}}`, seq, temp)
		// The PUBACK arrives only after Pub/Sub accepted the message.
		if tok := client.Publish("/devices/"+device+"/events", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish seq %d: no PUBACK: %v", seq, tok.Error())
		}
	}

	t.Run("reading reaches Bigtable", func(t *testing.T) {
		publish(1, 21.5)
		row := waitRow(t, telemetry, schemas.TelemetryKey(device, 1700000000000, 1))
		if got := cell(row, schemas.FamilyMetrics, "temperature"); got != "21.5" {
			t.Errorf("temperature = %q, want 21.5", got)
		}
		if got := cell(row, schemas.FamilyEnvelope, "registry"); got != cfg.Registry {
			t.Errorf("registry = %q, want %q (from the IoT Core attributes)", got, cfg.Registry)
		}
	})

	t.Run("mosquitto_pub as in the README", func(t *testing.T) {
		bin, err := exec.LookPath("mosquitto_pub")
		if err != nil {
			t.Skip("mosquitto_pub not installed (.ci/run installs mosquitto-clients)")
		}
		host, port, _ := net.SplitHostPort(st.Bridge.Addr())
		out, err := exec.Command(bin, "-h", host, "-p", port,
			"-i", fmt.Sprintf("projects/%s/locations/%s/registries/%s/devices/d1", cfg.Project, cfg.Location, cfg.Registry),
			"-t", "/devices/d1/events", "-q", "1",
			"-m", `{"ts":1700000000000,"seq":1,"metrics":{"temperature":21.5}}`).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
		waitRow(t, telemetry, schemas.TelemetryKey("d1", 1700000000000, 1))
	})

	t.Run("failed Bigtable write is redelivered", func(t *testing.T) {
		st.Emulators.FailBigtableWrites(-1)
		publish(2, 19)
		select {
		case <-failures:
		case <-time.After(60 * time.Second):
			t.Fatal("the streaming job never failed although every Bigtable write did")
		}
		if row, err := telemetry.ReadRow(context.Background(), schemas.TelemetryKey(device, 1700000000000, 2)); err != nil || row != nil {
			t.Fatalf("row present (%v, %v) although its write failed", row, err)
		}
		if n := st.Unacked(); n == 0 {
			t.Fatal("the message whose write failed was acked")
		}
		st.Emulators.ClearBigtableFaults()
		row := waitRow(t, telemetry, schemas.TelemetryKey(device, 1700000000000, 2))
		if got := cell(row, schemas.FamilyMetrics, "temperature"); got != "19" {
			t.Errorf("temperature = %q, want 19", got)
		}
	})

	// A live reading (event time now): it alerts, and its window closes at
	// the drain.
	now := time.Now().UnixMilli()
	live := fmt.Sprintf(`{"ts":%d,"seq":3,"metrics":{"temperature":45,"humidity":50}}`, now)
	if tok := client.Publish("/devices/"+device+"/events", 1, false, live); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish live reading: %v", tok.Error())
	}
	waitRow(t, telemetry, schemas.TelemetryKey(device, now, 3))

	t.Run("drain acks everything and closes windows", func(t *testing.T) {
		client.Disconnect(100)
		if err := st.Drain(); err != nil {
			t.Fatalf("Drain: %v", err)
		}
		if n := st.Unacked(); n != 0 {
			t.Errorf("%d messages left unacked after a clean shutdown", n)
		}
		window := now - now%60_000
		agg, err := bt.Open(schemas.AggregatesTable).ReadRow(context.Background(), schemas.AggregateKey(device, "temperature", window))
		if err != nil || agg == nil {
			t.Fatalf("no aggregate for the live reading's window (%v)", err)
		}
		if got := cell(agg, schemas.FamilyAggregate, "count"); got != "1" {
			t.Errorf("aggregate count = %q, want 1", got)
		}
		alert, err := bt.Open(schemas.AlertsTable).ReadRow(context.Background(), schemas.TelemetryKey(device, now, 3)+"#temperature")
		if err != nil || alert == nil {
			t.Fatalf("no alert for temperature 45 above the reference max 40 (%v)", err)
		}
		if got := cell(alert, schemas.FamilyAlert, "kind"); got != "above_max" {
			t.Errorf("alert kind = %q, want above_max", got)
		}
	})

	t.Run("readings are in the warehouse dedup view once", func(t *testing.T) {
		db, err := sql.Open("duckdb", st.Emulators.WarehousePath)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var n, distinct int
		if err := db.QueryRow(`SELECT count(*), count(DISTINCT seq) FROM main.telemetry_dedup WHERE device_id = ? AND metric = 'temperature'`, device).Scan(&n, &distinct); err != nil {
			t.Fatal(err)
		}
		// seq 1, 2 (written after its redelivery) and 3, each once.
		if n != 3 || distinct != 3 {
			t.Errorf("telemetry_dedup has %d temperature rows (%d distinct seqs) for %s, want 3 and 3", n, distinct, device)
		}
	})

	t.Run("raw messages are archived in hourly partitions", func(t *testing.T) {
		gcs, err := storage.NewClient(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer gcs.Close()
		it := gcs.Bucket(stack.Bucket).Objects(context.Background(), &storage.Query{Prefix: stack.ArchivePrefix + "/dt="})
		records := 0
		for {
			attrs, err := it.Next()
			if err == iterator.Done {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(attrs.Name, "/hour=") || !strings.HasSuffix(attrs.Name, ".ndjson") {
				t.Errorf("archive object %s is not in the dt=/hour= layout", attrs.Name)
			}
			r, err := gcs.Bucket(stack.Bucket).Object(attrs.Name).NewReader(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(r)
			r.Close()
			for _, line := range strings.Split(strings.TrimSpace(string(body)), "\n") {
				if _, _, err := schemas.ParseArchive([]byte(line)); err != nil {
					t.Errorf("archive line %q: %v", line, err)
				}
				records++
			}
		}
		// Every message is archived at least once; the failed write's
		// message twice (it was delivered twice).
		if records < 4 {
			t.Errorf("%d archived records, want every one of the 4 messages", records)
		}
	})

	if err := st.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	closed = true
}

// waitRow polls until the row exists; the bound only turns a hang into a failure.
func waitRow(t *testing.T, tbl *bigtable.Table, key string) bigtable.Row {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		row, err := tbl.ReadRow(context.Background(), key)
		if err != nil {
			t.Fatalf("reading row %q: %v", key, err)
		}
		if row != nil {
			return row
		}
		if time.Now().After(deadline) {
			t.Fatalf("row %q did not appear within 60 s", key)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func cell(row bigtable.Row, family, column string) string {
	for _, item := range row[family] {
		if item.Column == family+":"+column {
			return string(item.Value)
		}
	}
	return ""
}
