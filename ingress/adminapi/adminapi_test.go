package adminapi_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/iotpipe/iotpipe/ingress/adminapi"
	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
)

const (
	base = "/v1/projects/proj/locations/us-central1/registries"
	devs = base + "/reg/devices"
)

var cfg = adminapi.Config{Project: "proj", Location: "us-central1", Registry: "reg"}

func start(t *testing.T, cfg adminapi.Config, opts ...adminapi.Option) (*httptest.Server, *registry.Store) {
	t.Helper()
	store := registrytest.Start(t, registry.Config{})
	h, err := adminapi.New(store, nil, cfg, slog.New(slog.NewTextHandler(t.Output(), nil)), opts...)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, store
}

// step is one request and what must come back. Steps run in order, on one
// registry, so later steps see what earlier ones did.
type step struct {
	name         string
	method, path string
	body         string
	header       http.Header
	wantCode     int
	wantStatus   string // the error's status, "" for success
	check        func(t *testing.T, got map[string]any)
}

func run(t *testing.T, srv *httptest.Server, steps []step) {
	t.Helper()
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			var body io.Reader
			if st.body != "" {
				body = strings.NewReader(st.body)
			}
			req, err := http.NewRequestWithContext(t.Context(), st.method, srv.URL+st.path, body)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range st.header {
				req.Header[k] = v
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q, want JSON", ct)
			}
			var got map[string]any
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatalf("%s %s: %d %s: not a JSON object: %v", st.method, st.path, resp.StatusCode, raw, err)
			}
			status := ""
			if e, ok := got["error"].(map[string]any); ok {
				status, _ = e["status"].(string)
				if code, _ := e["code"].(float64); int(code) != resp.StatusCode || e["message"] == "" {
					t.Errorf("error body %s: want code %d and a message", raw, resp.StatusCode)
				}
			}
			if resp.StatusCode != st.wantCode || status != st.wantStatus {
				t.Fatalf("%s %s = %d %s, want %d %s", st.method, st.path, resp.StatusCode, raw, st.wantCode, st.wantStatus)
			}
			if st.check != nil {
				st.check(t, got)
			}
		})
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// has checks top-level fields of an answer.
func has(want map[string]any) func(*testing.T, map[string]any) {
	return func(t *testing.T, got map[string]any) {
		t.Helper()
		for k, v := range want {
			gb, _ := json.Marshal(got[k])
			wb, _ := json.Marshal(v)
			if string(gb) != string(wb) {
				t.Errorf("field %s = %s, want %s (answer %v)", k, gb, wb, got)
			}
		}
	}
}

// fields checks that an object has exactly the given fields.
func fields(t *testing.T, obj map[string]any, want ...string) {
	t.Helper()
	var got []string
	for k := range obj {
		got = append(got, k)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("fields %v, want %v", got, want)
	}
}

func TestDevices(t *testing.T) {
	srv, _ := start(t, cfg)
	key := registrytest.NewKey(t, registry.ES256PEM)
	keyJSON, _ := json.Marshal(key.PublicKey)
	var pageToken string
	run(t, srv, []step{
		{name: "create registry", method: "POST", path: base, body: `{"id":"reg"}`, wantCode: 200,
			check: has(map[string]any{"id": "reg", "name": "projects/proj/locations/us-central1/registries/reg"})},
		{name: "create registry again", method: "POST", path: base, body: `{"id":"reg"}`, wantCode: 409, wantStatus: "ALREADY_EXISTS"},
		{name: "create registry with a bad topic", method: "POST", path: base,
			body: `{"id":"r2","eventNotificationConfigs":[{"pubsubTopicName":"events"}]}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "get registry", method: "GET", path: base + "/reg", wantCode: 200, check: has(map[string]any{"id": "reg"})},
		{name: "get unknown registry", method: "GET", path: base + "/nope", wantCode: 404, wantStatus: "NOT_FOUND"},

		{name: "create device", method: "POST", path: devs, wantCode: 200,
			body: `{"id":"dev1","credentials":[{"publicKey":` + string(keyJSON) + `}],"metadata":{"site":"lab"},` +
				`"config":{"binaryData":"` + b64("v1") + `"},"blocked":false,"deviceClass":"thermostat"}`,
			check: func(t *testing.T, got map[string]any) {
				has(map[string]any{"id": "dev1", "name": "projects/proj/locations/us-central1/registries/reg/devices/dev1",
					"metadata": map[string]any{"site": "lab"}, "status": "ACTIVE", "deviceClass": "thermostat",
					"config": map[string]any{"version": "1", "binaryData": b64("v1"), "cloudUpdateTime": got["config"].(map[string]any)["cloudUpdateTime"]}})(t, got)
				if n, _ := got["numId"].(string); n == "" || n == "0" {
					t.Errorf("numId = %v, want a decimal string", got["numId"])
				}
			}},
		{name: "create device again", method: "POST", path: devs, body: `{"id":"dev1"}`, wantCode: 409, wantStatus: "ALREADY_EXISTS"},
		{name: "create device with an id IoT Core refused", method: "POST", path: devs, body: `{"id":"1dev"}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "create device with a bad key", method: "POST", path: devs,
			body: `{"id":"dev9","credentials":[{"publicKey":{"format":"ES256_PEM","key":"nope"}}]}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "create device with an unknown field", method: "POST", path: devs, body: `{"id":"dev9","gatewayConfig":{}}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT",
			check: func(t *testing.T, got map[string]any) {
				if msg := got["error"].(map[string]any)["message"].(string); !strings.Contains(msg, "gatewayConfig") {
					t.Errorf("message %q does not name the field", msg)
				}
			}},
		{name: "create device with no body", method: "POST", path: devs, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "create device with invalid JSON", method: "POST", path: devs, body: `{"id":`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "create device with two JSON values", method: "POST", path: devs, body: `{"id":"dev9"} {}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "create device with a wrong type", method: "POST", path: devs, body: `{"id":7}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "create device in an unknown registry", method: "POST", path: base + "/nope/devices", body: `{"id":"dev9"}`, wantCode: 404, wantStatus: "NOT_FOUND"},
		{name: "create device with a huge body", method: "POST", path: devs, body: `{"id":"` + strings.Repeat("a", 2<<20) + `"}`, wantCode: 413, wantStatus: "INVALID_ARGUMENT"},
		{name: "create device with % in its id", method: "POST", path: devs, body: `{"id":"dev%2"}`, wantCode: 200},
		{name: "create dev3", method: "POST", path: devs, body: `{"id":"dev3","blocked":true}`, wantCode: 200},

		{name: "get device", method: "GET", path: devs + "/dev1", wantCode: 200,
			check: has(map[string]any{"id": "dev1", "credentials": []any{map[string]any{"publicKey": map[string]any{
				"format": "ES256_PEM", "key": key.PublicKey.Key}}}})},
		{name: "get device with % in its id", method: "GET", path: devs + "/dev%252", wantCode: 200, check: has(map[string]any{"id": "dev%2"})},
		{name: "get device with a field mask", method: "GET", path: devs + "/dev1?fieldMask=metadata,device_class", wantCode: 200,
			check: func(t *testing.T, got map[string]any) { fields(t, got, "metadata", "deviceClass") }},
		{name: "get device with a bad field mask", method: "GET", path: devs + "/dev1?fieldMask=nope", wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "get unknown device", method: "GET", path: devs + "/nope", wantCode: 404, wantStatus: "NOT_FOUND"},
		{name: "get device with a bad id", method: "GET", path: devs + "/-x", wantCode: 400, wantStatus: "INVALID_ARGUMENT"},

		{name: "list", method: "GET", path: devs, wantCode: 200, check: func(t *testing.T, got map[string]any) {
			list := got["devices"].([]any)
			var ids []string
			for _, d := range list {
				fields(t, d.(map[string]any), "id", "numId")
				ids = append(ids, d.(map[string]any)["id"].(string))
			}
			if strings.Join(ids, ",") != "dev%2,dev1,dev3" {
				t.Errorf("ids %v, want dev%%2, dev1, dev3", ids)
			}
		}},
		{name: "list a page", method: "GET", path: devs + "?pageSize=2&fieldMask=blocked", wantCode: 200, check: func(t *testing.T, got map[string]any) {
			if list := got["devices"].([]any); len(list) != 2 {
				t.Fatalf("%d devices, want 2", len(list))
			}
			pageToken, _ = got["nextPageToken"].(string)
			if pageToken == "" {
				t.Fatal("no nextPageToken")
			}
		}},
		{name: "list by ids", method: "GET", path: devs + "?deviceIds=dev1,nope&deviceIds=dev3", wantCode: 200, check: func(t *testing.T, got map[string]any) {
			if list := got["devices"].([]any); len(list) != 2 {
				t.Errorf("%d devices, want dev1 and dev3", len(list))
			}
		}},
		{name: "list with a bad page size", method: "GET", path: devs + "?pageSize=x", wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "list with a bad page token", method: "GET", path: devs + "?pageToken=!!", wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
	})
	// The page after the first: its path needs the token the steps above got.
	run(t, srv, []step{{name: "list the next page", method: "GET", path: devs + "?pageSize=2&fieldMask=blocked&pageToken=" + pageToken, wantCode: 200,
		check: func(t *testing.T, got map[string]any) {
			list, _ := got["devices"].([]any)
			if len(list) != 1 || got["nextPageToken"] != nil {
				t.Fatalf("second page %v, want one device and no token", got)
			}
			fields(t, list[0].(map[string]any), "id", "numId", "blocked")
		}}})
	run(t, srv, []step{
		{name: "patch", method: "PATCH", path: devs + "/dev1?updateMask=blocked,metadata", body: `{"blocked":true,"metadata":{"a":"b"},"logLevel":"DEBUG"}`,
			wantCode: 200, check: func(t *testing.T, got map[string]any) {
				has(map[string]any{"blocked": true, "metadata": map[string]any{"a": "b"}})(t, got)
				if _, ok := got["logLevel"]; ok {
					t.Error("logLevel changed although not in the update mask")
				}
			}},
		{name: "patch without update mask", method: "PATCH", path: devs + "/dev1", body: `{"blocked":false}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "patch an immutable field", method: "PATCH", path: devs + "/dev1?updateMask=numId", body: `{}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "patch unknown device", method: "PATCH", path: devs + "/nope?updateMask=blocked", body: `{}`, wantCode: 404, wantStatus: "NOT_FOUND"},

		{name: "modify config", method: "POST", path: devs + "/dev1:modifyCloudToDeviceConfig",
			body: `{"versionToUpdate":"1","binaryData":"` + b64("v2") + `"}`, wantCode: 200,
			check: has(map[string]any{"version": "2", "binaryData": b64("v2")})},
		{name: "modify config of a stale version", method: "POST", path: devs + "/dev1:modifyCloudToDeviceConfig",
			body: `{"versionToUpdate":"1","binaryData":"` + b64("lost") + `"}`, wantCode: 400, wantStatus: "FAILED_PRECONDITION"},
		{name: "modify config with a numeric version and URL-safe base64", method: "POST", path: devs + "/dev1:modifyCloudToDeviceConfig",
			body: `{"versionToUpdate":2,"binaryData":"_-8"}`, wantCode: 200, check: has(map[string]any{"version": "3", "binaryData": b64("\xff\xef")})},
		{name: "modify config of any version", method: "POST", path: devs + "/dev1:modifyCloudToDeviceConfig",
			body: `{"binaryData":"` + b64("v4") + `"}`, wantCode: 200, check: has(map[string]any{"version": "4"})},
		{name: "modify config with bad base64", method: "POST", path: devs + "/dev1:modifyCloudToDeviceConfig",
			body: `{"binaryData":"***"}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "modify config with a bad version", method: "POST", path: devs + "/dev1:modifyCloudToDeviceConfig",
			body: `{"versionToUpdate":"one"}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "modify config over 64 KB", method: "POST", path: devs + "/dev1:modifyCloudToDeviceConfig",
			body: `{"binaryData":"` + b64(strings.Repeat("x", 64<<10+1)) + `"}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "modify config of unknown device", method: "POST", path: devs + "/nope:modifyCloudToDeviceConfig",
			body: `{"versionToUpdate":"1"}`, wantCode: 404, wantStatus: "NOT_FOUND"},
		{name: "config versions", method: "GET", path: devs + "/dev1/configVersions", wantCode: 200, check: func(t *testing.T, got map[string]any) {
			var versions []string
			for _, c := range got["deviceConfigs"].([]any) {
				versions = append(versions, c.(map[string]any)["version"].(string))
			}
			if strings.Join(versions, ",") != "4,3,2,1" {
				t.Errorf("versions %v, want newest first", versions)
			}
		}},
		{name: "config versions, one", method: "GET", path: devs + "/dev1/configVersions?numVersions=1", wantCode: 200, check: func(t *testing.T, got map[string]any) {
			if n := len(got["deviceConfigs"].([]any)); n != 1 {
				t.Errorf("%d versions, want 1", n)
			}
		}},
		{name: "config versions of unknown device", method: "GET", path: devs + "/nope/configVersions", wantCode: 404, wantStatus: "NOT_FOUND"},
		{name: "states", method: "GET", path: devs + "/dev1/states", wantCode: 501, wantStatus: "UNIMPLEMENTED"},

		{name: "command without a bridge", method: "POST", path: devs + "/dev1:sendCommandToDevice",
			body: `{"binaryData":"` + b64("x") + `"}`, wantCode: 400, wantStatus: "FAILED_PRECONDITION"},
		{name: "command to unknown device", method: "POST", path: devs + "/nope:sendCommandToDevice", body: `{}`, wantCode: 404, wantStatus: "NOT_FOUND"},
		{name: "command with an unknown field", method: "POST", path: devs + "/dev1:sendCommandToDevice", body: `{"folder":"a"}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "unknown custom method", method: "POST", path: devs + "/dev1:reboot", body: `{}`, wantCode: 404, wantStatus: "NOT_FOUND"},
		{name: "POST a device without a custom method", method: "POST", path: devs + "/dev1", body: `{}`, wantCode: 405, wantStatus: "UNIMPLEMENTED"},

		{name: "delete", method: "DELETE", path: devs + "/dev3", wantCode: 200, check: func(t *testing.T, got map[string]any) { fields(t, got) }},
		{name: "delete again", method: "DELETE", path: devs + "/dev3", wantCode: 404, wantStatus: "NOT_FOUND"},
		{name: "get deleted", method: "GET", path: devs + "/dev3", wantCode: 404, wantStatus: "NOT_FOUND"},

		{name: "unknown path", method: "GET", path: "/v1/nope", wantCode: 404, wantStatus: "NOT_FOUND"},
		{name: "wrong method", method: "PUT", path: devs + "/dev1", body: `{}`, wantCode: 405, wantStatus: "UNIMPLEMENTED"},
		{name: "slash in a path part", method: "GET", path: "/v1/projects/a%2Fb/locations/l/registries/r/devices/d", wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
	})
}

// POST /v1/devices registers a device with a generated IoT Core id in the
// bridge's registry.
func TestRegister(t *testing.T) {
	srv, store := start(t, cfg)
	if _, err := store.CreateRegistry(t.Context(), "proj", "us-central1", registry.Registry{ID: "reg"}); err != nil {
		t.Fatal(err)
	}
	var id string
	run(t, srv, []step{
		{name: "register", method: "POST", path: "/v1/devices",
			body: `{"device_class":"thermostat","schema_id":"thermostat/1.1","metadata":{"site":"lab"}}`, wantCode: 201,
			check: func(t *testing.T, got map[string]any) {
				id, _ = got["device_id"].(string)
				if err := iotcore.ValidDeviceID(id); err != nil || !strings.HasPrefix(id, "dev-") {
					t.Errorf("device_id %q: %v; want a valid IoT Core id starting dev-", id, err)
				}
				has(map[string]any{"device_class": "thermostat", "schema_id": "thermostat/1.1", "metadata": map[string]any{"site": "lab"},
					"status": "ACTIVE", "name": "projects/proj/locations/us-central1/registries/reg/devices/" + id})(t, got)
				if n, _ := got["num_id"].(string); n == "" {
					t.Error("no num_id")
				}
			}},
		{name: "register another", method: "POST", path: "/v1/devices", body: `{"device_class":"meter"}`, wantCode: 201,
			check: func(t *testing.T, got map[string]any) {
				if got["device_id"] == id {
					t.Errorf("second device got the same id %v", id)
				}
			}},
		{name: "register with an id", method: "POST", path: "/v1/devices", body: `{"device_id":"mine"}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "register with an unknown field", method: "POST", path: "/v1/devices", body: `{"class":"x"}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "register with bad metadata", method: "POST", path: "/v1/devices", body: `{"metadata":{"a b":"c"}}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
		{name: "register with a bad status", method: "POST", path: "/v1/devices", body: `{"status":"GONE"}`, wantCode: 400, wantStatus: "INVALID_ARGUMENT"},
	})
	d, err := store.GetDevice(t.Context(), registry.Path{Project: "proj", Location: "us-central1", Registry: "reg"}.Device(id))
	if err != nil || d.DeviceClass != "thermostat" || d.SchemaID != "thermostat/1.1" {
		t.Errorf("registered device in the registry = %+v, %v", d, err)
	}
}

func TestNewChecksConfig(t *testing.T) {
	store := registrytest.Start(t, registry.Config{})
	for _, c := range []adminapi.Config{{}, {Project: "p", Location: "l"}, {Project: "p", Location: "l", Registry: "a/b"}} {
		if _, err := adminapi.New(store, nil, c, nil); err == nil {
			t.Errorf("New(%+v) succeeded", c)
		}
	}
	if _, err := adminapi.New(nil, nil, cfg, nil); err == nil {
		t.Error("New with a nil store succeeded")
	}
}

// With a token, admin calls need it; requests the API does not serve go
// to the fallback (the device HTTP bridge) untouched.
func TestTokenAndFallback(t *testing.T) {
	fallback := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"fallback": r.Method + " " + r.URL.Path, "auth": r.Header.Get("Authorization")})
	})
	srv, store := start(t, adminapi.Config{Project: "proj", Location: "us-central1", Registry: "reg", Token: "s3cret"}, adminapi.Fallback(fallback))
	if _, err := store.CreateRegistry(t.Context(), "proj", "us-central1", registry.Registry{ID: "reg"}); err != nil {
		t.Fatal(err)
	}
	good := http.Header{"Authorization": {"Bearer s3cret"}}
	device := http.Header{"Authorization": {"Bearer device.jwt"}}
	run(t, srv, []step{
		{name: "no token", method: "GET", path: devs, wantCode: 401, wantStatus: "UNAUTHENTICATED"},
		{name: "wrong token", method: "GET", path: devs, header: http.Header{"Authorization": {"Bearer nope"}}, wantCode: 401, wantStatus: "UNAUTHENTICATED"},
		{name: "token", method: "GET", path: devs, header: good, wantCode: 200},
		{name: "custom method without token", method: "POST", path: devs + "/dev1:sendCommandToDevice", body: `{}`, wantCode: 401, wantStatus: "UNAUTHENTICATED"},
		{name: "register without token", method: "POST", path: "/v1/devices", body: `{}`, wantCode: 401, wantStatus: "UNAUTHENTICATED"},
		{name: "publishEvent goes to the fallback", method: "POST", path: devs + "/dev1:publishEvent", body: `{}`, header: device, wantCode: 200,
			check: has(map[string]any{"fallback": "POST " + devs + "/dev1:publishEvent", "auth": "Bearer device.jwt"})},
		{name: "device config goes to the fallback", method: "GET", path: devs + "/dev1/config?localVersion=1", header: device, wantCode: 200,
			check: has(map[string]any{"fallback": "GET " + devs + "/dev1/config"})},
		{name: "ingest goes to the fallback", method: "POST", path: "/v1/ingest/dev1", body: `{}`, wantCode: 200,
			check: has(map[string]any{"fallback": "POST /v1/ingest/dev1"})},
	})
}
