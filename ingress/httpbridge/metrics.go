package httpbridge

import (
	"net/http"

	"github.com/iotpipe/iotpipe/ingress/jwtauth"
	"github.com/iotpipe/iotpipe/ingress/metrics"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
)

// auth_failures reasons of the bridge's own. The first three are the values
// mqttbridge counts the same refusals under at MQTT connect, so that one
// query sees a device's failures whichever transport it used.
const (
	authBadClientID    = "bad_client_id"  // the path names no valid IoT Core device
	authOtherRegistry  = "other_registry" // a registry this bridge does not serve
	authRefusedUnnamed = "refused"        // the Authenticator gave no reason
	// authNotLoopback: a bridge that authenticates no one was called from
	// off the machine (MQTT has no such refusal: it does not listen there).
	authNotLoopback = "not_loopback"
)

// rejectBadRequest is the rejects_total reason of a request whose body or
// headers are not the method's (bad JSON or base64, unsupported media):
// MQTT has no such refusal, since its payloads are opaque bytes.
const rejectBadRequest = "bad_request"

// authFailed counts a request refused before it was authenticated.
func (b *Bridge) authFailed(reason string) { b.cfg.Metrics.AuthFailure(metrics.HTTP, reason) }

// refusalReason is the auth_failures reason for auth's refusal err: the
// Authenticator's own name for it, as mqttbridge asks, else jwtauth's
// reason, else "refused".
func refusalReason(auth mqttbridge.Authenticator, err error) string {
	if r, ok := auth.(mqttbridge.RefusalReasoner); ok {
		if reason := r.RefusalReason(err); reason != "" {
			return reason
		}
	}
	if reason := jwtauth.ReasonOf(err); reason != "" {
		return string(reason)
	}
	return authRefusedUnnamed
}

// rejecting sets the rejects_total reason e is counted under.
func (e *apiError) rejecting(reason string) *apiError {
	e.reject = reason
	return e
}

// rejectReason is the rejects_total reason of a refused device message.
func (e *apiError) rejectReason() string {
	switch {
	case e.reject != "":
		return e.reject
	case e.code < http.StatusInternalServerError:
		return rejectBadRequest
	}
	return metrics.RejectOther
}
