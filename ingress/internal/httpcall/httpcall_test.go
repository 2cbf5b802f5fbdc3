package httpcall_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/iotpipe/iotpipe/ingress/internal/httpcall"
)

// TestJSON: what JSON sends is what the server sees, and the server's
// status and JSON object come back.
func TestJSON(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusTeapot)
		json.NewEncoder(w).Encode(map[string]any{
			"method": r.Method, "path": r.URL.Path, "auth": r.Header.Get("Authorization"), "body": string(raw),
		})
	}))
	defer srv.Close()
	tests := []struct {
		name, method, bearer string
		body                 any
		want                 map[string]any
	}{
		{"no body, no token", "GET", "", nil,
			map[string]any{"method": "GET", "path": "/p", "auth": "", "body": ""}},
		{"JSON body and token", "POST", "secret", map[string]any{"id": "dev1"},
			map[string]any{"method": "POST", "path": "/p", "auth": "Bearer secret", "body": `{"id":"dev1"}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, got := httpcall.JSON(t, tt.method, srv.URL+"/p", tt.bearer, tt.body)
			if code != http.StatusTeapot {
				t.Errorf("code = %d, want %d", code, http.StatusTeapot)
			}
			for k, want := range tt.want {
				if got[k] != want {
					t.Errorf("server saw %s = %q, want %q", k, got[k], want)
				}
			}
		})
	}
}
