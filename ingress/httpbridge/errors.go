package httpbridge

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/iotpipe/iotpipe/ingress/metrics"
)

// apiError is an error answer in Google's JSON error shape,
// {"error":{"code":404,"message":"...","status":"NOT_FOUND"}}, which IoT
// Core's device clients already parse: code is the HTTP status, status the
// google.rpc.Code name.
type apiError struct {
	code    int
	status  string
	message string
	// reject is the rejects_total reason when the answer refuses a device
	// message; "" leaves it to rejectReason.
	reject string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.code, e.status, e.message) }

func newError(code int, status, format string, args ...any) *apiError {
	return &apiError{code: code, status: status, message: fmt.Sprintf(format, args...)}
}

// The answers the bridge gives, by HTTP status.
func badRequest(format string, args ...any) *apiError {
	return newError(http.StatusBadRequest, "INVALID_ARGUMENT", format, args...)
}

func unauthenticated(format string, args ...any) *apiError {
	return newError(http.StatusUnauthorized, "UNAUTHENTICATED", format, args...)
}

func permissionDenied(format string, args ...any) *apiError {
	return newError(http.StatusForbidden, "PERMISSION_DENIED", format, args...)
}

func notFound(format string, args ...any) *apiError {
	return newError(http.StatusNotFound, "NOT_FOUND", format, args...)
}

// tooLarge and unsupportedMedia have no google.rpc.Code of their own; the
// HTTP status says what happened and INVALID_ARGUMENT that resending the
// same request cannot help.
func tooLarge(format string, args ...any) *apiError {
	return newError(http.StatusRequestEntityTooLarge, "INVALID_ARGUMENT", format, args...).rejecting(metrics.RejectOversized)
}

func unsupportedMedia(format string, args ...any) *apiError {
	return newError(http.StatusUnsupportedMediaType, "INVALID_ARGUMENT", format, args...)
}

func unavailable(format string, args ...any) *apiError {
	return newError(http.StatusServiceUnavailable, "UNAVAILABLE", format, args...)
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Status  string `json:"status"`
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.code == http.StatusUnauthorized {
		// RFC 6750: say which scheme the bridge wants.
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	}
	writeJSON(w, e.code, errorBody{Error: errorDetail{Code: e.code, Message: e.message, Status: e.status}})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only the bridge's own response types get here, and they marshal.
		code, b = http.StatusInternalServerError, []byte(`{"error":{"code":500,"message":"response not encodable","status":"INTERNAL"}}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
