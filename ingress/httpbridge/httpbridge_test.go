package httpbridge_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/golang-jwt/jwt/v5"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/iotpipe/iotpipe/ingress/httpbridge"
	"github.com/iotpipe/iotpipe/ingress/internal/pubsubtest"
	"github.com/iotpipe/iotpipe/ingress/jwtauth"
	"github.com/iotpipe/iotpipe/ingress/metrics"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
)

const project = "proj"

var reg = registry.Path{Project: project, Location: "us-central1", Registry: "reg"}

func topicName(id string) string { return "projects/" + project + "/topics/" + id }

// env is a bridge on a real HTTP server with the real JWT authenticator,
// a registry on bttest and Pub/Sub on pstest.
type env struct {
	srv   *httptest.Server
	fake  *pubsubtest.Fake
	store *registry.Store
	// metrics are the bridge's.
	metrics *metrics.Metrics
	keys    map[string]registrytest.Key // by device; "stranger" is no device's
	nums    map[string]string           // numIds by device
}

func start(t *testing.T) *env {
	t.Helper()
	store := registrytest.Start(t, registry.Config{})
	ctx := t.Context()
	if _, err := store.CreateRegistry(ctx, reg.Project, reg.Location, registry.Registry{
		ID: reg.Registry,
		EventNotificationConfigs: []registry.EventNotificationConfig{
			{SubfolderMatches: "alerts", PubsubTopicName: topicName("alerts")},
			{PubsubTopicName: topicName("events")},
		},
		StateNotificationConfig: registry.StateNotificationConfig{PubsubTopicName: topicName("state")},
	}); err != nil {
		t.Fatal(err)
	}
	e := &env{store: store, metrics: metrics.New(), keys: map[string]registrytest.Key{}, nums: map[string]string{}}
	for _, d := range []struct {
		id      string
		format  registry.KeyFormat
		blocked bool
	}{
		{"es-dev", registry.ES256PEM, false},
		{"es-dev2", registry.ES256PEM, false},
		{"rsa-dev", registry.RSAX509PEM, false},
		{"blocked-dev", registry.ES256PEM, true},
	} {
		k := registrytest.NewKey(t, d.format)
		dev, err := store.CreateDevice(ctx, reg, registry.Device{ID: d.id, Blocked: d.blocked,
			Credentials: []registry.Credential{{PublicKey: k.PublicKey}}, Config: registry.DeviceConfig{BinaryData: []byte("v1")}})
		if err != nil {
			t.Fatal(err)
		}
		e.keys[d.id], e.nums[d.id] = k, strconv.FormatUint(dev.NumID, 10)
	}
	e.keys["stranger"] = registrytest.NewKey(t, registry.ES256PEM)

	e.fake = pubsubtest.Start(t, project, "alerts", "events", "state") // after the registry: it points PUBSUB_EMULATOR_HOST here
	pub, err := publisher.New(ctx, project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	router, err := publisher.NewRouter(pub, publisher.Routes{Registries: store})
	if err != nil {
		t.Fatal(err)
	}
	b, err := httpbridge.New(httpbridge.Config{Project: reg.Project, Location: reg.Location, Registry: reg.Registry, Metrics: e.metrics},
		router, jwtauth.New(store, jwtauth.Config{}), store, slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(b)
	t.Cleanup(e.srv.Close)
	return e
}

// token signs a device JWT with k.
func token(t *testing.T, k registrytest.Key, claims jwt.MapClaims) string {
	t.Helper()
	m := jwt.SigningMethod(jwt.SigningMethodES256)
	if _, ok := k.Private.(*rsa.PrivateKey); ok {
		m = jwt.SigningMethodRS256
	} else if _, ok := k.Private.(*ecdsa.PrivateKey); !ok {
		t.Fatalf("key of type %T", k.Private)
	}
	s, err := jwt.NewWithClaims(m, claims).SignedString(k.Private)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claims(aud string, iat time.Time, life time.Duration) jwt.MapClaims {
	return jwt.MapClaims{"aud": aud, "iat": iat.Unix(), "exp": iat.Add(life).Unix()}
}

// good is a valid token of device.
func (e *env) good(t *testing.T, device string) string {
	return token(t, e.keys[device], claims(project, time.Now(), time.Hour))
}

type request struct {
	method, path        string
	auth                string // the Authorization header; none when empty
	contentType, encode string // Content-Type, Content-Encoding
	body                []byte
}

type response struct {
	code int
	body []byte
	err  struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
	}
}

func (e *env) do(t *testing.T, rq request) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), rq.method, e.srv.URL+rq.path, bytes.NewReader(rq.body))
	if err != nil {
		t.Fatal(err)
	}
	if rq.auth != "" {
		req.Header.Set("Authorization", rq.auth)
	}
	if rq.contentType != "" {
		req.Header.Set("Content-Type", rq.contentType)
	}
	if rq.encode != "" {
		req.Header.Set("Content-Encoding", rq.encode)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", rq.method, rq.path, err)
	}
	defer resp.Body.Close()
	var r response
	r.code = resp.StatusCode
	if r.body, err = io.ReadAll(resp.Body); err != nil {
		t.Fatal(err)
	}
	if r.code >= 300 {
		var eb struct {
			Error json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(r.body, &eb); err != nil || json.Unmarshal(eb.Error, &r.err) != nil || r.err.Code != r.code || r.err.Status == "" {
			t.Fatalf("%s %s: %d answer %s is not a Google JSON error", rq.method, rq.path, r.code, r.body)
		}
		if r.code == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("401 without WWW-Authenticate: Bearer")
		}
	}
	return r
}

func devicePath(device string) string { return "/v1/" + reg.Device(device).String() }

func jsonBody(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func attrs(e *env, device, subFolder string) map[string]string {
	a := map[string]string{"deviceId": device, "deviceNumId": e.nums[device], "deviceRegistryId": reg.Registry,
		"deviceRegistryLocation": reg.Location, "projectId": reg.Project}
	if subFolder != "" {
		a["subFolder"] = subFolder
	}
	return a
}

// TestDeviceAPI covers IoT Core's publishEvent and setState: auth, routing,
// limits and bad requests.
func TestDeviceAPI(t *testing.T) {
	e := start(t)
	now := time.Now()
	big := strings.Repeat("x", publisher.MaxTelemetryBytes+1)
	event := func(data, sub string) []byte {
		return jsonBody(t, map[string]string{"binaryData": b64(data), "subFolder": sub})
	}
	bearer := func(tok string) string { return "Bearer " + tok }

	tests := []struct {
		name string
		rq   request
		code int
		// For success: where the message is, with which data and attributes.
		topic, data string
		attrs       map[string]string
		// For failure: the error's status and a part of its message.
		status, reason string
	}{
		{name: "ES256 device publishes to a routed subfolder",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), contentType: "application/json", body: event("t1", "alerts")},
			code: 200, topic: "alerts", data: "t1", attrs: attrs(e, "es-dev", "alerts")},
		{name: "RS256 device publishes to the catch-all",
			rq:   request{method: "POST", path: devicePath("rsa-dev") + ":publishEvent", auth: bearer(e.good(t, "rsa-dev")), body: event("t2", "")},
			code: 200, topic: "events", data: "t2", attrs: attrs(e, "rsa-dev", "")},
		{name: "proto field names and unpadded URL-safe base64",
			rq: request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: "bearer " + e.good(t, "es-dev"),
				body: jsonBody(t, map[string]string{"binary_data": base64.RawURLEncoding.EncodeToString([]byte{0xfb, 0xff}), "sub_folder": "m/n"})},
			code: 200, topic: "events", data: "\xfb\xff", attrs: attrs(e, "es-dev", "m/n")},
		{name: "state goes to the state topic",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":setState", auth: bearer(e.good(t, "es-dev")), body: jsonBody(t, map[string]any{"state": map[string]string{"binaryData": b64("fw=2")}})},
			code: 200, topic: "state", data: "fw=2", attrs: attrs(e, "es-dev", "")},

		{name: "no token",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", body: event("x", "")},
			code: 401, status: "UNAUTHENTICATED", reason: "no Authorization header"},
		{name: "not a bearer token",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: "Basic dXNlcjpwdw==", body: event("x", "")},
			code: 401, status: "UNAUTHENTICATED", reason: "Bearer"},
		{name: "wrong audience",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(token(t, e.keys["es-dev"], claims("other-project", now, time.Hour))), body: event("x", "")},
			code: 401, status: "UNAUTHENTICATED", reason: string(jwtauth.ReasonWrongAudience)},
		{name: "expired token",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(token(t, e.keys["es-dev"], claims(project, now.Add(-3*time.Hour), time.Hour))), body: event("x", "")},
			code: 401, status: "UNAUTHENTICATED", reason: string(jwtauth.ReasonExpired)},
		{name: "wrong key",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "stranger")), body: event("x", "")},
			code: 401, status: "UNAUTHENTICATED", reason: string(jwtauth.ReasonBadSignature)},
		{name: "another device's token",
			rq:   request{method: "POST", path: devicePath("es-dev2") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: event("x", "")},
			code: 401, status: "UNAUTHENTICATED", reason: string(jwtauth.ReasonBadSignature)},
		{name: "unknown device",
			rq:   request{method: "POST", path: devicePath("ghost") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: event("x", "")},
			code: 401, status: "UNAUTHENTICATED", reason: string(jwtauth.ReasonUnknownDevice)},
		{name: "blocked device",
			rq:   request{method: "POST", path: devicePath("blocked-dev") + ":publishEvent", auth: bearer(e.good(t, "blocked-dev")), body: event("x", "")},
			code: 403, status: "PERMISSION_DENIED", reason: string(jwtauth.ReasonBlocked)},
		{name: "device of another registry",
			rq:   request{method: "POST", path: "/v1/projects/proj/locations/us-central1/registries/other/devices/es-dev:publishEvent", auth: bearer(e.good(t, "es-dev")), body: event("x", "")},
			code: 403, status: "PERMISSION_DENIED", reason: "serves the devices of " + reg.String()},
		{name: "bad device id",
			rq:   request{method: "POST", path: devicePath("-x") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: event("x", "")},
			code: 400, status: "INVALID_ARGUMENT", reason: "bad IoT Core device id"},
		{name: "escaped slash in the device id",
			rq:   request{method: "POST", path: devicePath("es-dev%2Fx") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: event("x", "")},
			code: 400, status: "INVALID_ARGUMENT", reason: "bad IoT Core client id"},

		{name: "telemetry over 256 KB",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: event(big, "")},
			code: 413, status: "INVALID_ARGUMENT", reason: "too large"},
		{name: "body far over the limit",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: event(big+big, "")},
			code: 413, status: "INVALID_ARGUMENT", reason: "body of"},
		{name: "state over 64 KB",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":setState", auth: bearer(e.good(t, "es-dev")), body: jsonBody(t, map[string]any{"state": map[string]string{"binaryData": b64(big[:publisher.MaxStateBytes+1])}})},
			code: 413, status: "INVALID_ARGUMENT", reason: "too large"},
		{name: "not base64",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: []byte(`{"binaryData":"***"}`)},
			code: 400, status: "INVALID_ARGUMENT", reason: "not base64"},
		{name: "no binaryData",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: []byte(`{"subFolder":"a"}`)},
			code: 400, status: "INVALID_ARGUMENT", reason: "binaryData is required"},
		{name: "unknown field",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: []byte(`{"binaryData":"","gatewayInfo":{}}`)},
			code: 400, status: "INVALID_ARGUMENT", reason: "gatewayInfo"},
		{name: "not JSON",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: []byte(`binaryData=x`)},
			code: 400, status: "INVALID_ARGUMENT", reason: "invalid character"},
		{name: "not JSON content",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), contentType: "text/plain", body: event("x", "")},
			code: 415, status: "INVALID_ARGUMENT", reason: "want application/json"},
		{name: "subfolder with a wildcard",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "es-dev")), body: event("x", "a/+")},
			code: 400, status: "INVALID_ARGUMENT", reason: "wildcard"},
		{name: "state without state",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":setState", auth: bearer(e.good(t, "es-dev")), body: []byte(`{}`)},
			code: 400, status: "INVALID_ARGUMENT", reason: "state is required"},
		{name: "unknown method",
			rq:   request{method: "POST", path: devicePath("es-dev") + ":sendCommandToDevice", auth: bearer(e.good(t, "es-dev")), body: event("x", "")},
			code: 404, status: "NOT_FOUND", reason: "no such method"},
		{name: "GET publishEvent",
			rq:   request{method: "GET", path: devicePath("es-dev") + ":publishEvent", auth: bearer(e.good(t, "es-dev"))},
			code: 404, status: "NOT_FOUND", reason: "no such method"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.fake.ClearMessages()
			r := e.do(t, tt.rq)
			if r.code != tt.code {
				t.Fatalf("%s %s = %d %s, want %d", tt.rq.method, tt.rq.path, r.code, r.body, tt.code)
			}
			if tt.code != 200 {
				if r.err.Status != tt.status || !strings.Contains(r.err.Message, tt.reason) {
					t.Errorf("error = %+v, want status %s and a message containing %q", r.err, tt.status, tt.reason)
				}
				if n := len(e.fake.Server.Messages()); n != 0 {
					t.Errorf("%d messages published for a refused request", n)
				}
				return
			}
			if string(r.body) != "{}\n" {
				t.Errorf("body = %q, want {}", r.body)
			}
			// The answer came after Pub/Sub confirmed: the message is there now.
			msgs := e.fake.Messages(tt.topic)
			if len(msgs) != 1 || string(msgs[0].Data) != tt.data || len(e.fake.Server.Messages()) != 1 {
				t.Fatalf("topic %s holds %d messages (all topics %d), want %q alone", tt.topic, len(msgs), len(e.fake.Server.Messages()), tt.data)
			}
			if !maps.Equal(msgs[0].Attributes, tt.attrs) {
				t.Errorf("attributes = %v, want %v", msgs[0].Attributes, tt.attrs)
			}
		})
	}
}

// TestGetConfig: the latest version, whatever local_version up to it.
func TestGetConfig(t *testing.T) {
	e := start(t)
	dp := reg.Device("es-dev")
	v2, err := e.store.ModifyConfig(t.Context(), dp, 0, []byte("v2"))
	if err != nil {
		t.Fatal(err)
	}
	tok := "Bearer " + e.good(t, "es-dev")
	tests := []struct {
		query  string
		code   int
		status string
	}{
		{"", 200, ""},
		{"?local_version=0", 200, ""},
		{"?local_version=1", 200, ""},
		{"?localVersion=1", 200, ""},
		{"?local_version=2", 200, ""}, // the current one: answered at once, same version
		{"?local_version=2&localVersion=2", 200, ""},
		{"?local_version=3", 400, "OUT_OF_RANGE"},
		{"?local_version=-1", 400, "INVALID_ARGUMENT"},
		{"?local_version=x", 400, "INVALID_ARGUMENT"},
		{"?local_version=1&localVersion=2", 400, "INVALID_ARGUMENT"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			r := e.do(t, request{method: "GET", path: devicePath("es-dev") + "/config" + tt.query, auth: tok})
			if r.code != tt.code {
				t.Fatalf("GET config%s = %d %s, want %d", tt.query, r.code, r.body, tt.code)
			}
			if tt.code != 200 {
				if r.err.Status != tt.status {
					t.Errorf("status = %s, want %s", r.err.Status, tt.status)
				}
				return
			}
			var got struct {
				Version         string    `json:"version"`
				CloudUpdateTime time.Time `json:"cloudUpdateTime"`
				BinaryData      []byte    `json:"binaryData"`
			}
			if err := json.Unmarshal(r.body, &got); err != nil {
				t.Fatalf("config %s: %v", r.body, err)
			}
			if got.Version != "2" || string(got.BinaryData) != "v2" || !got.CloudUpdateTime.Equal(v2.CloudUpdateTime) {
				t.Errorf("config = %+v, want version 2, v2, %v", got, v2.CloudUpdateTime)
			}
		})
	}
	t.Run("needs the device's token", func(t *testing.T) {
		if r := e.do(t, request{method: "GET", path: devicePath("es-dev") + "/config", auth: "Bearer " + e.good(t, "es-dev2")}); r.code != 401 {
			t.Errorf("GET config with another device's token = %d, want 401", r.code)
		}
	})
}

func gz(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func mp(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestIngest: every encoding of one reading publishes the same payload.
func TestIngest(t *testing.T) {
	e := start(t)
	const want = `{"metrics":{"humidity":40.5,"temperature":23.4},"seq":7,"ts":1700000000000}`
	asJSON := []byte(`{"ts": 1700000000000, "seq": 7.0, "metrics": {"temperature": 23.40, "humidity": 4.05e1}}`)
	reading := map[string]any{"ts": int64(1700000000000), "seq": uint8(7), "metrics": map[string]any{"temperature": 23.4, "humidity": float32(40.5)}}
	tok := "Bearer " + e.good(t, "es-dev")
	path := "/v1/ingest/es-dev"

	accepted := []struct {
		name, contentType, encoding string
		body                        []byte
	}{
		{"JSON", "application/json", "", asJSON},
		{"JSON with charset", "application/json; charset=utf-8", "", asJSON},
		{"gzip JSON", "application/json", "gzip", gz(t, asJSON)},
		{"NDJSON line", "application/x-ndjson", "", append(asJSON, '\n')},
		{"MessagePack", "application/msgpack", "", mp(t, reading)},
		{"gzip MessagePack", "application/x-msgpack", "gzip", gz(t, mp(t, reading))},
	}
	for _, tt := range accepted {
		t.Run(tt.name, func(t *testing.T) {
			e.fake.ClearMessages()
			r := e.do(t, request{method: "POST", path: path, auth: tok, contentType: tt.contentType, encode: tt.encoding, body: tt.body})
			if r.code != http.StatusAccepted {
				t.Fatalf("POST %s = %d %s, want 202", path, r.code, r.body)
			}
			msgs := e.fake.Messages("events")
			if len(msgs) != 1 || string(msgs[0].Data) != want {
				t.Fatalf("events = %d messages, first %q; want %s", len(msgs), firstData(msgs), want)
			}
			var resp struct{ MessageID string }
			if err := json.Unmarshal(r.body, &resp); err != nil || resp.MessageID != msgs[0].ID {
				t.Errorf("answer %s, want the message id %s", r.body, msgs[0].ID)
			}
			if !maps.Equal(msgs[0].Attributes, attrs(e, "es-dev", "")) {
				t.Errorf("attributes = %v", msgs[0].Attributes)
			}
		})
	}

	// A body that decompresses past the limit: 300 KB of spaces around an object.
	bomb := gz(t, append([]byte("{}"), bytes.Repeat([]byte(" "), 300<<10)...))
	refused := []struct {
		name, contentType, encoding string
		auth                        string
		body                        []byte
		code                        int
		reason                      string
	}{
		{"no Content-Type", "", "", tok, asJSON, 415, "Content-Type"},
		{"text", "text/plain", "", tok, asJSON, 415, "want application/json"},
		{"brotli", "application/json", "br", tok, asJSON, 415, "Content-Encoding"},
		{"not gzip", "application/json", "gzip", tok, asJSON, 400, "gzip"},
		{"gzip bomb", "application/json", "gzip", tok, bomb, 413, "decompressed"},
		{"over 256 KB", "application/json", "", tok, append([]byte(`{"a":"`), append(bytes.Repeat([]byte("x"), 257<<10), `"}`...)...), 413, "at most"},
		{"two NDJSON readings", "application/x-ndjson", "", tok, append(append(append(asJSON, '\n'), asJSON...), '\n'), 400, "one reading per request"},
		{"JSON array", "application/json", "", tok, []byte(`[1]`), 400, "array, want an object"},
		{"broken JSON", "application/json", "", tok, []byte(`{"ts":`), 400, "JSON"},
		{"MessagePack string", "application/msgpack", "", tok, mp(t, "x"), 400, "string, want an object"},
		{"truncated MessagePack", "application/msgpack", "", tok, mp(t, reading)[:10], 400, "MessagePack"},
		{"no token", "application/json", "", "", asJSON, 401, "Authorization"},
		{"another device's token", "application/json", "", "Bearer " + e.good(t, "es-dev2"), asJSON, 401, string(jwtauth.ReasonBadSignature)},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			e.fake.ClearMessages()
			r := e.do(t, request{method: "POST", path: path, auth: tt.auth, contentType: tt.contentType, encode: tt.encoding, body: tt.body})
			if r.code != tt.code || !strings.Contains(r.err.Message, tt.reason) {
				t.Fatalf("POST %s = %d %s, want %d with %q", path, r.code, r.body, tt.code, tt.reason)
			}
			if n := len(e.fake.Server.Messages()); n != 0 {
				t.Errorf("%d messages published", n)
			}
		})
	}
	t.Run("unknown device", func(t *testing.T) {
		r := e.do(t, request{method: "POST", path: "/v1/ingest/ghost", auth: tok, contentType: "application/json", body: asJSON})
		if r.code != 401 || !strings.Contains(r.err.Message, string(jwtauth.ReasonUnknownDevice)) {
			t.Fatalf("POST /v1/ingest/ghost = %d %s, want 401 unknown_device", r.code, r.body)
		}
	})
}

func firstData(msgs []*pstest.Message) string {
	if len(msgs) == 0 {
		return ""
	}
	return string(msgs[0].Data)
}

// TestWithoutRegistry: with AllowAll (the sandbox) the bridge needs no
// token, but answers loopback clients only, and has no configs to give.
func TestWithoutRegistry(t *testing.T) {
	fake := pubsubtest.Start(t, project, "events")
	pub, err := publisher.New(t.Context(), project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	router, err := publisher.NewRouter(pub, publisher.Routes{EventsTopic: "events"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := httpbridge.New(httpbridge.Config{Project: reg.Project, Location: reg.Location, Registry: reg.Registry},
		router, mqttbridge.AllowAll{}, nil, slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	e := &env{srv: srv, fake: fake}

	r := e.do(t, request{method: "POST", path: "/v1/ingest/dev1", contentType: "application/json", body: []byte(`{"ts":1,"seq":1,"metrics":{"t":1}}`)})
	if r.code != http.StatusAccepted {
		t.Fatalf("unauthenticated ingest over loopback = %d %s, want 202", r.code, r.body)
	}
	msgs := fake.Messages("events")
	if len(msgs) != 1 || msgs[0].Attributes["deviceId"] != "dev1" {
		t.Fatalf("events = %v", msgs)
	}
	if _, ok := msgs[0].Attributes["deviceNumId"]; ok {
		t.Errorf("deviceNumId set without a registry: %v", msgs[0].Attributes)
	}
	if r := e.do(t, request{method: "GET", path: devicePath("dev1") + "/config"}); r.code != 400 || r.err.Status != "FAILED_PRECONDITION" {
		t.Errorf("config without a registry = %d %s, want 400 FAILED_PRECONDITION", r.code, r.body)
	}

	// The same request from elsewhere (httptest.NewRequest comes from 192.0.2.1).
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/v1/ingest/dev1", strings.NewReader(`{"ts":1,"seq":2,"metrics":{"t":1}}`))
	req.Header.Set("Content-Type", "application/json")
	b.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "loopback clients only") {
		t.Errorf("unauthenticated ingest from 192.0.2.1 = %d %s, want 403 loopback only", rec.Code, rec.Body)
	}
	if n := len(fake.Messages("events")); n != 1 {
		t.Errorf("events holds %d messages, want 1", n)
	}
}

// TestHandlerFallsThrough: requests that are not the bridge's go to next,
// so the admin API can share IoT Core's paths and port.
func TestHandlerFallsThrough(t *testing.T) {
	pubsubtest.Start(t, project)
	pub, err := publisher.New(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	router, err := publisher.NewRouter(pub, publisher.Routes{EventsTopic: "events"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := httpbridge.New(httpbridge.Config{Project: reg.Project, Location: reg.Location, Registry: reg.Registry},
		router, mqttbridge.AllowAll{}, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := b.Handler(next)
	tests := []struct {
		method, path string
		bridge       bool
	}{
		{"POST", devicePath("d1") + ":modifyCloudToDeviceConfig", false},
		{"GET", devicePath("d1"), false},
		{"GET", devicePath("d1") + "/configVersions", false},
		{"POST", "/v1/devices", false},
		{"GET", "/v1/devices/d1/metrics", false},
		{"POST", devicePath("d1") + ":publishEvent", true},
		{"GET", devicePath("d1") + "/config", true},
		{"POST", "/v1/ingest/d1", true},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
		if got := rec.Code != http.StatusTeapot; got != tt.bridge {
			t.Errorf("%s %s: served by the bridge = %v (code %d), want %v", tt.method, tt.path, got, rec.Code, tt.bridge)
		}
	}
}

func TestNewChecksConfig(t *testing.T) {
	pubsubtest.Start(t, project)
	pub, err := publisher.New(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	router, err := publisher.NewRouter(pub, publisher.Routes{EventsTopic: "events"})
	if err != nil {
		t.Fatal(err)
	}
	good := httpbridge.Config{Project: "p", Location: "l", Registry: "r"}
	tests := []struct {
		name    string
		mod     func(*httpbridge.Config)
		router  *publisher.Router
		auth    mqttbridge.Authenticator
		wantErr string
	}{
		{"good", func(*httpbridge.Config) {}, router, mqttbridge.AllowAll{}, ""},
		{"no project", func(c *httpbridge.Config) { c.Project = "" }, router, mqttbridge.AllowAll{}, "empty Project"},
		{"no registry", func(c *httpbridge.Config) { c.Registry = "" }, router, mqttbridge.AllowAll{}, "empty Registry"},
		{"slash in registry", func(c *httpbridge.Config) { c.Registry = "a/b" }, router, mqttbridge.AllowAll{}, "registries/a/b"},
		{"negative timeout", func(c *httpbridge.Config) { c.PublishTimeout = -1 }, router, mqttbridge.AllowAll{}, "negative PublishTimeout"},
		{"no router", func(*httpbridge.Config) {}, nil, mqttbridge.AllowAll{}, "nil router"},
		{"no authenticator", func(*httpbridge.Config) {}, router, nil, "nil Authenticator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mod(&cfg)
			_, err := httpbridge.New(cfg, tt.router, tt.auth, nil, slog.New(slog.DiscardHandler))
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("New = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}
