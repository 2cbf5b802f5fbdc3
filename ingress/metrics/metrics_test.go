package metrics_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/ingress/metrics"
	"github.com/iotpipe/iotpipe/ingress/metrics/metricstest"
)

func TestCounters(t *testing.T) {
	tests := []struct {
		name   string
		record func(m *metrics.Metrics)
		metric string
		labels []string
		want   float64
	}{
		{"connect", func(m *metrics.Metrics) { m.Connected(metrics.MQTT); m.Connected(metrics.MQTT) },
			"iotpipe_ingress_connections", []string{"transport", "mqtt"}, 2},
		{"connect and disconnect", func(m *metrics.Metrics) { m.Connected(metrics.MQTT); m.Disconnected(metrics.MQTT) },
			"iotpipe_ingress_connections", []string{"transport", "mqtt"}, 0},
		{"http connection", func(m *metrics.Metrics) { m.HTTPConnState(nil, http.StateNew) },
			"iotpipe_ingress_connections", []string{"transport", "http"}, 1},
		{"http connection closed", func(m *metrics.Metrics) {
			m.HTTPConnState(nil, http.StateNew)
			m.HTTPConnState(nil, http.StateActive)
			m.HTTPConnState(nil, http.StateIdle)
			m.HTTPConnState(nil, http.StateClosed)
		}, "iotpipe_ingress_connections", []string{"transport", "http"}, 0},
		{"message in", func(m *metrics.Metrics) { m.MessageIn(metrics.HTTP, metrics.State) },
			"iotpipe_ingress_messages_in_total", []string{"transport", "http", "kind", "state"}, 1},
		{"message out", func(m *metrics.Metrics) { m.MessageOut(metrics.MQTT, metrics.Commands) },
			"iotpipe_ingress_messages_out_total", []string{"kind", "commands"}, 1},
		{"publish latency", func(m *metrics.Metrics) {
			m.ObservePublish(metrics.MQTT, 3*time.Millisecond)
			m.ObservePublish(metrics.MQTT, time.Second)
		}, "iotpipe_ingress_publish_latency_seconds", []string{"transport", "mqtt"}, 2},
		{"auth failure", func(m *metrics.Metrics) { m.AuthFailure(metrics.MQTT, "expired") },
			"iotpipe_ingress_auth_failures_total", []string{"reason", "expired"}, 1},
		{"reject", func(m *metrics.Metrics) { m.Reject(metrics.MQTT, metrics.RejectQoS2) },
			"iotpipe_ingress_rejects_total", []string{"transport", "mqtt", "reason", "qos2"}, 1},
		{"throttled", func(m *metrics.Metrics) { m.Throttled(metrics.MQTT, metrics.LimitDeviceState, 250*time.Millisecond) },
			"iotpipe_ingress_throttled_total", []string{"limit", "device_state"}, 1},
		{"throttle wait", func(m *metrics.Metrics) { m.Throttled(metrics.MQTT, metrics.LimitDeviceState, 250*time.Millisecond) },
			"iotpipe_ingress_throttle_wait_seconds_total", []string{"limit", "device_state"}, 0.25},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := metrics.New()
			tt.record(m)
			if got := metricstest.Get(t, m.Handler()).Value(tt.metric, tt.labels...); got != tt.want {
				t.Errorf("%s%v = %v, want %v", tt.metric, tt.labels, got, tt.want)
			}
		})
	}
}

// Series that alerts depend on exist at zero before anything happens, and
// the runtime collectors are on the same registry.
func TestInitialSeries(t *testing.T) {
	s := metricstest.Get(t, metrics.New().Handler())
	for _, name := range []string{
		"iotpipe_ingress_connections", "iotpipe_ingress_messages_in_total", "iotpipe_ingress_messages_out_total",
		"iotpipe_ingress_publish_latency_seconds", "iotpipe_ingress_rejects_total",
		"go_goroutines", "process_resident_memory_bytes",
	} {
		if _, ok := s[name]; !ok {
			t.Errorf("scrape has no %s", name)
		}
	}
}

// Two Metrics are independent: nothing goes through a global registry.
func TestSeparateRegistries(t *testing.T) {
	a, b := metrics.New(), metrics.New()
	a.Reject(metrics.MQTT, metrics.RejectACL)
	if got := metricstest.Get(t, b.Handler()).Value("iotpipe_ingress_rejects_total", "reason", "acl"); got != 0 {
		t.Errorf("b counted a's reject: %v", got)
	}
}

// A front end built without metrics calls the methods on a nil *Metrics.
func TestNilIsNoop(t *testing.T) {
	var m *metrics.Metrics
	m.Connected(metrics.MQTT)
	m.Disconnected(metrics.MQTT)
	m.HTTPConnState(nil, http.StateNew)
	m.MessageIn(metrics.MQTT, metrics.Events)
	m.MessageOut(metrics.MQTT, metrics.Config)
	m.ObservePublish(metrics.MQTT, time.Millisecond)
	m.AuthFailure(metrics.MQTT, "expired")
	m.Reject(metrics.MQTT, metrics.RejectACL)
	m.Throttled(metrics.MQTT, metrics.LimitDeviceBytes, time.Millisecond)
}
