package server_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/iotpipe/iotpipe/ingress/internal/httpcall"
	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/metrics/metricstest"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
	"github.com/iotpipe/iotpipe/ingress/server"
)

const (
	project  = "proj"
	location = "us-central1"
	regID    = "reg"
	token    = "admin-secret"
)

var regPath = "/v1/projects/" + project + "/locations/" + location + "/registries/" + regID

// clients opens a registry store on the test's registry emulator and a
// publisher on its Pub/Sub fake: what a Start takes ownership of.
func clients(t *testing.T) (*registry.Store, *publisher.Publisher) {
	t.Helper()
	store, err := registry.New(t.Context(), registry.Config{Project: registrytest.Project, Instance: registrytest.Instance})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := publisher.New(t.Context(), project)
	if err != nil {
		store.Close()
		t.Fatal(err)
	}
	return store, pub
}

func config() server.Config {
	return server.Config{
		Project: project, Location: location, Registry: regID,
		EventsTopic: "events", StateTopic: "state",
		MQTTAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		Instance: "test-1", AdminToken: token,
	}
}

// call makes an HTTP request of srv and decodes its JSON answer.
func call(t *testing.T, srv *server.Server, method, path, bearer string, body any) (int, map[string]any) {
	t.Helper()
	return httpcall.JSON(t, method, "http://"+srv.HTTPAddr()+path, bearer, body)
}

// The assembled bridge creates its registry, serves the admin API, the
// HTTP device bridge and /metrics on one listener (with HTTP messages
// counted), and Close returns nil with every port free again.
func TestStartServesAndCloseFreesPorts(t *testing.T) {
	devices := registrytest.Start(t, registry.Config{})
	fake := pubsubtest.Start(t, project, "events", "state") // after the registry: PUBSUB_EMULATOR_HOST
	store, pub := clients(t)
	srv, err := server.Start(t.Context(), config(), store, pub, slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			srv.Close()
		}
	})
	if srv.MQTTAddr() == "" || srv.HTTPAddr() == "" || srv.TLSAddr() != "" || srv.Bus() == nil || srv.Metrics() == nil {
		t.Fatalf("MQTT %q, HTTP %q, TLS %q, bus %v, metrics %v: want bound MQTT and HTTP addresses, no TLS, a bus and metrics",
			srv.MQTTAddr(), srv.HTTPAddr(), srv.TLSAddr(), srv.Bus(), srv.Metrics())
	}

	t.Run("admin API with the token, seeded registry", func(t *testing.T) {
		if code, out := call(t, srv, "GET", regPath, "", nil); code != http.StatusUnauthorized {
			t.Errorf("GET registry without the token: %d %v, want 401", code, out)
		}
		code, out := call(t, srv, "GET", regPath, token, nil)
		if code != http.StatusOK {
			t.Fatalf("GET registry: %d %v", code, out)
		}
		if got, _ := json.Marshal(out["eventNotificationConfigs"]); string(got) != `[{"pubsubTopicName":"projects/proj/topics/events"}]` {
			t.Errorf("eventNotificationConfigs = %s, want the catch-all to EventsTopic", got)
		}
	})

	t.Run("HTTP device bridge with a JWT, counted in /metrics", func(t *testing.T) {
		key := registrytest.NewKey(t, registry.ES256PEM)
		if _, err := devices.CreateDevice(t.Context(), registry.Path{Project: project, Location: location, Registry: regID},
			registry.Device{ID: "dev1", Credentials: []registry.Credential{{PublicKey: key.PublicKey}}}); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		jwtToken, err := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
			"aud": project, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		}).SignedString(key.Private)
		if err != nil {
			t.Fatal(err)
		}
		body := map[string]string{"binaryData": base64.StdEncoding.EncodeToString([]byte("over-http"))}
		if code, out := call(t, srv, "POST", regPath+"/devices/dev1:publishEvent", jwtToken, body); code != http.StatusOK {
			t.Fatalf("publishEvent: %d %v", code, out)
		}
		if msgs := fake.Messages("events"); len(msgs) != 1 || string(msgs[0].Data) != "over-http" {
			t.Fatalf("events topic holds %v, want the HTTP event", msgs)
		}
		u, err := url.Parse("http://" + srv.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		scrape := metricstest.Get(t, httputil.NewSingleHostReverseProxy(u))
		if got := scrape.Value("iotpipe_ingress_messages_in_total", "transport", "http", "kind", "events"); got != 1 {
			t.Errorf("iotpipe_ingress_messages_in_total{transport=http,kind=events} = %v, want 1", got)
		}
		if got := scrape.Value("iotpipe_ingress_connections", "transport", "http"); got < 1 {
			t.Errorf("iotpipe_ingress_connections{transport=http} = %v, want the scrape's own connection at least", got)
		}
	})

	mqttAddr, httpAddr := srv.MQTTAddr(), srv.HTTPAddr()
	if err := srv.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	closed = true
	for _, addr := range []string{mqttAddr, httpAddr} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("after Close, %s is still taken: %v", addr, err)
			continue
		}
		ln.Close()
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Without a registry store the bridge admits any device of the registry on
// loopback, routes by EventsTopic, and has no bus and no admin API.
func TestStartWithoutRegistry(t *testing.T) {
	fake := pubsubtest.Start(t, project, "events")
	pub, err := publisher.New(t.Context(), project)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config()
	cfg.StateTopic, cfg.Instance, cfg.AdminToken = "", "", ""
	srv, err := server.Start(t.Context(), cfg, nil, pub, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	if srv.Bus() != nil {
		t.Errorf("a bus without a registry")
	}
	body := map[string]string{"binaryData": base64.StdEncoding.EncodeToString([]byte("open"))}
	if code, out := call(t, srv, "POST", regPath+"/devices/any-dev:publishEvent", "", body); code != http.StatusOK {
		t.Fatalf("publishEvent without a token on loopback: %d %v", code, out)
	}
	if msgs := fake.Messages("events"); len(msgs) != 1 || string(msgs[0].Data) != "open" {
		t.Fatalf("events topic holds %v, want the event", msgs)
	}
	if code, out := call(t, srv, "GET", regPath, "", nil); code != http.StatusNotFound {
		t.Errorf("GET registry without a registry: %d %v, want 404 (no admin API)", code, out)
	}
}

// A Config that cannot run fails Start with a ConfigError naming its
// field, before anything listens.
func TestStartConfigErrors(t *testing.T) {
	registrytest.Start(t, registry.Config{})
	pubsubtest.Start(t, project, "events")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	tests := []struct {
		name  string
		edit  func(*server.Config)
		field string
	}{
		{"bad instance name", func(c *server.Config) { c.Instance = "not a name" }, "Instance"},
		{"admin API off loopback without a token", func(c *server.Config) { c.HTTPAddr, c.AdminToken = ":0", "" }, "AdminToken"},
		{"HTTP address taken", func(c *server.Config) { c.HTTPAddr = busy.Addr().String() }, "HTTPAddr"},
		{"negative drain timeout", func(c *server.Config) { c.DrainTimeout = -time.Second }, "DrainTimeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config()
			tt.edit(&cfg)
			store, pub := clients(t)
			_, err := server.Start(t.Context(), cfg, store, pub, slog.New(slog.DiscardHandler))
			ce, ok := errors.AsType[*server.ConfigError](err)
			if !ok || ce.Field != tt.field {
				t.Fatalf("Start = %v, want a ConfigError on %s", err, tt.field)
			}
			// Start closed what it was given.
			if _, err := pub.Publish(t.Context(), "events", []byte("x"), nil); !errors.Is(err, publisher.ErrClosed) {
				t.Errorf("Publish after a failed Start = %v, want %v: Start closes what it was given", err, publisher.ErrClosed)
			}
		})
	}
}
