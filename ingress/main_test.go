package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"

	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
)

// TestMain lets a test run this binary's main by re-executing the test binary.
func TestMain(m *testing.M) {
	if os.Getenv("INGRESS_TEST_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const safety = 30 * time.Second

// The binary serves devices, and on SIGTERM drains and exits 0.
func TestBinaryForwardsAndExitsCleanlyOnSIGTERM(t *testing.T) {
	fake := pubsubtest.Start(t, "proj", "events") // also sets PUBSUB_EMULATOR_HOST for the child
	cmd := exec.Command(os.Args[0], "-project=proj", "-location=us-central1", "-registry=reg",
		"-events_topic=events", "-mqtt_addr=127.0.0.1:0")
	cmd.Env = append(os.Environ(), "INGRESS_TEST_RUN_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })

	lines := make(chan map[string]any, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				lines <- rec
			}
		}
	}()
	waitLog := func(msg string) map[string]any {
		t.Helper()
		timeout := time.After(safety)
		for {
			select {
			case rec, ok := <-lines:
				if !ok {
					t.Fatalf("ingress exited before logging %q", msg)
				}
				if rec["msg"] == msg {
					return rec
				}
			case <-timeout:
				t.Fatalf("no %q log line after %v", msg, safety)
			}
		}
	}
	addr, _ := waitLog("ingress listening")["mqtt_addr"].(string)
	if addr == "" {
		t.Fatal("listening log line has no mqtt_addr")
	}

	c := mqtt3.NewClient(mqtt3.NewClientOptions().AddBroker("tcp://" + addr).
		SetClientID("projects/proj/locations/us-central1/registries/reg/devices/dev1").SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(safety) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	if tok := c.Publish("/devices/dev1/events", 1, false, "hello"); !tok.WaitTimeout(safety) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	if msgs := fake.Messages("events"); len(msgs) != 1 || string(msgs[0].Data) != "hello" {
		t.Fatalf("events = %v, want the published message", msgs)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitLog("ingress stopped")
	for range lines { // drain until the child closes stderr
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ingress exited with %v after SIGTERM, want status 0", err)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want error // nil: any non-usage error
	}{
		{"unknown flag", []string{"-nope"}, errUsage},
		{"positional argument", []string{"-project=p", "extra"}, errUsage},
		{"missing registry", []string{"-project=p", "-location=l", "-events_topic=e"}, nil},
		{"non-loopback address", []string{"-project=p", "-location=l", "-registry=r", "-events_topic=e", "-mqtt_addr=0.0.0.0:1883"}, nil},
	}
	pubsubtest.Start(t, "p")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var usage strings.Builder
			err := run(context.Background(), tt.args, &usage, slog.New(slog.DiscardHandler))
			if err == nil {
				t.Fatal("run succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("run(%q) = %v, want %v", tt.args, err, tt.want)
			}
			if tt.want == nil && errors.Is(err, errUsage) {
				t.Errorf("run(%q) = %v, want a configuration error", tt.args, err)
			}
		})
	}
}
