// Package jwtauth authenticates devices the way Cloud IoT Core did: the MQTT
// password is a JWT signed with one of the device's registered keys.
//
// A token is accepted when it is RS256 or ES256; one of the device's
// unexpired credentials of that algorithm verifies its signature; its aud is
// the project id; its iat is at most Skew in the future; it has an exp, at
// most 24 h after iat and not more than Skew in the past; and the device is
// neither blocked nor out of service. Any other token is refused with an
// *Error whose Reason says why, for logs and metrics.
package jwtauth

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/iotpipe/iotpipe/ingress/iotcore"
	"github.com/iotpipe/iotpipe/ingress/mqttbridge"
	"github.com/iotpipe/iotpipe/ingress/registry"
)

// Protocol limits, as IoT Core set them.
const (
	// DefaultSkew is how far device clocks may be off: iat this far in the
	// future and exp this far in the past are still accepted.
	DefaultSkew = 10 * time.Minute
	// MaxLifetime bounds exp − iat.
	MaxLifetime = 24 * time.Hour
	// maxTokenBytes is far above any RS256 or ES256 device token (an RS256
	// signature of a 4096-bit key is 683 characters), so that a hostile
	// 64 KB password is not decoded at all.
	maxTokenBytes = 8 << 10
)

// Reason says why a device was refused. Its values are stable metric labels.
type Reason string

// Reasons for refusing a device.
const (
	// ReasonUnknownDevice: the registry has no such device.
	ReasonUnknownDevice Reason = "unknown_device"
	// ReasonBlocked: the device is blocked.
	ReasonBlocked Reason = "blocked"
	// ReasonInactive: the device's status is INACTIVE.
	ReasonInactive Reason = "inactive"
	// ReasonQuarantined: the device's status is QUARANTINED.
	ReasonQuarantined Reason = "quarantined"
	// ReasonBadToken: the password is not a JWT this protocol accepts: not
	// a JWT, an alg other than RS256 or ES256, aud/iat/exp missing or of the
	// wrong type, exp before iat.
	ReasonBadToken Reason = "bad_token"
	// ReasonNoMatchingKey: the device has no unexpired credential for the
	// token's alg (an ES256 token for a device with only RSA keys, or only
	// expired credentials).
	ReasonNoMatchingKey Reason = "no_matching_key"
	// ReasonBadSignature: the device has keys for the token's alg but none
	// verifies its signature (signed with another key, or altered).
	ReasonBadSignature Reason = "bad_signature"
	// ReasonWrongAudience: aud is not exactly the device's project id.
	ReasonWrongAudience Reason = "wrong_audience"
	// ReasonIssuedInFuture: iat is more than the skew ahead of the clock.
	ReasonIssuedInFuture Reason = "iat_in_future"
	// ReasonLifetimeTooLong: exp − iat is more than 24 h.
	ReasonLifetimeTooLong Reason = "lifetime_too_long"
	// ReasonExpired: exp plus the skew has passed.
	ReasonExpired Reason = "expired"
	// ReasonLookupFailed: the registry could not be read; the device
	// should retry. Err wraps the registry's error.
	ReasonLookupFailed Reason = "lookup_failed"
)

// Error is a refusal.
type Error struct {
	Reason Reason
	Err    error // the details
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %v", e.Reason, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of an *Error in err's chain, or "".
func ReasonOf(err error) Reason {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Reason
	}
	return ""
}

// RefusalReason names why Authenticate refused, for the bridges'
// auth_failures metric: the Reason of err, or "" when it has none.
func (a *Authenticator) RefusalReason(err error) string { return string(ReasonOf(err)) }

var _ mqttbridge.RefusalReasoner = (*Authenticator)(nil)

func refuse(r Reason, format string, args ...any) error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}

// Devices is where devices and their credentials are looked up;
// *registry.Store is one (its LookupDevice is cached for this path).
type Devices interface {
	LookupDevice(ctx context.Context, dp iotcore.DevicePath) (registry.Device, error)
}

// Config tunes the checks; the zero Config is IoT Core's.
type Config struct {
	// Skew is DefaultSkew when zero.
	Skew time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Authenticator verifies device JWTs. It implements mqttbridge.Authenticator.
type Authenticator struct {
	devices Devices
	skew    time.Duration
	now     func() time.Time
	parser  *jwt.Parser
}

var _ mqttbridge.Authenticator = (*Authenticator)(nil)

// New returns an Authenticator that looks devices up in devices.
func New(devices Devices, cfg Config) *Authenticator {
	if cfg.Skew == 0 {
		cfg.Skew = DefaultSkew
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Authenticator{
		devices: devices, skew: cfg.Skew, now: cfg.Now,
		// Claims are checked here, with IoT Core's rules and reasons.
		parser: jwt.NewParser(jwt.WithoutClaimsValidation()),
	}
}

// Authenticate checks that password is a valid JWT of device dev and
// returns the device with its numId and the token's exp as Expiry, after
// which (plus the bridge's grace) the connection is to be closed.
func (a *Authenticator) Authenticate(ctx context.Context, dev iotcore.DevicePath, password []byte) (mqttbridge.Device, error) {
	if len(password) == 0 {
		return mqttbridge.Device{}, refuse(ReasonBadToken, "no password: want a JWT")
	}
	if len(password) > maxTokenBytes {
		return mqttbridge.Device{}, refuse(ReasonBadToken, "password of %d bytes is longer than any device JWT (%d)", len(password), maxTokenBytes)
	}
	claims := jwt.MapClaims{}
	token, parts, err := a.parser.ParseUnverified(string(password), claims)
	if err != nil {
		return mqttbridge.Device{}, refuse(ReasonBadToken, "%w", err)
	}
	alg := token.Method.Alg()
	if alg != jwt.SigningMethodRS256.Alg() && alg != jwt.SigningMethodES256.Alg() {
		return mqttbridge.Device{}, refuse(ReasonBadToken, "alg %q: want RS256 or ES256", clip(alg))
	}

	d, err := a.devices.LookupDevice(ctx, dev)
	switch {
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrInvalidArgument):
		return mqttbridge.Device{}, &Error{Reason: ReasonUnknownDevice, Err: err}
	case err != nil:
		return mqttbridge.Device{}, &Error{Reason: ReasonLookupFailed, Err: err}
	case d.Blocked:
		return mqttbridge.Device{}, refuse(ReasonBlocked, "device %s is blocked", dev)
	case d.Status == registry.StatusInactive:
		return mqttbridge.Device{}, refuse(ReasonInactive, "device %s is INACTIVE", dev)
	case d.Status == registry.StatusQuarantined:
		return mqttbridge.Device{}, refuse(ReasonQuarantined, "device %s is QUARANTINED", dev)
	}

	now := a.now()
	if err := verifySignature(token, parts, d.Credentials, now); err != nil {
		return mqttbridge.Device{}, err
	}
	exp, err := a.checkClaims(claims, dev.Project, now)
	if err != nil {
		return mqttbridge.Device{}, err
	}
	return mqttbridge.Device{Path: dev, NumID: strconv.FormatUint(d.NumID, 10), Expiry: exp}, nil
}

// verifySignature tries each unexpired credential of the token's alg.
func verifySignature(token *jwt.Token, parts []string, creds []registry.Credential, now time.Time) error {
	alg := token.Method.Alg()
	signed := parts[0] + "." + parts[1]
	var candidates, expired, otherAlg int
	for _, c := range creds {
		switch {
		case c.PublicKey.Alg() != alg:
			otherAlg++
			continue
		case !c.ExpirationTime.IsZero() && !now.Before(c.ExpirationTime):
			expired++
			continue
		}
		key, err := c.PublicKey.Parse()
		if err != nil {
			continue // refused at registration; only a damaged row gets here
		}
		candidates++
		if token.Method.Verify(signed, token.Signature, key) == nil {
			return nil
		}
	}
	if candidates == 0 {
		return refuse(ReasonNoMatchingKey, "no usable %s credential: %d credentials, %d for another alg, %d of them expired",
			alg, len(creds), otherAlg, expired)
	}
	return refuse(ReasonBadSignature, "signature verified by none of the device's %d %s credentials", candidates, alg)
}

// checkClaims applies IoT Core's claim rules and returns exp.
func (a *Authenticator) checkClaims(claims jwt.MapClaims, project string, now time.Time) (time.Time, error) {
	// IoT Core wanted aud to be the project id, so a one-element array is
	// refused too.
	aud, ok := claims["aud"].(string)
	switch {
	case claims["aud"] == nil:
		return time.Time{}, refuse(ReasonBadToken, "no aud claim: want the project id %q", project)
	case !ok:
		return time.Time{}, refuse(ReasonWrongAudience, "aud is a %T, want the string %q", claims["aud"], project)
	case aud != project:
		return time.Time{}, refuse(ReasonWrongAudience, "aud %q, want the project id %q", clip(aud), project)
	}
	iat, err := claims.GetIssuedAt()
	if err != nil || iat == nil {
		return time.Time{}, refuse(ReasonBadToken, "iat claim missing or not a number")
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return time.Time{}, refuse(ReasonBadToken, "exp claim missing or not a number")
	}
	switch {
	case exp.Before(iat.Time):
		return time.Time{}, refuse(ReasonBadToken, "exp %v is before iat %v", exp.Time, iat.Time)
	case iat.After(now.Add(a.skew)):
		return time.Time{}, refuse(ReasonIssuedInFuture, "iat %v is more than %v after now (%v)", iat.Time, a.skew, now)
	case exp.Sub(iat.Time) > MaxLifetime:
		return time.Time{}, refuse(ReasonLifetimeTooLong, "exp − iat is %v, at most %v", exp.Sub(iat.Time), MaxLifetime)
	case !now.Before(exp.Add(a.skew)):
		return time.Time{}, refuse(ReasonExpired, "expired at %v (now %v, skew %v)", exp.Time, now, a.skew)
	}
	return exp.Time, nil
}

// clip shortens an attacker-chosen string for an error message.
func clip(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
