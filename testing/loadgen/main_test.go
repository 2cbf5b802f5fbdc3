package main

import (
	"context"
	"io"
	"log/slog"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The load tool drives both brokers end to end: devices connect (with JWTs
// against the registry for the bridge), publish at QoS 1 and get PUBACKs.
func TestLoadRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts brokers")
	}
	for _, broker := range []string{"bridge", "mosquitto"} {
		t.Run(broker, func(t *testing.T) {
			if _, err := exec.LookPath("mosquitto"); err != nil && broker == "mosquitto" {
				if _, err := exec.LookPath("/usr/sbin/mosquitto"); err != nil {
					t.Skip("mosquitto is not installed (apt-get install mosquitto)")
				}
			}
			cfg := Config{Broker: broker, Mode: "throughput", Devices: 5, Duration: time.Second, PayloadBytes: 200, Connectors: 2}
			res, err := Run(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			if res.Connected != 5 || res.Errors != 0 || res.Messages == 0 {
				t.Fatalf("connected %d/5, %d messages, %d errors (first: %s)", res.Connected, res.Messages, res.Errors, res.FirstError)
			}
			if res.BrokerRSS == 0 || res.P99 == 0 {
				t.Errorf("broker RSS %d, p99 %v: usage or latency not measured", res.BrokerRSS, res.P99)
			}
			if row := res.Markdown(); !strings.HasPrefix(row, "| "+broker+" | throughput | 5/5 |") {
				t.Errorf("result row %q", row)
			}
		})
	}
}

// A device the bridge does not know is refused: the tool's own client and
// the bridge's auth really are in the loop.
func TestUnknownDeviceRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the bridge")
	}
	b, err := startBridge(context.Background(), Config{Devices: 1}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.stop()
	_, token := b.credentials(0)
	if _, err := dial(b.address(), deviceClientID(1), token, time.Minute, 10*time.Second); err == nil {
		t.Fatal("an unregistered device connected")
	}
	d, err := dial(b.address(), deviceClientID(0), token, time.Minute, 10*time.Second)
	if err != nil {
		t.Fatalf("registered device: %v", err)
	}
	defer d.close()
	if err := d.ping(10 * time.Second); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if err := d.publish("/devices/"+deviceID(0)+"/events", reading(1, 100), 10*time.Second); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func TestReadingSize(t *testing.T) {
	for _, size := range []int{0, 50, 120, 1000} {
		p := reading(7, size)
		if size > 80 && len(p) != size {
			t.Errorf("reading(%d) is %d bytes: %s", size, len(p), p)
		}
		if !strings.HasPrefix(string(p), `{"ts":`) || !strings.HasSuffix(string(p), "}") {
			t.Errorf("reading(%d) = %s", size, p)
		}
	}
}
