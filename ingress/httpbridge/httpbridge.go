// Package httpbridge is the HTTP front end of the device bridge: Cloud IoT Core's HTTP device API
// (publishEvent, setState, getConfig) and the reference design's ingest endpoint, with device JWTs.
//
// Routes, all answered in Google's JSON error shape when they fail:
//
//	POST /v1/projects/{p}/locations/{l}/registries/{r}/devices/{id}:publishEvent  {"binaryData","subFolder"} → 200 {}
//	POST /v1/projects/{p}/locations/{l}/registries/{r}/devices/{id}:setState      {"state":{"binaryData"}}  → 200 {}
//	GET  /v1/projects/{p}/locations/{l}/registries/{r}/devices/{id}/config?local_version=N               → 200 {version, cloudUpdateTime, binaryData}
//	POST /v1/ingest/{id}  JSON, NDJSON (one reading), MessagePack; optionally gzip                      → 202 {"messageId"}
//
// Every request carries "Authorization: Bearer <JWT>", checked by the
// bridge's Authenticator with the same rules as an MQTT password (see
// ingress/jwtauth): the token must verify with a key of the device the path
// names, so a device can act only as itself. A bridge serves one registry, as
// the MQTT bridge does; the ingest path names a device of it. Messages go
// through the same publisher.Router as MQTT messages, so they land on the
// same topics with the same attributes and limits, and a request is answered
// only once Pub/Sub has stored its message.
package httpbridge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/iotpipe/iotpipe/ingress/internal/loopback"
	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/jwtauth"
	"github.com/iotpipe/iotpipe/ingress/metrics"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/publisher"
	"github.com/iotpipe/iotpipe/ingress/registry"
)

// DefaultPublishTimeout is Config.PublishTimeout when zero: how long a
// request waits for Pub/Sub, as long as the MQTT bridge waits before
// giving up on a PUBACK.
const DefaultPublishTimeout = 10 * time.Second

// authTimeout bounds an Authenticator call (a registry lookup at worst).
const authTimeout = 10 * time.Second

// Config is the HTTP bridge's configuration, filled from flags in main.
type Config struct {
	// Project, Location and Registry name the one registry whose devices
	// may call, as in mqttbridge.Config.
	Project, Location, Registry string
	// PublishTimeout bounds the wait for Pub/Sub's confirmation of a
	// message; DefaultPublishTimeout when zero.
	PublishTimeout time.Duration
	// Metrics receives the bridge's metrics, with transport "http"; nil
	// records none.
	Metrics *metrics.Metrics
}

// Validate reports the first problem with cfg.
func (cfg Config) Validate() error {
	for _, f := range []struct{ name, value string }{
		{"Project", cfg.Project}, {"Location", cfg.Location}, {"Registry", cfg.Registry},
	} {
		if f.value == "" {
			return fmt.Errorf("httpbridge: config: empty %s", f.name)
		}
	}
	p := registry.Path{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry}
	if _, err := iotcore.ParseClientID(p.Device("probe").String()); err != nil {
		return fmt.Errorf("httpbridge: config: registry %s: %w", p, err)
	}
	if cfg.PublishTimeout < 0 {
		return fmt.Errorf("httpbridge: config: negative PublishTimeout %v", cfg.PublishTimeout)
	}
	return nil
}

// Devices is where a device's config is read; *registry.Store is one, and
// its cached LookupDevice is the same read the authenticator makes.
type Devices interface {
	LookupDevice(ctx context.Context, dp iotcore.DevicePath) (registry.Device, error)
}

// messageRouter is the part of *publisher.Router the bridge uses.
type messageRouter interface {
	Publish(ctx context.Context, m publisher.Message) (publisher.Sent, error)
}

// Bridge serves the HTTP device API. It is an http.Handler.
type Bridge struct {
	cfg     Config
	reg     registry.Path
	router  messageRouter
	auth    mqttbridge.Authenticator
	devices Devices
	open    bool // auth admits anyone: loopback clients only
	log     *slog.Logger
}

// New returns a bridge that publishes through router and admits devices
// with auth (*jwtauth.Authenticator; mqttbridge.AllowAll only where the
// MQTT bridge would allow it, see ServeHTTP). devices serves config reads;
// when nil (a bridge without a registry), config requests fail with
// FAILED_PRECONDITION. A nil logger means slog.Default().
func New(cfg Config, router *publisher.Router, auth mqttbridge.Authenticator, devices Devices, logger *slog.Logger) (*Bridge, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	switch {
	case router == nil:
		return nil, errors.New("httpbridge: nil router")
	case auth == nil:
		return nil, errors.New("httpbridge: nil Authenticator")
	}
	if cfg.PublishTimeout == 0 {
		cfg.PublishTimeout = DefaultPublishTimeout
	}
	if logger == nil {
		logger = slog.Default()
	}
	b := &Bridge{
		cfg: cfg, reg: registry.Path{Project: cfg.Project, Location: cfg.Location, Registry: cfg.Registry},
		router: router, auth: auth, devices: devices, open: admitsAnyone(auth),
		log: logger.With("component", "httpbridge"),
	}
	if b.open {
		b.log.Warn("devices are NOT authenticated (AllowAll): the HTTP bridge answers loopback clients only", "registry", b.reg.String())
	}
	return b, nil
}

// admitsAnyone reports whether auth lets anyone in: mqttbridge's rule for
// when its listener must be loopback.
func admitsAnyone(auth mqttbridge.Authenticator) bool {
	switch auth.(type) {
	case mqttbridge.AllowAll, *mqttbridge.AllowAll:
		return true
	}
	return false
}

// ServeHTTP serves the bridge's routes and answers anything else 404.
func (b *Bridge) ServeHTTP(w http.ResponseWriter, r *http.Request) { b.Handler(nil).ServeHTTP(w, r) }

// Handler serves the bridge's routes and hands every other request to next,
// so that the admin API, which shares IoT Core's /v1/projects/... paths
// (and, on a shared mux, the POST .../devices/{id} pattern), can sit behind
// it on one port. A nil next answers 404.
//
// A bridge whose Authenticator is mqttbridge.AllowAll serves only requests
// that arrive over loopback, from a loopback address: anyone else could
// act as any device, so the MQTT bridge's listen-on-loopback rule holds
// per request here, whatever address main binds.
func (b *Bridge) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt, ok := b.match(r)
		if !ok {
			if next != nil {
				next.ServeHTTP(w, r)
				return
			}
			writeError(w, notFound("no such method: %s %s", r.Method, clip(r.URL.Path)))
			return
		}
		if err := b.serve(w, r, rt); err != nil {
			b.log.Info("request refused", "method", r.Method, "path", clip(r.URL.Path), "remote", r.RemoteAddr,
				"code", err.code, "status", err.status, "reason", err.message)
			writeError(w, err)
		}
	})
}

// Operations of the bridge.
type operation int

const (
	publishEvent operation = iota + 1
	setState
	getConfig
	ingest
)

// route is a request the bridge serves.
type route struct {
	op operation
	// reg and device are as the path names them, not yet checked.
	reg    registry.Path
	device string
}

// match recognises the bridge's routes. It splits the escaped path so that
// an escaped "/" inside a segment cannot make up segments of its own.
func (b *Bridge) match(r *http.Request) (route, bool) {
	raw := strings.Split(r.URL.EscapedPath(), "/")
	seg := make([]string, len(raw))
	for i, s := range raw {
		u, err := url.PathUnescape(s)
		if err != nil {
			return route{}, false
		}
		seg[i] = u
	}
	switch {
	case len(seg) == 4 && seg[0] == "" && seg[1] == "v1" && seg[2] == "ingest" && r.Method == http.MethodPost:
		return route{op: ingest, reg: b.reg, device: seg[3]}, true
	case len(seg) < 10 || seg[0] != "" || seg[1] != "v1" || seg[2] != "projects" || seg[4] != "locations" ||
		seg[6] != "registries" || seg[8] != "devices":
		return route{}, false
	}
	rt := route{reg: registry.Path{Project: seg[3], Location: seg[5], Registry: seg[7]}}
	switch {
	case len(seg) == 11 && seg[10] == "config" && r.Method == http.MethodGet:
		rt.op, rt.device = getConfig, seg[9]
	case len(seg) == 10 && r.Method == http.MethodPost:
		// A device id cannot hold ":", so the verb is after the last one.
		id, verb, ok := cut(seg[9])
		switch {
		case ok && verb == "publishEvent":
			rt.op = publishEvent
		case ok && verb == "setState":
			rt.op = setState
		default:
			return route{}, false
		}
		rt.device = id
	default:
		return route{}, false
	}
	return rt, true
}

func cut(s string) (before, after string, found bool) {
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		return s[:i], s[i+1:], true
	}
	return s, "", false
}

// serve checks the device and its credentials, then runs the operation.
func (b *Bridge) serve(w http.ResponseWriter, r *http.Request, rt route) *apiError {
	if rt.reg != b.reg {
		b.authFailed(authOtherRegistry)
		return permissionDenied("this bridge serves the devices of %s, not of %s", b.reg, clip(rt.reg.String()))
	}
	dp := rt.reg.Device(rt.device)
	if _, err := iotcore.ParseClientID(dp.String()); err != nil {
		b.authFailed(authBadClientID)
		return badRequest("device %q: %v", clip(rt.device), err)
	}
	dev, aerr := b.authenticate(r, dp)
	if aerr != nil {
		return aerr
	}
	switch rt.op {
	case publishEvent:
		aerr = b.publishEvent(w, r, dev)
	case setState:
		aerr = b.setState(w, r, dev)
	case getConfig:
		return b.getConfig(w, r, dev) // reads, so no message to refuse
	default:
		aerr = b.ingest(w, r, dev)
	}
	if aerr != nil {
		b.cfg.Metrics.Reject(metrics.HTTP, aerr.rejectReason())
	}
	return aerr
}

// authenticate checks the request's bearer token against dp's keys.
func (b *Bridge) authenticate(r *http.Request, dp iotcore.DevicePath) (mqttbridge.Device, *apiError) {
	if b.open && !fromLoopback(r) {
		b.authFailed(authNotLoopback)
		return mqttbridge.Device{}, permissionDenied("this bridge authenticates no devices (it runs without a registry), so it serves loopback clients only")
	}
	var token string
	if !b.open {
		var aerr *apiError
		if token, aerr = bearerToken(r); aerr != nil {
			// What an MQTT connect without a JWT password is refused for.
			b.authFailed(string(jwtauth.ReasonBadToken))
			return mqttbridge.Device{}, aerr
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), authTimeout)
	defer cancel()
	dev, err := b.auth.Authenticate(ctx, dp, []byte(token))
	if err != nil {
		b.authFailed(refusalReason(b.auth, err))
		switch jwtauth.ReasonOf(err) {
		case jwtauth.ReasonBlocked, jwtauth.ReasonInactive, jwtauth.ReasonQuarantined:
			return mqttbridge.Device{}, permissionDenied("device %s is refused: %v", dp.Device, err)
		case jwtauth.ReasonLookupFailed:
			return mqttbridge.Device{}, unavailable("device %s: registry unavailable, retry: %v", dp.Device, err)
		}
		return mqttbridge.Device{}, unauthenticated("device %s: JWT refused: %v", dp.Device, err)
	}
	dev.Path = dp // the path is the identity; the authenticator only adds to it
	return dev, nil
}

// bearerToken returns the token of an "Authorization: Bearer <token>" header.
func bearerToken(r *http.Request) (string, *apiError) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return "", unauthenticated("no Authorization header: want Authorization: Bearer <device JWT>")
	}
	scheme, token, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", unauthenticated("Authorization header is not \"Bearer <device JWT>\"")
	}
	return strings.TrimSpace(token), nil
}

// fromLoopback reports whether r came in on a loopback address from one.
func fromLoopback(r *http.Request) bool {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return local != nil && loopback.Addr(local.String()) && loopback.Addr(r.RemoteAddr)
}

// readBody reads at most limit bytes of the request body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *apiError) {
	if r.ContentLength > limit {
		return nil, tooLarge("body of %d bytes, at most %d", r.ContentLength, limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if maxErr, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return nil, tooLarge("body over %d bytes", maxErr.Limit)
	}
	if err != nil {
		return nil, badRequest("read body: %v", err)
	}
	return body, nil
}

// publish hands m to the router and maps its errors to answers.
func (b *Bridge) publish(r *http.Request, m publisher.Message) (publisher.Sent, *apiError) {
	ctx, cancel := context.WithTimeout(r.Context(), b.cfg.PublishTimeout)
	defer cancel()
	start := time.Now()
	sent, err := b.router.Publish(ctx, m)
	switch {
	case errors.Is(err, publisher.ErrTooLarge):
		return sent, tooLarge("%v", err)
	case errors.Is(err, publisher.ErrInvalidMessage):
		// A subfolder that is no topic level: over MQTT, a bad topic name.
		return sent, badRequest("%v", err).rejecting(metrics.RejectInvalidTopic)
	case errors.Is(err, publisher.ErrNoRoute):
		// IoT Core failed publishEvent when the registry had no topic for it.
		return sent, newError(http.StatusBadRequest, "FAILED_PRECONDITION", "%v", err).rejecting(metrics.RejectNoRoute)
	case err != nil:
		b.log.Error("message not stored in Pub/Sub", "device", m.Device.String(), "kind", m.Kind.String(), "error", err)
		return sent, unavailable("message not stored in Pub/Sub, send it again: %v", err).rejecting(metrics.RejectPubSubFailed)
	}
	if sent.Topic != "" { // not state dropped for want of a state topic
		b.cfg.Metrics.ObservePublish(metrics.HTTP, time.Since(start))
	}
	b.cfg.Metrics.MessageIn(metrics.HTTP, metrics.Kind(m.Kind.String()))
	b.log.Debug("forwarded", "device", m.Device.String(), "kind", m.Kind.String(), "pubsub_topic", sent.Topic, "message_id", sent.MessageID)
	return sent, nil
}

// clip shortens a client-chosen string for an answer or a log line.
func clip(s string) string {
	const max = 200
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
