package stack_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
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

	"github.com/iotpipe/iotpipe/ingress/metrics/metricstest"
	"github.com/iotpipe/iotpipe/schemas"
	"github.com/iotpipe/iotpipe/testing/emulators"
	"github.com/iotpipe/iotpipe/testing/stack"
)

func TestMain(m *testing.M) { ptest.Main(m) }

// TestDeviceToBigtable drives the whole local deployment the way the sandbox
// runs it: a device publishes over MQTT, the reading lands in Bigtable, as do
// readings sent over MQTT with TLS and over HTTP; the admin API manages the
// registry and its config updates reach a subscribed device; /metrics counts
// it all; a reading whose Bigtable write fails is redelivered and lands after
// recovery; shutdown drains with every message acked.
func TestDeviceToBigtable(t *testing.T) {
	failures := make(chan error, 16)
	cfg := stack.DefaultConfig()
	cfg.Emulators = emulators.Config{WarehousePath: filepath.Join(t.TempDir(), "w.duckdb")}
	cfg.MQTTAddr = "127.0.0.1:0"
	cfg.TLSAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.CertDir = t.TempDir()
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
		AddBroker("tcp://" + st.Server.MQTTAddr()).
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
		host, port, _ := net.SplitHostPort(st.Server.MQTTAddr())
		out, err := exec.Command(bin, "-h", host, "-p", port,
			"-i", fmt.Sprintf("projects/%s/locations/%s/registries/%s/devices/d1", cfg.Project, cfg.Location, cfg.Registry),
			"-t", "/devices/d1/events", "-q", "1",
			"-m", `{"ts":1700000000000,"seq":1,"metrics":{"temperature":21.5}}`).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
		waitRow(t, telemetry, schemas.TelemetryKey("d1", 1700000000000, 1))
	})

	clientID := func(device string) string {
		return fmt.Sprintf("projects/%s/locations/%s/registries/%s/devices/%s", cfg.Project, cfg.Location, cfg.Registry, device)
	}
	reading := func(seq int) string {
		return fmt.Sprintf(`{"ts":1700000000000,"seq":%d,"metrics":{"temperature":20}}`, seq)
	}

	t.Run("MQTT over TLS with the sandbox CA", func(t *testing.T) {
		ca, err := os.ReadFile(st.TLS.CA)
		if err != nil {
			t.Fatalf("the sandbox CA: %v", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(ca) {
			t.Fatalf("%s holds no certificate", st.TLS.CA)
		}
		c := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + st.Server.TLSAddr()).
			SetTLSConfig(&tls.Config{RootCAs: roots}).
			SetClientID(clientID("tls-dev")).SetAutoReconnect(false))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("TLS connect: %v", tok.Error())
		}
		defer c.Disconnect(100)
		if tok := c.Publish("/devices/tls-dev/events", 1, false, reading(1)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		waitRow(t, telemetry, schemas.TelemetryKey("tls-dev", 1700000000000, 1))
	})

	t.Run("mosquitto_pub over TLS with --cafile, as the sandbox prints", func(t *testing.T) {
		bin, err := exec.LookPath("mosquitto_pub")
		if err != nil {
			t.Skip("mosquitto_pub not installed (.ci/run installs mosquitto-clients)")
		}
		_, port, _ := net.SplitHostPort(st.Server.TLSAddr())
		out, err := exec.Command(bin, "-h", "localhost", "-p", port, "--cafile", st.TLS.CA,
			"-i", clientID("d2"), "-t", "/devices/d2/events", "-q", "1", "-m", reading(1)).CombinedOutput()
		if err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
		waitRow(t, telemetry, schemas.TelemetryKey("d2", 1700000000000, 1))
	})

	base := "http://" + st.Server.HTTPAddr()
	regPath := fmt.Sprintf("/v1/projects/%s/locations/%s/registries/%s", cfg.Project, cfg.Location, cfg.Registry)
	call := func(t *testing.T, method, path, contentType string, body any) (int, map[string]any) {
		t.Helper()
		var rd io.Reader
		switch b := body.(type) {
		case nil:
		case string:
			rd = strings.NewReader(b)
		default:
			raw, err := json.Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			rd = bytes.NewReader(raw)
		}
		req, err := http.NewRequest(method, base+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out map[string]any
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s %s: %d, body %q is not JSON: %v", method, path, resp.StatusCode, raw, err)
		}
		return resp.StatusCode, out
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

	t.Run("admin API and HTTP bridge share the HTTP port", func(t *testing.T) {
		if code, out := call(t, "POST", regPath+"/devices", "", map[string]any{"id": "http-dev"}); code != http.StatusOK {
			t.Fatalf("create device: %d %v", code, out)
		}
		code, out := call(t, "GET", regPath+"/devices/http-dev", "", nil)
		if code != http.StatusOK || out["id"] != "http-dev" || out["numId"] == nil {
			t.Fatalf("get device: %d %v, want http-dev with a numId", code, out)
		}
		code, out = call(t, "GET", regPath+"/devices", "", nil)
		if got, _ := json.Marshal(out["devices"]); code != http.StatusOK || !strings.Contains(string(got), `"id":"http-dev"`) {
			t.Fatalf("list devices: %d %v, want http-dev listed", code, out)
		}
		if code, out := call(t, "POST", regPath+"/devices/http-dev:publishEvent", "", map[string]string{"binaryData": b64(reading(1))}); code != http.StatusOK {
			t.Fatalf("publishEvent: %d %v", code, out)
		}
		waitRow(t, telemetry, schemas.TelemetryKey("http-dev", 1700000000000, 1))
		if code, out := call(t, "POST", "/v1/ingest/http-dev", "application/json", reading(2)); code != http.StatusAccepted {
			t.Fatalf("ingest: %d %v", code, out)
		}
		waitRow(t, telemetry, schemas.TelemetryKey("http-dev", 1700000000000, 2))
	})

	t.Run("config from the admin API reaches the subscribed device", func(t *testing.T) {
		if code, out := call(t, "POST", regPath+"/devices/http-dev:modifyCloudToDeviceConfig", "", map[string]string{"binaryData": b64("fan=on")}); code != http.StatusOK {
			t.Fatalf("modifyCloudToDeviceConfig: %d %v", code, out)
		}
		configs := make(chan string, 4)
		c := paho.NewClient(paho.NewClientOptions().AddBroker("tcp://" + st.Server.MQTTAddr()).
			SetClientID(clientID("http-dev")).SetAutoReconnect(false))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		defer c.Disconnect(100)
		if tok := c.Subscribe("/devices/http-dev/config", 1, func(_ paho.Client, m paho.Message) {
			configs <- string(m.Payload())
		}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
		next := func() string {
			t.Helper()
			select {
			case got := <-configs:
				return got
			case <-time.After(10 * time.Second):
				t.Fatal("no config arrived")
				return ""
			}
		}
		if got := next(); got != "fan=on" {
			t.Fatalf("config on subscribe = %q, want fan=on", got)
		}
		if code, out := call(t, "POST", regPath+"/devices/http-dev:modifyCloudToDeviceConfig", "", map[string]string{"binaryData": b64("fan=off")}); code != http.StatusOK {
			t.Fatalf("modifyCloudToDeviceConfig: %d %v", code, out)
		}
		if got := next(); got != "fan=off" {
			t.Fatalf("config update = %q, want fan=off", got)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		u, err := url.Parse(base)
		if err != nil {
			t.Fatal(err)
		}
		scrape := metricstest.Get(t, httputil.NewSingleHostReverseProxy(u))
		if got := scrape.Value("iotpipe_ingress_messages_in_total", "transport", "mqtt", "kind", "events"); got < 2 {
			t.Errorf("iotpipe_ingress_messages_in_total{transport=mqtt,kind=events} = %v, want the 2 or more readings published over MQTT so far", got)
		}
		if got := scrape.Value("iotpipe_ingress_messages_in_total", "transport", "http", "kind", "events"); got != 2 {
			t.Errorf("iotpipe_ingress_messages_in_total{transport=http,kind=events} = %v, want the publishEvent and the ingest", got)
		}
		if got := scrape.Value("iotpipe_ingress_messages_out_total", "transport", "mqtt", "kind", "config"); got != 2 {
			t.Errorf("iotpipe_ingress_messages_out_total{transport=mqtt,kind=config} = %v, want the 2 configs sent", got)
		}
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
