package mqttbridge_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	paho5 "github.com/eclipse/paho.golang/paho"

	"github.com/iotpipe/iotpipe/ingress/internal/logtest"
	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
)

// expiring admits every device with credentials that expire at a fixed time.
type expiring struct{ at time.Time }

func (e expiring) Authenticate(_ context.Context, dp iotcore.DevicePath, _ []byte) (mqttbridge.Device, error) {
	return mqttbridge.Device{Path: dp, Expiry: e.at}, nil
}

// startWithAuth runs a bridge with auth on addr.
func startWithAuth(t *testing.T, auth mqttbridge.Authenticator, addr string, grace time.Duration) *env {
	t.Helper()
	fake := pubsubtest.Start(t, project, "events")
	pub, err := publisher.New(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	logs := &logtest.Buffer{}
	b, err := mqttbridge.NewWithAuth(mqttbridge.Config{
		Project: project, Location: location, Registry: registry, EventsTopic: "events",
		MQTTAddr: addr, ExpiryGrace: grace,
	}, pub, auth, slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), nil)))
	if err != nil {
		t.Fatalf("NewWithAuth: %v", err)
	}
	if err := b.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return &env{fake: fake, bridge: b, logs: logs}
}

// With a real authenticator the bridge may listen beyond loopback; with
// AllowAll it still may not, whichever constructor built it.
func TestNewWithAuthChecksAddress(t *testing.T) {
	e := startWithAuth(t, expiring{}, "0.0.0.0:0", 0)
	e.logs.WaitFor(t, "plain TCP on a non-loopback address")
	if strings.Contains(e.logs.String(), "NOT authenticated") {
		t.Error("an authenticated bridge logged that devices are not authenticated")
	}

	base := mqttbridge.Config{Project: project, Location: location, Registry: registry, EventsTopic: "events", MQTTAddr: "0.0.0.0:1883"}
	if err := base.ValidateFor(expiring{}); err != nil {
		t.Errorf("ValidateFor(real authenticator) on 0.0.0.0: %v", err)
	}
	for _, auth := range []mqttbridge.Authenticator{mqttbridge.AllowAll{}, &mqttbridge.AllowAll{}} {
		if err := base.ValidateFor(auth); err == nil || !strings.Contains(err.Error(), "not loopback") {
			t.Errorf("ValidateFor(%T) on 0.0.0.0 = %v, want refused", auth, err)
		}
	}
	pub, err := publisher.New(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if _, err := mqttbridge.NewWithAuth(base, pub, mqttbridge.AllowAll{}, nil); err == nil {
		t.Error("NewWithAuth(AllowAll) on 0.0.0.0 succeeded")
	}
	if _, err := mqttbridge.NewWithAuth(base, pub, nil, nil); err == nil {
		t.Error("NewWithAuth with a nil Authenticator succeeded")
	}
	negative := base
	negative.ExpiryGrace = -time.Second
	if err := negative.ValidateFor(expiring{}); err == nil {
		t.Error("negative ExpiryGrace accepted")
	}
}

// A connection whose credentials expired is closed after the grace; an
// MQTT 5 client is told why (0xA0, maximum connect time).
func TestExpiredCredentialsDisconnect(t *testing.T) {
	t.Run("MQTT 3.1.1", func(t *testing.T) {
		e := startWithAuth(t, expiring{at: time.Now()}, "127.0.0.1:0", 10*time.Millisecond)
		c := connectV3(t, e, "dev1", nil)
		c.waitLost(t)
		e.logs.WaitFor(t, "credentials expired")
	})
	t.Run("MQTT 5", func(t *testing.T) {
		e := startWithAuth(t, expiring{at: time.Now()}, "127.0.0.1:0", 10*time.Millisecond)
		conn, err := net.Dial("tcp", e.bridge.Addr())
		if err != nil {
			t.Fatal(err)
		}
		disconnected := make(chan *paho5.Disconnect, 1)
		c := paho5.NewClient(paho5.ClientConfig{
			Conn:               conn,
			OnServerDisconnect: func(d *paho5.Disconnect) { disconnected <- d },
			OnClientError:      func(error) {},
		})
		ctx, cancel := context.WithTimeout(context.Background(), safety)
		defer cancel()
		if _, err := c.Connect(ctx, &paho5.Connect{ClientID: clientID("dev1"), KeepAlive: 30, CleanStart: true}); err != nil {
			t.Fatalf("connect: %v", err)
		}
		select {
		case d := <-disconnected:
			if d.ReasonCode != 0xA0 {
				t.Errorf("DISCONNECT reason %#x, want 0xA0 maximum connect time", d.ReasonCode)
			}
		case <-time.After(safety):
			t.Fatal("no DISCONNECT")
		}
	})
}
