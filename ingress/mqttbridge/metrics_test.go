package mqttbridge

import (
	"context"
	"errors"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/metrics"
	"github.com/iotpipe/iotpipe/ingress/metrics/metricstest"
)

// Every code a hook of this package closes a connection with maps to a
// reason, and closing that is not a refusal maps to none.
func TestRejectReason(t *testing.T) {
	tests := []struct {
		code packets.Code
		want string
	}{
		{packets.ErrNotAuthorized, metrics.RejectACL},
		{packets.ErrQosNotSupported, metrics.RejectQoS2},
		{packets.ErrTopicNameInvalid, metrics.RejectInvalidTopic},
		{packets.ErrPacketTooLarge, metrics.RejectOversized},
		{packets.ErrMessageRateTooHigh, metrics.RejectRateLimited},
		{packets.ErrServerBusy, metrics.RejectBackpressure},
		{packets.ErrServerShuttingDown, metrics.RejectShuttingDown},
		{errNoRoute, metrics.RejectNoRoute},
		{errForwardFailed, metrics.RejectPubSubFailed},
		{packets.ErrMaxConnectTime, ""},
		{packets.ErrSessionTakenOver, ""},
		{packets.ErrBanned, metrics.RejectOther},
	}
	for _, tt := range tests {
		t.Run(tt.code.Reason, func(t *testing.T) {
			if got := rejectReason(tt.code); got != tt.want {
				t.Errorf("rejectReason(%#x %s) = %q, want %q", tt.code.Code, tt.code.Reason, got, tt.want)
			}
		})
	}
}

// reasoned refuses every device with a reason it can name.
type reasoned struct{ reason string }

func (r reasoned) Authenticate(context.Context, iotcore.DevicePath, []byte) (Device, error) {
	return Device{}, errors.New("refused: " + r.reason)
}

func (r reasoned) RefusalReason(error) string { return r.reason }

func TestAuthFailureReasons(t *testing.T) {
	tests := []struct {
		name string
		id   string
		auth Authenticator
		want string
	}{
		{"bad client id", "dev1", AllowAll{}, "bad_client_id"},
		{"other registry", "projects/proj/locations/us-central1/registries/x/devices/dev1", AllowAll{}, "other_registry"},
		{"authenticator's reason", devicePath("dev1").String(), reasoned{"expired"}, "expired"},
		{"authenticator without reasons", devicePath("dev1").String(), refuseAll{}, "refused"},
		{"authenticator with no reason for this error", devicePath("dev1").String(), reasoned{""}, "refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := metrics.New()
			h := &identityHook{registry: testRegistry, auth: tt.auth, devices: &deviceTable{}, metrics: m, log: discard}
			if h.OnConnectAuthenticate(newClient(t, tt.id), packets.Packet{}) {
				t.Fatal("admitted")
			}
			s := metricstest.Get(t, m.Handler())
			if got := s.Value("iotpipe_ingress_auth_failures_total", "transport", "mqtt", "reason", tt.want); got != 1 {
				t.Errorf("auth_failures{reason=%q} = %v, want 1", tt.want, got)
			}
			if got := s.Value("iotpipe_ingress_auth_failures_total"); got != 1 {
				t.Errorf("auth_failures in all = %v, want 1", got)
			}
		})
	}
}

func TestMessagesOut(t *testing.T) {
	publish := func(topic string, dup bool) packets.Packet {
		return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Dup: dup}, TopicName: topic}
	}
	tests := []struct {
		name string
		pk   packets.Packet
		kind string // "" when nothing is counted
	}{
		{"config", publish("/devices/dev1/config", false), "config"},
		{"command", publish("/devices/dev1/commands", false), "commands"},
		{"command with subfolder", publish("/devices/dev1/commands/reboot/now", false), "commands"},
		{"config redelivered", publish("/devices/dev1/config", true), ""},
		{"not a device topic", publish("$SYS/broker/uptime", false), ""},
		{"puback", packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := metrics.New()
			h := &metricsHook{metrics: m, log: discard}
			h.OnPacketSent(newClient(t, devicePath("dev1").String()), tt.pk, nil)
			s := metricstest.Get(t, m.Handler())
			want := 0.0
			if tt.kind != "" {
				want = 1
				if got := s.Value("iotpipe_ingress_messages_out_total", "transport", "mqtt", "kind", tt.kind); got != 1 {
					t.Errorf("messages_out{kind=%q} = %v, want 1", tt.kind, got)
				}
			}
			if got := s.Value("iotpipe_ingress_messages_out_total"); got != want {
				t.Errorf("messages_out in all = %v, want %v", got, want)
			}
		})
	}
}

// countReject reaches the metrics only through a metered disconnector.
func TestCountReject(t *testing.T) {
	m := metrics.New()
	countReject(meteredDisconnector{next: &recordingDisconnector{}, metrics: m}, rejectPubSubFailed)
	countReject(&recordingDisconnector{}, rejectPubSubFailed) // no metrics: ignored
	if got := metricstest.Get(t, m.Handler()).Value("iotpipe_ingress_rejects_total", "reason", "pubsub_failed"); got != 1 {
		t.Errorf("rejects{pubsub_failed} = %v, want 1", got)
	}
}
