package jwtauth_test

import (
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/golang-jwt/jwt/v5"

	"github.com/iotpipe/iotpipe/ingress/internal/logtest"
	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/jwtauth"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
)

// safety bounds a wait for a signal so that a broken bridge fails the test
// instead of hanging it; no test waits for it to pass.
const safety = 30 * time.Second

// TestMQTT runs the bridge with the JWT authenticator on the registry and
// connects real MQTT clients to it.
func TestMQTT(t *testing.T) {
	store := registrytest.Start(t, registry.Config{})
	ctx := t.Context()
	if _, err := store.CreateRegistry(ctx, reg.Project, reg.Location, registry.Registry{ID: reg.Registry}); err != nil {
		t.Fatal(err)
	}
	key := registrytest.NewKey(t, registry.ES256PEM)
	stranger := registrytest.NewKey(t, registry.ES256PEM)
	dev, err := store.CreateDevice(ctx, reg, registry.Device{ID: "dev1", Credentials: []registry.Credential{cred(key)}})
	if err != nil {
		t.Fatal(err)
	}
	rsaKey := registrytest.NewKey(t, registry.RSAPEM)
	for _, d := range []registry.Device{
		{ID: "rsa-dev", Credentials: []registry.Credential{cred(rsaKey)}},
		{ID: "blocked-dev", Blocked: true, Credentials: []registry.Credential{cred(key)}},
		{ID: "expired-cred", Credentials: []registry.Credential{{PublicKey: key.PublicKey, ExpirationTime: time.Now().Add(-time.Minute)}}},
	} {
		if _, err := store.CreateDevice(ctx, reg, d); err != nil {
			t.Fatal(err)
		}
	}
	fake := pubsubtest.Start(t, project, "events") // after the registry: it points PUBSUB_EMULATOR_HOST here
	pub, err := publisher.New(ctx, project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	logs := &logtest.Buffer{}
	const grace = 100 * time.Millisecond
	b, err := mqttbridge.NewWithAuth(mqttbridge.Config{
		Project: reg.Project, Location: reg.Location, Registry: reg.Registry,
		EventsTopic: "events", MQTTAddr: "127.0.0.1:0", ExpiryGrace: grace,
	}, pub, jwtauth.New(store, jwtauth.Config{}), slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	type client struct {
		mqtt3.Client
		lost chan struct{}
	}
	connectAs := func(t *testing.T, device, token string) (*client, error) {
		t.Helper()
		c := &client{lost: make(chan struct{})}
		c.Client = mqtt3.NewClient(mqtt3.NewClientOptions().AddBroker("tcp://" + b.Addr()).
			SetClientID(reg.Device(device).String()).SetUsername("unused").SetPassword(token).
			SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).
			SetConnectionLostHandler(func(mqtt3.Client, error) { close(c.lost) }))
		tok := c.Connect()
		if !tok.WaitTimeout(safety) {
			t.Fatalf("CONNECT not answered after %v", safety)
		}
		if tok.Error() == nil {
			t.Cleanup(func() { c.Disconnect(0) })
		}
		return c, tok.Error()
	}
	connect := func(t *testing.T, token string) (*client, error) { t.Helper(); return connectAs(t, "dev1", token) }

	t.Run("good token connects and publishes", func(t *testing.T) {
		c, err := connect(t, sign(t, key, claims(time.Now(), time.Hour)))
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		tok := c.Publish("/devices/dev1/events", 1, false, `{"seq":1}`)
		if !tok.WaitTimeout(safety) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		msgs := fake.Messages("events")
		if len(msgs) != 1 || string(msgs[0].Data) != `{"seq":1}` {
			t.Fatalf("events = %v, want the message", msgs)
		}
		if got := msgs[0].Attributes["deviceNumId"]; got != strconv.FormatUint(dev.NumID, 10) {
			t.Errorf("deviceNumId = %q, want the registry's %d", got, dev.NumID)
		}
	})

	t.Run("good RS256 device connects and publishes", func(t *testing.T) {
		c, err := connectAs(t, "rsa-dev", sign(t, rsaKey, claims(time.Now(), time.Hour)))
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		tok := c.Publish("/devices/rsa-dev/events", 1, false, `{"seq":2}`)
		if !tok.WaitTimeout(safety) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		if msgs := fake.Messages("events"); len(msgs) != 2 || msgs[1].Attributes["deviceId"] != "rsa-dev" {
			t.Fatalf("events = %v, want rsa-dev's message second", msgs)
		}
	})

	good := claims(time.Now(), time.Hour)
	refusals := []struct {
		name, device, token string
		reason              jwtauth.Reason
	}{
		{"wrong key", "dev1", sign(t, stranger, good), jwtauth.ReasonBadSignature},
		{"expired token", "dev1", sign(t, key, claims(time.Now().Add(-2*time.Hour), time.Hour)), jwtauth.ReasonExpired},
		{"wrong aud", "dev1", sign(t, key, jwt.MapClaims{"aud": "other-project", "iat": good["iat"], "exp": good["exp"]}), jwtauth.ReasonWrongAudience},
		{"iat in the future", "dev1", sign(t, key, claims(time.Now().Add(time.Hour), time.Hour)), jwtauth.ReasonIssuedInFuture},
		{"lifetime over 24 h", "dev1", sign(t, key, claims(time.Now(), 25*time.Hour)), jwtauth.ReasonLifetimeTooLong},
		{"not a JWT", "dev1", "password", jwtauth.ReasonBadToken},
		{"expired credential", "expired-cred", sign(t, key, good), jwtauth.ReasonNoMatchingKey},
		{"blocked device", "blocked-dev", sign(t, key, good), jwtauth.ReasonBlocked},
		{"unknown device", "nobody", sign(t, key, good), jwtauth.ReasonUnknownDevice},
	}
	for _, tt := range refusals {
		t.Run("refused at CONNECT: "+tt.name, func(t *testing.T) {
			_, err := connectAs(t, tt.device, tt.token)
			if err == nil || !strings.Contains(err.Error(), "not Authorized") {
				t.Fatalf("connect = %v, want refused (not Authorized)", err)
			}
			logs.WaitFor(t, ": "+string(tt.reason)+": ")
		})
	}

	t.Run("closed after the token expires", func(t *testing.T) {
		// exp has one-second resolution: this token expires 1 to 2 s from now.
		iat := time.Now().Unix()
		exp := time.Unix(iat+2, 0)
		c, err := connect(t, sign(t, key, jwt.MapClaims{"aud": project, "iat": iat, "exp": exp.Unix()}))
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		select {
		case <-c.lost:
		case <-time.After(safety):
			t.Fatalf("connection still open %v after the token expired", safety)
		}
		// Not a timing assertion: closing before exp would be a bug.
		if closed := time.Now(); closed.Before(exp.Add(grace)) {
			t.Errorf("closed at %v, before exp %v + grace %v", closed, exp, grace)
		}
		logs.WaitFor(t, "credentials expired")
	})
}
