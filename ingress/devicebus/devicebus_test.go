package devicebus_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/iotpipe/iotpipe/ingress/devicebus"
	"github.com/iotpipe/iotpipe/ingress/internal/logtest"
	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
)

const project = "proj"

// safety bounds a wait for a signal; no test waits for it to pass.
const safety = 30 * time.Second

var reg = registry.Path{Project: project, Location: "us-central1", Registry: "reg"}

// recorder is a front end that records what it is asked to deliver and
// answers with err.
type recorder struct {
	mu   sync.Mutex
	err  error
	got  chan string // "config dev1 3 data" or "command dev1 sub data"
	seen []string
}

func newRecorder() *recorder { return &recorder{got: make(chan string, 16)} }

func (r *recorder) DeliverConfig(_ context.Context, dp iotcore.DevicePath, cfg registry.DeviceConfig) error {
	return r.record("config " + dp.Device + " " + strconv.FormatInt(cfg.Version, 10) + " " + string(cfg.BinaryData))
}

func (r *recorder) DeliverCommand(_ context.Context, dp iotcore.DevicePath, subFolder string, data []byte) error {
	return r.record("command " + dp.Device + " " + subFolder + " " + string(data))
}

func (r *recorder) record(s string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, s)
	r.got <- s
	return r.err
}

func (r *recorder) want(t *testing.T, s string) {
	t.Helper()
	select {
	case got := <-r.got:
		if got != s {
			t.Fatalf("delivered %q, want %q", got, s)
		}
	case <-time.After(safety):
		t.Fatalf("nothing delivered after %v, want %q", safety, s)
	}
}

type fixture struct {
	store *registry.Store
	fake  *pubsubtest.Fake
	pub   *publisher.Publisher
	logs  *logtest.Buffer
}

func setUp(t *testing.T) *fixture {
	t.Helper()
	store := registrytest.Start(t, registry.Config{})
	if _, err := store.CreateRegistry(t.Context(), reg.Project, reg.Location, registry.Registry{ID: reg.Registry}); err != nil {
		t.Fatal(err)
	}
	fake := pubsubtest.Start(t, project, "c2d") // after the registry: it points PUBSUB_EMULATOR_HOST here
	pub, err := publisher.New(t.Context(), project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	return &fixture{store: store, fake: fake, pub: pub, logs: &logtest.Buffer{}}
}

// bus starts a bus named instance with l attached.
func (f *fixture) bus(t *testing.T, cfg devicebus.Config, l devicebus.Local) *devicebus.Bus {
	t.Helper()
	cfg.Project = project
	b, err := devicebus.New(f.store, cfg, f.pub, slog.New(slog.NewTextHandler(io.MultiWriter(f.logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatalf("devicebus.New(%+v): %v", cfg, err)
	}
	if l != nil {
		if err := b.Attach(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// subscribe records a connection of device on b.
func subscribe(t *testing.T, b *devicebus.Bus, device string, config, commands bool) devicebus.Conn {
	t.Helper()
	c := b.NewConn(reg.Device(device))
	if current, err := b.Subscribed(t.Context(), c, config, commands); err != nil || !current {
		t.Fatalf("Subscribed = %v, %v", current, err)
	}
	return c
}

func TestNewChecksConfig(t *testing.T) {
	f := setUp(t)
	tests := []struct {
		name    string
		cfg     devicebus.Config
		pub     devicebus.Publisher
		wantErr string
	}{
		{"single instance", devicebus.Config{Instance: "a"}, nil, ""},
		{"random name", devicebus.Config{}, nil, ""},
		{"fan-out", devicebus.Config{Instance: "a", FanoutTopic: "c2d", Project: project}, f.pub, ""},
		{"fan-out topic name", devicebus.Config{Instance: "a", FanoutTopic: "projects/p/topics/c2d", Project: project}, f.pub, ""},
		{"bad instance name", devicebus.Config{Instance: `a"b`}, nil, "instance name"},
		{"long instance name", devicebus.Config{Instance: strings.Repeat("a", 65)}, nil, "instance name"},
		{"fan-out without project", devicebus.Config{Instance: "a", FanoutTopic: "c2d"}, f.pub, "without a Project"},
		{"fan-out without publisher", devicebus.Config{Instance: "a", FanoutTopic: "c2d", Project: project}, nil, "without a publisher"},
		{"negative TTL", devicebus.Config{Instance: "a", CommandTTL: -time.Second}, nil, "negative CommandTTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := devicebus.New(f.store, tt.cfg, tt.pub, nil)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if b.Instance() == "" || (tt.cfg.Instance != "" && b.Instance() != tt.cfg.Instance) {
					t.Errorf("Instance() = %q, want %q (or a random name)", b.Instance(), tt.cfg.Instance)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
	if _, err := devicebus.New(nil, devicebus.Config{}, nil, nil); err == nil {
		t.Error("New with a nil store succeeded")
	}
	b, _ := devicebus.New(f.store, devicebus.Config{}, nil, nil)
	if err := b.Attach(newRecorder()); err != nil {
		t.Fatal(err)
	}
	if err := b.Attach(newRecorder()); err == nil {
		t.Error("a second Attach succeeded")
	}
}

// Sending within one instance reaches the attached front end, or fails
// with the reason IoT Core gave.
func TestSendLocal(t *testing.T) {
	f := setUp(t)
	local := newRecorder()
	b := f.bus(t, devicebus.Config{Instance: "a"}, local)
	ctx := t.Context()

	if err := b.SendCommand(ctx, reg.Device("dev1"), "", []byte("x")); !errors.Is(err, devicebus.ErrNotConnected) ||
		!errors.Is(err, registry.ErrFailedPrecondition) {
		t.Errorf("command to a device with no presence = %v, want ErrNotConnected (a FAILED_PRECONDITION)", err)
	}
	if err := b.ConfigUpdated(ctx, reg.Device("dev1"), registry.DeviceConfig{Version: 2}); err != nil {
		t.Errorf("config to a device with no presence = %v, want nil (it gets it when it subscribes)", err)
	}

	c := subscribe(t, b, "dev1", true, false)
	if err := b.SendCommand(ctx, reg.Device("dev1"), "", []byte("x")); !errors.Is(err, devicebus.ErrNotSubscribed) {
		t.Errorf("command to a device subscribed to config only = %v, want ErrNotSubscribed", err)
	}
	if err := b.ConfigUpdated(ctx, reg.Device("dev1"), registry.DeviceConfig{Version: 2, BinaryData: []byte("v2")}); err != nil {
		t.Fatalf("ConfigUpdated: %v", err)
	}
	local.want(t, "config dev1 2 v2")

	subscribe(t, b, "dev2", false, true)
	if err := b.SendCommand(ctx, reg.Device("dev2"), "a/b", []byte("go")); err != nil {
		t.Fatalf("SendCommand: %v", err)
	}
	local.want(t, "command dev2 a/b go")
	if err := b.ConfigUpdated(ctx, reg.Device("dev2"), registry.DeviceConfig{Version: 2}); err != nil {
		t.Errorf("config to a device subscribed to commands only = %v, want nil", err)
	}

	// The front end's answer is the caller's: it knows the connection now.
	local.mu.Lock()
	local.err = devicebus.ErrNotSubscribed
	local.mu.Unlock()
	if err := b.SendCommand(ctx, reg.Device("dev2"), "c", []byte("go")); !errors.Is(err, devicebus.ErrNotSubscribed) {
		t.Errorf("command the front end refused = %v, want ErrNotSubscribed", err)
	}
	local.want(t, "command dev2 c go")
	if err := b.ConfigUpdated(ctx, reg.Device("dev1"), registry.DeviceConfig{Version: 3}); err != nil {
		t.Errorf("config the front end could not deliver = %v, want nil", err)
	}
	local.want(t, "config dev1 3 ")

	if cleared, err := b.Disconnected(ctx, c); err != nil || !cleared {
		t.Fatalf("Disconnected = %v, %v", cleared, err)
	}
	if err := b.ConfigUpdated(ctx, reg.Device("dev1"), registry.DeviceConfig{Version: 4}); err != nil {
		t.Errorf("config after disconnect = %v", err)
	}

	for _, bad := range []struct {
		sub  string
		data []byte
	}{
		{"a//b", nil}, {"/a", nil}, {"a/", nil}, {"#", nil}, {"a/#", nil}, {"+", nil}, {"a\x00", nil},
		{strings.Repeat("a", 257), nil}, {"", make([]byte, devicebus.MaxCommandBytes+1)},
	} {
		if err := b.SendCommand(ctx, reg.Device("dev2"), bad.sub, bad.data); !errors.Is(err, registry.ErrInvalidArgument) {
			t.Errorf("SendCommand(subfolder %q, %d bytes) = %v, want ErrInvalidArgument", bad.sub, len(bad.data), err)
		}
	}
	select {
	case s := <-local.got:
		t.Errorf("delivered %q after the device disconnected or for a bad command", s)
	default:
	}
}

// A stale connection cannot record itself over, or erase, a newer one.
func TestSubscribedByStaleConnection(t *testing.T) {
	f := setUp(t)
	a := f.bus(t, devicebus.Config{Instance: "a"}, nil)
	b := f.bus(t, devicebus.Config{Instance: "b"}, nil)
	ctx := t.Context()
	older := a.NewConn(reg.Device("dev1"))
	newer := b.NewConn(reg.Device("dev1"))
	if current, err := b.Subscribed(ctx, newer, false, true); err != nil || !current {
		t.Fatalf("newer Subscribed = %v, %v", current, err)
	}
	if current, err := a.Subscribed(ctx, older, true, true); err != nil || current {
		t.Errorf("older Subscribed = %v, %v; want not current", current, err)
	}
	if cleared, err := a.Disconnected(ctx, older); err != nil || cleared {
		t.Errorf("older Disconnected = %v, %v; want not cleared", cleared, err)
	}
	p, err := f.store.GetPresence(ctx, reg.Device("dev1"))
	if err != nil || p.Instance != "b" || p.Generation != newer.Generation || p.Config || !p.Commands {
		t.Errorf("presence = %+v, %v; want the newer connection's on b", p, err)
	}
	// Unsubscribing from everything forgets the connection.
	if current, err := b.Subscribed(ctx, newer, false, false); err != nil || !current {
		t.Errorf("Subscribed to nothing = %v, %v", current, err)
	}
	if _, err := f.store.GetPresence(ctx, reg.Device("dev1")); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("presence after unsubscribing from everything = %v, want ErrNotFound", err)
	}
}

// Messages for a device held by another instance go over the fan-out
// topic, to that instance only.
func TestFanOut(t *testing.T) {
	f := setUp(t)
	la, lb := newRecorder(), newRecorder()
	a := f.bus(t, devicebus.Config{Instance: "a", FanoutTopic: "c2d"}, la)
	b := f.bus(t, devicebus.Config{Instance: "b", FanoutTopic: "c2d"}, lb)
	ctx := t.Context()
	subscribe(t, b, "dev1", true, true)

	if err := a.SendCommand(ctx, reg.Device("dev1"), "x/y", []byte("cmd")); err != nil {
		t.Fatalf("SendCommand through a: %v", err)
	}
	lb.want(t, "command dev1 x/y cmd")
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	if err := a.ConfigUpdated(ctx, reg.Device("dev1"), registry.DeviceConfig{Version: 7, CloudUpdateTime: at, BinaryData: []byte("cfg")}); err != nil {
		t.Fatalf("ConfigUpdated through a: %v", err)
	}
	lb.want(t, "config dev1 7 cfg")

	msgs := f.fake.Messages("c2d")
	if len(msgs) != 2 {
		t.Fatalf("fan-out topic holds %d messages, want 2", len(msgs))
	}
	for _, m := range msgs {
		if m.Attributes[devicebus.AttrInstance] != "b" || m.Attributes[iotcore.AttrDeviceID] != "dev1" ||
			m.Attributes[iotcore.AttrDeviceRegistryID] != "reg" {
			t.Errorf("fan-out message attributes %v: want instance b, device dev1 of reg", m.Attributes)
		}
	}
	if got := msgs[1].Attributes[devicebus.AttrCloudUpdate]; got != at.Format(time.RFC3339Nano) {
		t.Errorf("cloudUpdateTime attribute %q, want %q", got, at.Format(time.RFC3339Nano))
	}
	select {
	case s := <-la.got:
		t.Errorf("instance a delivered %q", s)
	default:
	}

	// Each instance has a subscription, filtered on its name; Close deletes it.
	client, err := pubsub.NewClient(ctx, project)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	const subB = "projects/" + project + "/subscriptions/c2d.b"
	sub, err := client.SubscriptionAdminClient.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: subB})
	if err != nil || sub.Filter != `attributes.instance = "b"` || sub.Topic != "projects/"+project+"/topics/c2d" {
		t.Errorf("subscription %s = %v, %v; want on the fan-out topic, filtered on instance b", subB, sub, err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := client.SubscriptionAdminClient.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: subB}); status.Code(err) != codes.NotFound {
		t.Errorf("subscription %s after Close: %v, want NotFound", subB, err)
	}
}

// A command that waited on the fan-out topic longer than CommandTTL is not
// delivered, and messages of unknown kinds are dropped.
func TestFanOutDropsStaleCommands(t *testing.T) {
	f := setUp(t)
	lb := newRecorder()
	f.bus(t, devicebus.Config{Instance: "b", FanoutTopic: "c2d", CommandTTL: time.Nanosecond}, lb)
	ctx := t.Context()
	attrs := iotcore.EventAttributes(reg.Device("dev1"), "", "")
	attrs[devicebus.AttrInstance] = "b"
	publish := func(kind string) {
		t.Helper()
		a := map[string]string{devicebus.AttrKind: kind}
		for k, v := range attrs {
			a[k] = v
		}
		if _, err := f.pub.Publish(ctx, "c2d", []byte("x"), a); err != nil {
			t.Fatal(err)
		}
	}
	publish(devicebus.KindCommand)
	publish("bogus")
	// Configs have no TTL: only the newest version is ever delivered anyway.
	a := map[string]string{devicebus.AttrKind: devicebus.KindConfig, devicebus.AttrConfigVersion: "2",
		devicebus.AttrCloudUpdate: time.Now().UTC().Format(time.RFC3339Nano)}
	for k, v := range attrs {
		a[k] = v
	}
	if _, err := f.pub.Publish(ctx, "c2d", []byte("v2"), a); err != nil {
		t.Fatal(err)
	}
	lb.want(t, "config dev1 2 v2")
	f.logs.WaitFor(t, "dropping command: too old")
	f.logs.WaitFor(t, "unknown kind attribute")
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if len(lb.seen) != 1 {
		t.Errorf("delivered %q, want the config only", lb.seen)
	}
}
