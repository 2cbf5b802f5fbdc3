package httpbridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
)

// Body limits of IoT Core's JSON methods: the payload's limit in base64,
// plus room for the rest of the request.
var (
	maxPublishEventBody = int64(base64.StdEncoding.EncodedLen(publisher.MaxTelemetryBytes) + 4<<10)
	maxSetStateBody     = int64(base64.StdEncoding.EncodedLen(publisher.MaxStateBytes) + 4<<10)
)

// binaryData is a bytes field of IoT Core's JSON. Like every proto3 JSON
// parser (IoT Core's front end was one) it takes the field's camelCase or
// proto name and standard or URL-safe base64, padded or not.
type binaryData struct {
	Camel *string `json:"binaryData"`
	Proto *string `json:"binary_data"`
}

func (d binaryData) decode(field string) ([]byte, *apiError) {
	var s string
	switch {
	case d.Camel != nil && d.Proto != nil:
		return nil, badRequest("%s: both binaryData and binary_data are set", field)
	case d.Camel != nil:
		s = *d.Camel
	case d.Proto != nil:
		s = *d.Proto
	default:
		return nil, badRequest("%s: binaryData is required", field)
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	_, err := base64.StdEncoding.DecodeString(s)
	return nil, badRequest("%s.binaryData is not base64: %v", field, err)
}

// publishEventRequest is IoT Core's PublishDeviceEventRequest body.
// gatewayInfo is not accepted: the bridge has no gateways yet, and an
// unknown field is refused rather than ignored.
type publishEventRequest struct {
	binaryData
	SubFolder      string `json:"subFolder"`
	SubFolderProto string `json:"sub_folder"`
}

// setStateRequest is IoT Core's SetDeviceStateRequest body.
type setStateRequest struct {
	State *binaryData `json:"state"`
}

// readJSONRequest reads an IoT Core method's JSON body into v.
func readJSONRequest(w http.ResponseWriter, r *http.Request, limit int64, v any) *apiError {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return unsupportedMedia("Content-Type %q: want application/json", clip(ct))
		}
	}
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return unsupportedMedia("Content-Encoding %q: IoT Core methods take identity only", clip(ce))
	}
	body, aerr := readBody(w, r, limit)
	if aerr != nil {
		return aerr
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("body is not the method's JSON request: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badRequest("body holds data after its JSON request")
	}
	return nil
}

// publishEvent is IoT Core's devices.publishEvent: telemetry, routed by subFolder.
func (b *Bridge) publishEvent(w http.ResponseWriter, r *http.Request, dev mqttbridge.Device) *apiError {
	var req publishEventRequest
	if aerr := readJSONRequest(w, r, maxPublishEventBody, &req); aerr != nil {
		return aerr
	}
	data, aerr := req.binaryData.decode("request")
	if aerr != nil {
		return aerr
	}
	if req.SubFolder != "" && req.SubFolderProto != "" {
		return badRequest("both subFolder and sub_folder are set")
	}
	sub := req.SubFolder + req.SubFolderProto
	if _, aerr := b.publish(r, publisher.Message{Device: dev.Path, NumID: dev.NumID, Kind: iotcore.Events, SubFolder: sub, Data: data}); aerr != nil {
		return aerr
	}
	writeJSON(w, http.StatusOK, struct{}{}) // PublishDeviceEventResponse is empty
	return nil
}

// setState is IoT Core's devices.setState: the device's state, to the
// registry's state topic (acknowledged and dropped when it has none).
func (b *Bridge) setState(w http.ResponseWriter, r *http.Request, dev mqttbridge.Device) *apiError {
	var req setStateRequest
	if aerr := readJSONRequest(w, r, maxSetStateBody, &req); aerr != nil {
		return aerr
	}
	if req.State == nil {
		return badRequest("state is required")
	}
	data, aerr := req.State.decode("state")
	if aerr != nil {
		return aerr
	}
	if _, aerr := b.publish(r, publisher.Message{Device: dev.Path, NumID: dev.NumID, Kind: iotcore.State, Data: data}); aerr != nil {
		return aerr
	}
	writeJSON(w, http.StatusOK, struct{}{}) // SetDeviceStateResponse is empty
	return nil
}

// getConfig is IoT Core's devices.getConfig. With local_version 0 (or none)
// it returns the current config. IoT Core documented that a nonzero
// local_version gets config data "only if a higher version is available"
// and OUT_OF_RANGE when it is above the latest; its own samples poll with
// local_version=1 and expect an immediate 200. So a local_version above
// the current version is OUT_OF_RANGE, and any other is answered at once
// with the current config: the device compares the version with its own
// and has nothing to apply when they are equal. There is no long poll: a
// device on HTTP polls, and one that needs pushes uses MQTT.
func (b *Bridge) getConfig(w http.ResponseWriter, r *http.Request, dev mqttbridge.Device) *apiError {
	local, aerr := localVersion(r)
	if aerr != nil {
		return aerr
	}
	if b.devices == nil {
		return newError(http.StatusBadRequest, "FAILED_PRECONDITION", "this bridge runs without a device registry, where configs are kept")
	}
	d, err := b.devices.LookupDevice(r.Context(), dev.Path)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		// Deleted since it authenticated (or the authenticator has no registry).
		return notFound("device %s: %v", dev.Path.Device, err)
	case err != nil:
		return unavailable("read the config of device %s: %v", dev.Path.Device, err)
	case local > d.Config.Version:
		return newError(http.StatusBadRequest, "OUT_OF_RANGE", "local_version %d is above the latest config version %d", local, d.Config.Version)
	}
	writeJSON(w, http.StatusOK, d.Config) // {"version","cloudUpdateTime","binaryData"}
	return nil
}

// localVersion reads local_version, or localVersion as the REST reference
// spelled it.
func localVersion(r *http.Request) (int64, *apiError) {
	q := r.URL.Query()
	var v string
	for _, name := range []string{"local_version", "localVersion"} {
		vs := q[name]
		switch {
		case len(vs) == 0:
			continue
		case len(vs) > 1 || v != "" && v != vs[0]:
			return 0, badRequest("local_version given more than once")
		}
		v = vs[0]
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, badRequest("local_version %q: want a version number, 0 for the latest", clip(v))
	}
	return n, nil
}
