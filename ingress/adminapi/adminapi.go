// Package adminapi serves Cloud IoT Core's admin REST API (registries, devices, config
// versions, commands) over the device registry, plus the reference design's POST /v1/devices.
//
// Paths, JSON field names and errors are IoT Core's: errors are Google's
// JSON error shape, {"error": {"code": 404, "message": "...", "status": "NOT_FOUND"}},
// with the registry's typed errors mapped to the status of the same name.
//
//	POST   /v1/projects/{p}/locations/{l}/registries                                  create a registry
//	GET    /v1/projects/{p}/locations/{l}/registries/{r}                              get a registry
//	POST   /v1/projects/{p}/locations/{l}/registries/{r}/devices                      create a device
//	GET    /v1/projects/{p}/locations/{l}/registries/{r}/devices                      list (pageSize, pageToken, fieldMask, deviceIds)
//	GET    .../devices/{d}                                                            get (fieldMask)
//	PATCH  .../devices/{d}?updateMask=a,b                                             patch
//	DELETE .../devices/{d}                                                            delete
//	POST   .../devices/{d}:modifyCloudToDeviceConfig {versionToUpdate, binaryData}    new config version
//	GET    .../devices/{d}/configVersions (numVersions)                               config history, newest first
//	POST   .../devices/{d}:sendCommandToDevice {binaryData, subfolder}                command
//	POST   /v1/devices {device_class, schema_id, metadata}                            register a device → 201 {device_id, ...}
package adminapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/iotpipe/iotpipe/ingress/devicebus"
	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/registry"
)

// Config is the API's configuration, filled from flags in main.
type Config struct {
	// Project, Location and Registry name the registry POST /v1/devices
	// creates devices in: the bridge's.
	Project, Location, Registry string
	// Token, when set, must be presented by every admin request as
	// "Authorization: Bearer {Token}". Without it the API is open to anyone
	// who can reach it, which suits only a loopback address.
	Token string
}

// Bus reaches connected devices; *devicebus.Bus is one.
type Bus interface {
	SendCommand(ctx context.Context, dp iotcore.DevicePath, subFolder string, data []byte) error
	ConfigUpdated(ctx context.Context, dp iotcore.DevicePath, cfg registry.DeviceConfig) error
}

// Option changes how a Handler is built.
type Option func(*Handler)

// Fallback makes h serve the requests the admin API has no route for
// instead of answering 404: the device-facing HTTP bridge shares IoT Core's
// paths (POST .../devices/{d}:publishEvent, GET .../devices/{d}/config), so
// one of the two handlers must come first and pass the rest on.
func Fallback(h http.Handler) Option { return func(a *Handler) { a.fallback = h } }

// Handler serves the admin API. It is safe for concurrent use.
type Handler struct {
	store    *registry.Store
	bus      Bus
	cfg      Config
	log      *slog.Logger
	mux      *http.ServeMux
	fallback http.Handler
}

// maxBody bounds a request body: a 256 KB command in base64 and JSON fits.
const maxBody = 1 << 20

// notifyTimeout bounds telling the bus about a new config after it is stored.
const notifyTimeout = 10 * time.Second

// New returns the API over store. bus delivers commands and config updates
// to connected devices; nil means none are ever connected (commands fail
// with FAILED_PRECONDITION). A nil logger means slog.Default().
func New(store *registry.Store, bus Bus, cfg Config, logger *slog.Logger, opts ...Option) (*Handler, error) {
	if store == nil {
		return nil, errors.New("adminapi: nil registry store")
	}
	probe := iotcore.DevicePath{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry, Device: "probe"}
	if _, err := iotcore.ParseClientID(probe.String()); err != nil {
		return nil, fmt.Errorf("adminapi: config: registry projects/%s/locations/%s/registries/%s: %w",
			cfg.Project, cfg.Location, cfg.Registry, err)
	}
	if logger == nil {
		logger = slog.Default()
	}
	h := &Handler{store: store, bus: bus, cfg: cfg, log: logger.With("component", "adminapi"), mux: http.NewServeMux()}
	for _, o := range opts {
		o(h)
	}
	const registries = "/v1/projects/{project}/locations/{location}/registries"
	const device = registries + "/{registry}/devices/{device}"
	routes := map[string]http.HandlerFunc{
		"POST " + registries:                         h.createRegistry,
		"GET " + registries + "/{registry}":          h.getRegistry,
		"POST " + registries + "/{registry}/devices": h.createDevice,
		"GET " + registries + "/{registry}/devices":  h.listDevices,
		"GET " + device:                              h.getDevice,
		"PATCH " + device:                            h.patchDevice,
		"DELETE " + device:                           h.deleteDevice,
		"GET " + device + "/configVersions":          h.configVersions,
		"GET " + device + "/states":                  h.states,
		"POST /v1/devices":                           h.register,
	}
	for pattern, f := range routes {
		h.mux.Handle(pattern, h.authenticated(f))
	}
	// Its custom methods are shared with the HTTP bridge: it authenticates
	// only those it serves.
	h.mux.HandleFunc("POST "+device, h.deviceMethod)
	return h, nil
}

// authenticated checks the admin token, if one is configured, before f.
func (h *Handler) authenticated(f http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if h.cfg.Token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(h.cfg.Token)) != 1 {
				writeError(w, http.StatusUnauthorized, "UNAUTHENTICATED", "request lacks the admin API's bearer token")
				return
			}
		}
		f(w, r)
	}
}

// ServeHTTP routes r, answering in Google's error shape when no route matches.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, pattern := h.mux.Handler(r); pattern == "" {
		h.unrouted(w, r)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// unrouted passes r to the fallback, or says what the mux would have said
// (404, or 405 with Allow) as JSON.
func (h *Handler) unrouted(w http.ResponseWriter, r *http.Request) {
	if h.fallback != nil {
		h.fallback.ServeHTTP(w, r)
		return
	}
	rec := &headerRecorder{header: http.Header{}}
	h.mux.ServeHTTP(rec, r)
	if rec.code == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", rec.header.Get("Allow"))
		writeError(w, http.StatusMethodNotAllowed, "UNIMPLEMENTED", fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path))
		return
	}
	writeError(w, http.StatusNotFound, "NOT_FOUND", fmt.Sprintf("no API at %s %s", r.Method, r.URL.Path))
}

// headerRecorder keeps the status and headers a handler writes, not its body.
type headerRecorder struct {
	header http.Header
	code   int
}

func (r *headerRecorder) Header() http.Header         { return r.header }
func (r *headerRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *headerRecorder) WriteHeader(code int)        { r.code = code }

// deviceMethod serves POST .../devices/{d}:{method}. ServeMux matches whole
// path segments, so the custom method is split off the wildcard here.
func (h *Handler) deviceMethod(w http.ResponseWriter, r *http.Request) {
	id, method, ok := strings.Cut(r.PathValue("device"), ":")
	switch {
	case ok && method == "modifyCloudToDeviceConfig":
		h.authenticated(func(w http.ResponseWriter, r *http.Request) { h.modifyConfig(w, r, id) })(w, r)
	case ok && method == "sendCommandToDevice":
		h.authenticated(func(w http.ResponseWriter, r *http.Request) { h.sendCommand(w, r, id) })(w, r)
	case h.fallback != nil:
		h.fallback.ServeHTTP(w, r)
	case !ok:
		writeError(w, http.StatusMethodNotAllowed, "UNIMPLEMENTED",
			fmt.Sprintf("POST %s: want a custom method, %s:modifyCloudToDeviceConfig or %s:sendCommandToDevice", r.URL.Path, id, id))
	default:
		writeError(w, http.StatusNotFound, "NOT_FOUND",
			fmt.Sprintf("device method %q: want modifyCloudToDeviceConfig or sendCommandToDevice", method))
	}
}

func registryPath(r *http.Request) registry.Path {
	return registry.Path{Project: r.PathValue("project"), Location: r.PathValue("location"), Registry: r.PathValue("registry")}
}

func devicePath(r *http.Request, id string) iotcore.DevicePath {
	return registryPath(r).Device(id)
}

// registryJSON is a registry as IoT Core returned it, with its resource name.
type registryJSON struct {
	Name string `json:"name,omitempty"`
	registry.Registry
}

func (h *Handler) createRegistry(w http.ResponseWriter, r *http.Request) {
	var in registryJSON
	if !decodeBody(w, r, &in) {
		return
	}
	p := registryPath(r)
	reg, err := h.store.CreateRegistry(r.Context(), p.Project, p.Location, in.Registry)
	if err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	p.Registry = reg.ID
	writeJSON(w, http.StatusOK, registryJSON{Name: p.String(), Registry: reg})
}

func (h *Handler) getRegistry(w http.ResponseWriter, r *http.Request) {
	p := registryPath(r)
	reg, err := h.store.GetRegistry(r.Context(), p)
	if err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, registryJSON{Name: p.String(), Registry: reg})
}

// deviceJSON is a device as IoT Core returned it, with its resource name.
type deviceJSON struct {
	Name string `json:"name,omitempty"`
	registry.Device
}

func (h *Handler) createDevice(w http.ResponseWriter, r *http.Request) {
	var in deviceJSON
	if !decodeBody(w, r, &in) {
		return
	}
	p := registryPath(r)
	d, err := h.store.CreateDevice(r.Context(), p, in.Device)
	if err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, deviceJSON{Name: p.Device(d.ID).String(), Device: d})
}

func (h *Handler) getDevice(w http.ResponseWriter, r *http.Request) {
	dp := devicePath(r, r.PathValue("device"))
	mask, err := parseFieldMask(r.URL.Query().Get("fieldMask"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", err.Error())
		return
	}
	d, err := h.store.GetDevice(r.Context(), dp)
	if err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	out := deviceJSON{Name: dp.String(), Device: d}
	if mask == nil {
		writeJSON(w, http.StatusOK, out)
		return
	}
	writeJSON(w, http.StatusOK, mask.apply(out))
}

// maxDeviceIDs bounds the deviceIds filter of a list.
const maxDeviceIDs = 1000

// listDevices lists a registry's devices. As in IoT Core, a device in the
// list has only id and numId unless fieldMask asks for more fields.
func (h *Handler) listDevices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p := registryPath(r)
	mask, err := parseFieldMask(q.Get("fieldMask"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", err.Error())
		return
	}
	pageSize := 0
	if s := q.Get("pageSize"); s != "" {
		if pageSize, err = strconv.Atoi(s); err != nil || pageSize < 0 {
			writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", fmt.Sprintf("pageSize %q: want a non-negative integer", s))
			return
		}
	}
	var devices []registry.Device
	var next string
	if ids := q["deviceIds"]; len(ids) > 0 {
		devices, err = h.devicesByID(r.Context(), p, ids)
	} else {
		devices, next, err = h.store.ListDevices(r.Context(), p, pageSize, q.Get("pageToken"))
	}
	if err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	out := struct {
		Devices       []map[string]json.RawMessage `json:"devices,omitempty"`
		NextPageToken string                       `json:"nextPageToken,omitempty"`
	}{NextPageToken: next}
	for _, d := range devices {
		out.Devices = append(out.Devices, mask.withIDs().apply(deviceJSON{Name: p.Device(d.ID).String(), Device: d}))
	}
	writeJSON(w, http.StatusOK, out)
}

// devicesByID serves list's deviceIds filter (repeated or comma-separated);
// ids that name no device are left out, as IoT Core did.
func (h *Handler) devicesByID(ctx context.Context, p registry.Path, values []string) ([]registry.Device, error) {
	var ids []string
	for _, v := range values {
		ids = append(ids, strings.Split(v, ",")...)
	}
	if len(ids) > maxDeviceIDs {
		return nil, fmt.Errorf("%w: %d deviceIds, at most %d", registry.ErrInvalidArgument, len(ids), maxDeviceIDs)
	}
	var out []registry.Device
	for _, id := range ids {
		d, err := h.store.GetDevice(ctx, p.Device(strings.TrimSpace(id)))
		if errors.Is(err, registry.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

func (h *Handler) patchDevice(w http.ResponseWriter, r *http.Request) {
	dp := devicePath(r, r.PathValue("device"))
	var mask []string
	for _, v := range r.URL.Query()["updateMask"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				mask = append(mask, f)
			}
		}
	}
	if len(mask) == 0 {
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT",
			"updateMask query parameter is required: the fields to change, e.g. ?updateMask=blocked,metadata")
		return
	}
	var in deviceJSON
	if !decodeBody(w, r, &in) {
		return
	}
	d, err := h.store.PatchDevice(r.Context(), dp, in.Device, mask)
	if err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, deviceJSON{Name: dp.String(), Device: d})
}

func (h *Handler) deleteDevice(w http.ResponseWriter, r *http.Request) {
	if err := h.store.DeleteDevice(r.Context(), devicePath(r, r.PathValue("device"))); err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// modifyConfig stores a new config version and sends it to the device if it
// is connected. The version is stored when it returns; its delivery follows.
func (h *Handler) modifyConfig(w http.ResponseWriter, r *http.Request, id string) {
	var in struct {
		VersionToUpdate int64Value `json:"versionToUpdate"`
		BinaryData      bytesValue `json:"binaryData"`
	}
	if !decodeBody(w, r, &in) {
		return
	}
	dp := devicePath(r, id)
	cfg, err := h.store.ModifyConfig(r.Context(), dp, int64(in.VersionToUpdate), in.BinaryData)
	if err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	if h.bus != nil {
		// The version is stored: deliver it even if the client goes away.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), notifyTimeout)
		defer cancel()
		if err := h.bus.ConfigUpdated(ctx, dp, cfg); err != nil {
			h.log.Warn("config stored but not delivered; the device gets it when it next subscribes",
				"device", dp.String(), "version", cfg.Version, "error", err)
		}
	}
	writeJSON(w, http.StatusOK, cfg)
}

func (h *Handler) configVersions(w http.ResponseWriter, r *http.Request) {
	n := 0
	if s := r.URL.Query().Get("numVersions"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", fmt.Sprintf("numVersions %q: want a non-negative integer", s))
			return
		}
	}
	cfgs, err := h.store.ConfigVersions(r.Context(), devicePath(r, r.PathValue("device")))
	if err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	if n > 0 && n < len(cfgs) {
		cfgs = cfgs[:n]
	}
	writeJSON(w, http.StatusOK, struct {
		DeviceConfigs []registry.DeviceConfig `json:"deviceConfigs"`
	}{cfgs})
}

// states is IoT Core's states.list; the registry does not keep states yet.
func (h *Handler) states(w http.ResponseWriter, _ *http.Request) {
	writeError(w, http.StatusNotImplemented, "UNIMPLEMENTED",
		"device states are not stored by this registry: they are forwarded to the registry's state notification topic")
}

// sendCommand sends a command to a connected device. As in IoT Core, it
// fails with FAILED_PRECONDITION when the device is not connected or not
// subscribed to its commands topic.
func (h *Handler) sendCommand(w http.ResponseWriter, r *http.Request, id string) {
	var in struct {
		BinaryData bytesValue `json:"binaryData"`
		Subfolder  string     `json:"subfolder"`
	}
	if !decodeBody(w, r, &in) {
		return
	}
	dp := devicePath(r, id)
	// NOT_FOUND for a device that does not exist, before whether it is connected.
	if _, err := h.store.GetDevice(r.Context(), dp); err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	if h.bus == nil {
		h.writeStoreError(w, r, fmt.Errorf("command to %s: %w: no bridge runs with this API", dp, devicebus.ErrNotConnected))
		return
	}
	if err := h.bus.SendCommand(r.Context(), dp, in.Subfolder, in.BinaryData); err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// registration is the reference design's POST /v1/devices body and answer.
type registration struct {
	DeviceID    string                `json:"device_id,omitempty"`
	NumID       string                `json:"num_id,omitempty"`
	Name        string                `json:"name,omitempty"`
	DeviceClass string                `json:"device_class"`
	SchemaID    string                `json:"schema_id"`
	Metadata    map[string]string     `json:"metadata,omitempty"`
	Status      registry.Status       `json:"status,omitempty"`
	Credentials []registry.Credential `json:"credentials,omitempty"` // IoT Core's shape; a device needs one to connect
}

// register creates a device with a generated id in the bridge's registry.
func (h *Handler) register(w http.ResponseWriter, r *http.Request) {
	var in registration
	if !decodeBody(w, r, &in) {
		return
	}
	if in.DeviceID != "" || in.NumID != "" || in.Name != "" {
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "device_id, num_id and name are assigned by the server; leave them out")
		return
	}
	p := registry.Path{Project: h.cfg.Project, Location: h.cfg.Location, Registry: h.cfg.Registry}
	d, err := h.store.CreateDevice(r.Context(), p, registry.Device{
		ID: "dev-" + uuid.NewString(), DeviceClass: in.DeviceClass, SchemaID: in.SchemaID,
		Metadata: in.Metadata, Status: in.Status, Credentials: in.Credentials,
	})
	if err != nil {
		h.writeStoreError(w, r, err)
		return
	}
	name := p.Device(d.ID).String()
	w.Header().Set("Location", "/v1/"+name)
	writeJSON(w, http.StatusCreated, registration{
		DeviceID: d.ID, NumID: strconv.FormatUint(d.NumID, 10), Name: name,
		DeviceClass: d.DeviceClass, SchemaID: d.SchemaID, Metadata: d.Metadata, Status: d.Status,
		Credentials: d.Credentials,
	})
}

// decodeBody decodes the request's JSON body into v, refusing unknown
// fields (as Google's APIs do) and anything after the value. On failure it
// has answered 400 and returns false.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value")
	}
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("data after the JSON value")
		}
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "INVALID_ARGUMENT", fmt.Sprintf("request body over %d bytes", tooBig.Limit))
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "empty request body: want a JSON object")
	default:
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "invalid JSON payload: "+err.Error())
	}
	return false
}

// writeStoreError answers with the status of the registry's (or the bus's)
// error. Errors the caller cannot act on are logged and not shown.
func (h *Handler) writeStoreError(w http.ResponseWriter, r *http.Request, err error) {
	code, status := http.StatusInternalServerError, "INTERNAL"
	switch {
	case errors.Is(err, registry.ErrInvalidArgument):
		code, status = http.StatusBadRequest, "INVALID_ARGUMENT"
	case errors.Is(err, registry.ErrNotFound):
		code, status = http.StatusNotFound, "NOT_FOUND"
	case errors.Is(err, registry.ErrAlreadyExists):
		code, status = http.StatusConflict, "ALREADY_EXISTS"
	case errors.Is(err, registry.ErrFailedPrecondition):
		code, status = http.StatusBadRequest, "FAILED_PRECONDITION"
	case errors.Is(err, registry.ErrAborted):
		code, status = http.StatusConflict, "ABORTED"
	case errors.Is(err, devicebus.ErrUnreachable):
		code, status = http.StatusServiceUnavailable, "UNAVAILABLE"
	case errors.Is(err, context.DeadlineExceeded):
		code, status = http.StatusGatewayTimeout, "DEADLINE_EXCEEDED"
	case errors.Is(err, context.Canceled):
		code, status = 499, "CANCELLED"
	}
	msg := err.Error()
	if code >= 500 {
		h.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "status", status, "error", err)
		if code == http.StatusInternalServerError {
			msg = "internal error; the server log has the details"
		}
	}
	writeError(w, code, status, msg)
}

func writeError(w http.ResponseWriter, code int, status, message string) {
	type body struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
	}
	writeJSON(w, code, struct {
		Error body `json:"error"`
	}{body{Code: code, Message: message, Status: status}})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // the API's own types always marshal
		code, b = http.StatusInternalServerError, []byte(`{"error":{"code":500,"message":"response not encodable","status":"INTERNAL"}}`)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
