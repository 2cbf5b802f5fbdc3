// Package httpcall makes one request of an ingress HTTP API in a test and
// decodes its JSON answer, so that a test reads as method, path and result.
package httpcall

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
)

// JSON sends method url with body encoded as JSON (no body when nil) and,
// unless bearer is empty, "Authorization: Bearer <bearer>". It returns the
// status code and the answer's JSON object, and fails t if the request
// cannot be made or the answer is not a JSON object.
func JSON(t testing.TB, method, url, bearer string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatalf("%s %s: encoding the body: %v", method, url, err)
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: %d, body %q is not JSON: %v", method, url, resp.StatusCode, raw, err)
	}
	return resp.StatusCode, out
}
