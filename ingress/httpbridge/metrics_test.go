package httpbridge_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/iotpipe/iotpipe/ingress/metrics/metricstest"
	"github.com/iotpipe/iotpipe/ingress/publisher"
)

// TestMetrics checks which of the bridge's series each request moves: an
// accepted message counts in messages_in by kind and in the publish latency;
// a refusal counts once, under the reason the MQTT bridge uses for the same
// refusal where there is one, and nothing else moves.
func TestMetrics(t *testing.T) {
	e := start(t)
	bearer := func(tok string) string { return "Bearer " + tok }
	good := bearer(e.good(t, "es-dev"))
	event := func(data, sub string) []byte {
		return jsonBody(t, map[string]string{"binaryData": b64(data), "subFolder": sub})
	}
	publishEvent := devicePath("es-dev") + ":publishEvent"
	const reading = `{"ts":1700000000000,"seq":1,"metrics":{"t":1}}`

	// The series a request may move, each as metric name then labels.
	type series struct {
		name   string
		labels []string
	}
	var (
		eventsIn = series{"iotpipe_ingress_messages_in_total", []string{"transport", "http", "kind", "events"}}
		stateIn  = series{"iotpipe_ingress_messages_in_total", []string{"transport", "http", "kind", "state"}}
		latency  = series{"iotpipe_ingress_publish_latency_seconds", []string{"transport", "http"}}
		reject   = func(reason string) series {
			return series{"iotpipe_ingress_rejects_total", []string{"transport", "http", "reason", reason}}
		}
		authFailure = func(reason string) series {
			return series{"iotpipe_ingress_auth_failures_total", []string{"transport", "http", "reason", reason}}
		}
	)
	// Totals over every reason or kind, to catch a request counted twice
	// or under another series than the one expected.
	totals := []series{
		{"iotpipe_ingress_messages_in_total", nil},
		latency,
		{"iotpipe_ingress_rejects_total", nil},
		{"iotpipe_ingress_auth_failures_total", nil},
	}

	tests := []struct {
		name       string
		rq         request
		failPubSub bool
		code       int
		want       []series // each moves by 1; every other total stays
	}{
		{name: "publishEvent", code: 200, want: []series{eventsIn, latency},
			rq: request{method: "POST", path: publishEvent, auth: good, body: event("t", "")}},
		{name: "setState", code: 200, want: []series{stateIn, latency},
			rq: request{method: "POST", path: devicePath("es-dev") + ":setState", auth: good,
				body: jsonBody(t, map[string]any{"state": map[string]string{"binaryData": b64("fw=2")}})}},
		{name: "ingest", code: 202, want: []series{eventsIn, latency},
			rq: request{method: "POST", path: "/v1/ingest/es-dev", auth: good, contentType: "application/json", body: []byte(reading)}},

		{name: "no token", code: 401, want: []series{authFailure("bad_token")},
			rq: request{method: "POST", path: publishEvent, body: event("x", "")}},
		{name: "wrong audience", code: 401, want: []series{authFailure("wrong_audience")},
			rq: request{method: "POST", path: publishEvent, auth: bearer(token(t, e.keys["es-dev"], claims("other", time.Now(), time.Hour))), body: event("x", "")}},
		{name: "blocked device", code: 403, want: []series{authFailure("blocked")},
			rq: request{method: "POST", path: devicePath("blocked-dev") + ":publishEvent", auth: bearer(e.good(t, "blocked-dev")), body: event("x", "")}},
		{name: "unknown device on ingest", code: 401, want: []series{authFailure("unknown_device")},
			rq: request{method: "POST", path: "/v1/ingest/ghost", auth: good, contentType: "application/json", body: []byte(reading)}},
		{name: "device of another registry", code: 403, want: []series{authFailure("other_registry")},
			rq: request{method: "POST", path: "/v1/projects/proj/locations/us-central1/registries/other/devices/es-dev:publishEvent", auth: good, body: event("x", "")}},
		{name: "bad device id", code: 400, want: []series{authFailure("bad_client_id")},
			rq: request{method: "POST", path: devicePath("-x") + ":publishEvent", auth: good, body: event("x", "")}},
		{name: "config read with a bad token", code: 401, want: []series{authFailure("bad_signature")},
			rq: request{method: "GET", path: devicePath("es-dev") + "/config", auth: bearer(e.good(t, "stranger"))}},

		{name: "telemetry over 256 KB", code: 413, want: []series{reject("oversized")},
			rq: request{method: "POST", path: publishEvent, auth: good, body: event(strings.Repeat("x", publisher.MaxTelemetryBytes+1), "")}},
		{name: "ingest body over the limit", code: 413, want: []series{reject("oversized")},
			rq: request{method: "POST", path: "/v1/ingest/es-dev", auth: good, contentType: "application/json",
				body: []byte(`{"a":"` + strings.Repeat("x", 257<<10) + `"}`)}},
		{name: "subfolder with a wildcard", code: 400, want: []series{reject("invalid_topic")},
			rq: request{method: "POST", path: publishEvent, auth: good, body: event("x", "a/+")}},
		{name: "not JSON", code: 400, want: []series{reject("bad_request")},
			rq: request{method: "POST", path: publishEvent, auth: good, body: []byte("binaryData=x")}},
		{name: "ingest of an unsupported type", code: 415, want: []series{reject("bad_request")},
			rq: request{method: "POST", path: "/v1/ingest/es-dev", auth: good, contentType: "text/plain", body: []byte(reading)}},
		{name: "Pub/Sub fails", code: 503, failPubSub: true, want: []series{reject("pubsub_failed")},
			rq: request{method: "POST", path: publishEvent, auth: good, body: event("x", "")}},

		{name: "config read", code: 200,
			rq: request{method: "GET", path: devicePath("es-dev") + "/config", auth: good}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := metricstest.Get(t, e.metrics.Handler())
			if tt.failPubSub {
				e.fake.FailPublishes(status.Error(codes.PermissionDenied, "injected"))
			}
			r := e.do(t, tt.rq)
			if tt.failPubSub {
				e.fake.FailPublishes(nil)
			}
			if r.code != tt.code {
				t.Fatalf("%s %s = %d %s, want %d", tt.rq.method, tt.rq.path, r.code, r.body, tt.code)
			}
			after := metricstest.Get(t, e.metrics.Handler())
			moved := func(s series) float64 { return after.Value(s.name, s.labels...) - before.Value(s.name, s.labels...) }
			wantTotal := map[string]float64{}
			for _, s := range tt.want {
				if d := moved(s); d != 1 {
					t.Errorf("%s%v moved by %v, want 1", s.name, s.labels, d)
				}
				wantTotal[s.name]++
			}
			for _, s := range totals {
				if d := moved(s); d != wantTotal[s.name] {
					t.Errorf("%s%v moved by %v in all, want %v", s.name, s.labels, d, wantTotal[s.name])
				}
			}
			if d := moved(series{"iotpipe_ingress_messages_in_total", []string{"transport", "mqtt"}}); d != 0 {
				t.Errorf("MQTT messages in moved by %v", d)
			}
		})
	}
}
