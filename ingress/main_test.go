package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	mqtt3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/api/iterator"

	"github.com/iotpipe/iotpipe/ingress/internal/httpcall"
	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/metrics/metricstest"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
	"github.com/iotpipe/iotpipe/ingress/tlscert"
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

// binary is this command running as a child process.
type binary struct {
	cmd   *exec.Cmd
	lines chan map[string]any // its JSON log records
}

// startBinary runs main with args in a child process, whose environment
// (PUBSUB_EMULATOR_HOST, BIGTABLE_EMULATOR_HOST) is the test's.
func startBinary(t *testing.T, args ...string) *binary {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "INGRESS_TEST_RUN_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	b := &binary{cmd: cmd, lines: make(chan map[string]any, 100)}
	go func() {
		defer close(b.lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				b.lines <- rec
			}
		}
	}()
	return b
}

// waitLog returns the first log record with message msg.
func (b *binary) waitLog(t *testing.T, msg string) map[string]any {
	t.Helper()
	timeout := time.After(safety)
	for {
		select {
		case rec, ok := <-b.lines:
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

// stop sends SIGTERM and checks that the binary drains and exits 0.
func (b *binary) stop(t *testing.T) {
	t.Helper()
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	b.waitLog(t, "ingress stopped")
	for range b.lines { // drain until the child closes stderr
	}
	if err := b.cmd.Wait(); err != nil {
		t.Fatalf("ingress exited with %v after SIGTERM, want status 0", err)
	}
}

// The binary serves devices, and on SIGTERM drains and exits 0.
func TestBinaryForwardsAndExitsCleanlyOnSIGTERM(t *testing.T) {
	fake := pubsubtest.Start(t, "proj", "events") // also sets PUBSUB_EMULATOR_HOST for the child
	b := startBinary(t, "-project=proj", "-location=us-central1", "-registry=reg",
		"-events_topic=events", "-mqtt_addr=127.0.0.1:0", "-http_addr=127.0.0.1:0")
	addr, _ := b.waitLog(t, "ingress listening")["mqtt_addr"].(string)
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
	b.stop(t)
}

// With a registry the binary is the whole bridge: it creates the registry
// from -events_topic and -state_topic, the admin API creates a device, the
// device publishes with its JWT over HTTP and over MQTT with TLS, gets a
// command sent through the admin API, /metrics counts its messages, and the
// instance's fan-out subscription lives exactly as long as the process.
func TestBinaryWithRegistryServesEverything(t *testing.T) {
	registrytest.Start(t, registry.Config{})                      // BIGTABLE_EMULATOR_HOST for the child
	fake := pubsubtest.Start(t, "proj", "events", "state", "c2d") // after it: PUBSUB_EMULATOR_HOST
	certs, err := tlscert.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const token = "admin-secret"
	b := startBinary(t, "-project=proj", "-location=us-central1", "-registry=reg",
		"-events_topic=events", "-state_topic=state",
		"-bigtable_project="+registrytest.Project, "-bigtable_instance="+registrytest.Instance,
		"-instance=test-1", "-c2d_topic=c2d", "-admin_token="+token,
		"-mqtt_addr=127.0.0.1:0", "-http_addr=127.0.0.1:0",
		"-tls_addr=127.0.0.1:0", "-tls_cert="+certs.Cert, "-tls_key="+certs.Key)
	b.waitLog(t, "created the device registry")
	listening := b.waitLog(t, "ingress listening")
	tlsAddr, _ := listening["tls_addr"].(string)
	httpAddr, _ := listening["http_addr"].(string)
	if tlsAddr == "" || httpAddr == "" {
		t.Fatalf("listening log line %v lacks tls_addr or http_addr", listening)
	}
	base := "http://" + httpAddr
	regPath := "/v1/projects/proj/locations/us-central1/registries/reg"
	call := func(t *testing.T, method, path, auth string, body any) (int, map[string]any) {
		t.Helper()
		return httpcall.JSON(t, method, base+path, auth, body)
	}

	t.Run("admin API needs the token", func(t *testing.T) {
		if code, out := call(t, "GET", regPath, "", nil); code != http.StatusUnauthorized {
			t.Errorf("GET registry without the token: %d %v, want 401", code, out)
		}
		code, out := call(t, "GET", regPath, token, nil)
		if code != http.StatusOK {
			t.Fatalf("GET registry: %d %v", code, out)
		}
		if got, _ := json.Marshal(out["eventNotificationConfigs"]); string(got) != `[{"pubsubTopicName":"projects/proj/topics/events"}]` {
			t.Errorf("eventNotificationConfigs = %s, want the catch-all to -events_topic", got)
		}
	})

	key := registrytest.NewKey(t, registry.ES256PEM)
	code, out := call(t, "POST", regPath+"/devices", token, map[string]any{
		"id": "dev1", "credentials": []any{map[string]any{"publicKey": key.PublicKey}},
	})
	if code != http.StatusOK {
		t.Fatalf("admin API create device: %d %v", code, out)
	}
	numID, _ := out["numId"].(string)
	now := time.Now()
	jwtToken, err := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"aud": "proj", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}).SignedString(key.Private)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("HTTP publishEvent with the device JWT reaches Pub/Sub", func(t *testing.T) {
		body := map[string]string{"binaryData": base64.StdEncoding.EncodeToString([]byte("over-http")), "subFolder": "lab"}
		if code, out := call(t, "POST", regPath+"/devices/dev1:publishEvent", "", body); code != http.StatusUnauthorized {
			t.Errorf("publishEvent without a JWT: %d %v, want 401", code, out)
		}
		if code, out := call(t, "POST", regPath+"/devices/dev1:publishEvent", jwtToken, body); code != http.StatusOK {
			t.Fatalf("publishEvent: %d %v", code, out)
		}
		msgs := fake.Messages("events")
		if len(msgs) != 1 || string(msgs[0].Data) != "over-http" {
			t.Fatalf("events topic holds %v, want the HTTP event", msgs)
		}
		if a := msgs[0].Attributes; a["deviceId"] != "dev1" || a["subFolder"] != "lab" || numID == "" || a["deviceNumId"] != numID {
			t.Errorf("attributes %v, want deviceId dev1, subFolder lab, deviceNumId %q", a, numID)
		}
	})

	t.Run("MQTT over TLS with the JWT, and a command from the admin API", func(t *testing.T) {
		ca, err := os.ReadFile(certs.CA)
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(ca)
		commands := make(chan string, 1)
		c := mqtt3.NewClient(mqtt3.NewClientOptions().AddBroker("ssl://" + tlsAddr).
			SetTLSConfig(&tls.Config{RootCAs: roots, ServerName: "localhost"}).
			SetClientID("projects/proj/locations/us-central1/registries/reg/devices/dev1").
			SetUsername("unused").SetPassword(jwtToken).SetAutoReconnect(false))
		if tok := c.Connect(); !tok.WaitTimeout(safety) || tok.Error() != nil {
			t.Fatalf("TLS connect: %v", tok.Error())
		}
		defer c.Disconnect(100)
		if tok := c.Subscribe("/devices/dev1/commands/#", 1, func(_ mqtt3.Client, m mqtt3.Message) {
			commands <- m.Topic() + " " + string(m.Payload())
		}); !tok.WaitTimeout(safety) || tok.Error() != nil {
			t.Fatalf("subscribe to commands: %v", tok.Error())
		}
		if tok := c.Publish("/devices/dev1/events", 1, false, "over-mqtts"); !tok.WaitTimeout(safety) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		if msgs := fake.Messages("events"); len(msgs) != 2 || string(msgs[1].Data) != "over-mqtts" {
			t.Fatalf("events topic holds %v, want the MQTT event second", msgs)
		}
		code, out := call(t, "POST", regPath+"/devices/dev1:sendCommandToDevice", token,
			map[string]string{"binaryData": base64.StdEncoding.EncodeToString([]byte("reboot")), "subfolder": "ops"})
		if code != http.StatusOK {
			t.Fatalf("sendCommandToDevice: %d %v", code, out)
		}
		select {
		case got := <-commands:
			if got != "/devices/dev1/commands/ops reboot" {
				t.Errorf("device got %q, want the command on /devices/dev1/commands/ops", got)
			}
		case <-time.After(safety):
			t.Fatal("the device never got the command")
		}
	})

	t.Run("metrics", func(t *testing.T) {
		u, err := url.Parse(base)
		if err != nil {
			t.Fatal(err)
		}
		scrape := metricstest.Get(t, httputil.NewSingleHostReverseProxy(u))
		if got := scrape.Value("iotpipe_ingress_messages_in_total", "transport", "mqtt", "kind", "events"); got != 1 {
			t.Errorf("iotpipe_ingress_messages_in_total{transport=mqtt,kind=events} = %v, want 1", got)
		}
		if got := scrape.Value("iotpipe_ingress_messages_in_total", "transport", "http", "kind", "events"); got != 1 {
			t.Errorf("iotpipe_ingress_messages_in_total{transport=http,kind=events} = %v, want 1 (the publishEvent)", got)
		}
		if got := scrape.Value("iotpipe_ingress_auth_failures_total", "transport", "http", "reason", "bad_token"); got != 1 {
			t.Errorf("iotpipe_ingress_auth_failures_total{transport=http,reason=bad_token} = %v, want 1 (the publishEvent without a JWT)", got)
		}
		if got := scrape.Value("iotpipe_ingress_messages_out_total", "transport", "mqtt", "kind", "commands"); got != 1 {
			t.Errorf("iotpipe_ingress_messages_out_total{transport=mqtt,kind=commands} = %v, want 1", got)
		}
		if got := scrape.Value("iotpipe_ingress_connections", "transport", "http"); got < 1 {
			t.Errorf("iotpipe_ingress_connections{transport=http} = %v, want the scrape's own connection at least", got)
		}
	})

	subs := func() []string {
		t.Helper()
		client, err := pubsub.NewClient(context.Background(), "proj")
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		var names []string
		it := client.SubscriptionAdminClient.ListSubscriptions(context.Background(), &pubsubpb.ListSubscriptionsRequest{Project: "projects/proj"})
		for {
			s, err := it.Next()
			if errors.Is(err, iterator.Done) {
				return names
			}
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, s.Name)
		}
	}
	if got := subs(); len(got) != 1 || got[0] != "projects/proj/subscriptions/c2d.test-1" {
		t.Errorf("subscriptions while running: %v, want this instance's to the fan-out topic", got)
	}
	b.stop(t)
	if got := subs(); len(got) != 0 {
		t.Errorf("subscriptions after shutdown: %v, want none", got)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	certs := tlscert.FilesIn(filepath.Join(t.TempDir(), "none")) // never read: the flags fail first
	// Each case gets its own slice: appends to a shared one would overwrite each other.
	base := []string{"-project=p", "-location=l", "-registry=r"}
	static := slices.Clip(append(slices.Clip(base), "-events_topic=e"))
	withReg := slices.Clip(append(slices.Clip(base), "-bigtable_instance=i"))
	tests := []struct {
		name string
		args []string
		want error  // nil: any non-usage error
		msg  string // the error names what is wrong
	}{
		{"unknown flag", []string{"-nope"}, errUsage, ""},
		{"positional argument", []string{"-project=p", "extra"}, errUsage, ""},
		{"bad number", append(static, "-tenant_max_outstanding_bytes=lots"), errUsage, ""},
		{"missing registry", []string{"-project=p", "-location=l", "-events_topic=e"}, nil, "-registry"},
		{"missing events topic without a registry", base, nil, "-events_topic"},
		{"non-loopback MQTT address", append(static, "-mqtt_addr=0.0.0.0:1883"), nil, "not loopback"},
		{"non-loopback TLS address", append(static, "-tls_addr=0.0.0.0:8883", "-tls_cert="+certs.Cert, "-tls_key="+certs.Key), nil, "not loopback"},
		{"non-loopback HTTP address without a registry", append(static, "-http_addr=0.0.0.0:8080"), nil, "-http_addr"},
		{"non-loopback HTTP address without an admin token", append(withReg, "-http_addr=:8080"), nil, "-admin_token"},
		{"bad HTTP address", append(static, "-http_addr=8080"), nil, "-http_addr"},
		{"TLS address without a certificate", append(static, "-tls_addr=127.0.0.1:8883"), nil, "-tls_cert"},
		{"certificate without a TLS address", append(static, "-tls_cert=c.pem", "-tls_key=k.pem"), nil, "-tls_addr"},
		{"admin token without a registry", append(static, "-admin_token=x"), nil, "-bigtable_instance"},
		{"fan-out topic without a registry", append(static, "-c2d_topic=c2d"), nil, "-bigtable_instance"},
		{"instance without a registry", append(static, "-instance=a"), nil, "-bigtable_instance"},
		{"bigtable project without a registry", append(static, "-bigtable_project=bp"), nil, "-bigtable_instance"},
		{"bad instance name", append(withReg, "-instance=not a name"), nil, "-instance"},
		{"rate that is not a number", append(static, "-connection_messages_per_second=NaN"), nil, "ConnectionMessagesPerSecond"},
		{"negative expiry grace", append(static, "-expiry_grace=-1s"), nil, "ExpiryGrace"},
	}
	pubsubtest.Start(t, "p")
	// Nothing listens here; the clients do not dial before their first
	// call, and every case fails before one.
	t.Setenv("BIGTABLE_EMULATOR_HOST", "127.0.0.1:1")
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
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("run(%q) = %v, want it to mention %q", tt.args, err, tt.msg)
			}
		})
	}
}
