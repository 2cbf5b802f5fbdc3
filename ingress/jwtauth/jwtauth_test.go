package jwtauth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/iotpipe/iotpipe/ingress/jwtauth"
	"github.com/iotpipe/iotpipe/ingress/registry"
	"github.com/iotpipe/iotpipe/ingress/registry/registrytest"
)

const project = "proj"

var (
	reg = registry.Path{Project: project, Location: "us-central1", Registry: "reg"}
	// now is the authenticator's clock in the table tests.
	now = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
)

// keys are the test's device keys, one set per test binary (RSA keys take a
// while to generate).
type keys struct {
	es, es2, esCert, rsa, rsaCert, stranger registrytest.Key
}

func newKeys(t testing.TB) keys {
	return keys{
		es:       registrytest.NewKey(t, registry.ES256PEM),
		es2:      registrytest.NewKey(t, registry.ES256PEM),
		esCert:   registrytest.NewKey(t, registry.ES256X509PEM),
		rsa:      registrytest.NewKey(t, registry.RSAPEM),
		rsaCert:  registrytest.NewKey(t, registry.RSAX509PEM),
		stranger: registrytest.NewKey(t, registry.ES256PEM),
	}
}

func cred(k registrytest.Key) registry.Credential { return registry.Credential{PublicKey: k.PublicKey} }

// setup starts a registry holding the test devices and returns it.
func setup(t testing.TB, k keys) *registry.Store {
	s := registrytest.Start(t, registry.Config{CacheTTL: time.Hour, Now: func() time.Time { return now }})
	ctx := context.Background()
	if _, err := s.CreateRegistry(ctx, reg.Project, reg.Location, registry.Registry{ID: reg.Registry}); err != nil {
		t.Fatal(err)
	}
	devices := []registry.Device{
		{ID: "es-dev", Credentials: []registry.Credential{cred(k.es)}},
		{ID: "rsa-dev", Credentials: []registry.Credential{cred(k.rsa)}},
		{ID: "cert-dev", Credentials: []registry.Credential{cred(k.rsaCert), cred(k.esCert)}},
		{ID: "blocked-dev", Blocked: true, Credentials: []registry.Credential{cred(k.es)}},
		{ID: "inactive-dev", Status: registry.StatusInactive, Credentials: []registry.Credential{cred(k.es)}},
		{ID: "quarantined-dev", Status: registry.StatusQuarantined, Credentials: []registry.Credential{cred(k.es)}},
		{ID: "expired-cred", Credentials: []registry.Credential{{PublicKey: k.es.PublicKey, ExpirationTime: now.Add(-time.Second)}}},
		// The first key expired; the second one still works.
		{ID: "rotated", Credentials: []registry.Credential{
			{PublicKey: k.es.PublicKey, ExpirationTime: now.Add(-time.Hour)},
			{PublicKey: k.es2.PublicKey, ExpirationTime: now.Add(time.Hour)},
		}},
		{ID: "no-keys"},
	}
	for _, d := range devices {
		if _, err := s.CreateDevice(ctx, reg, d); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// claims are the usual claims of a token issued at iat for life.
func claims(iat time.Time, life time.Duration) jwt.MapClaims {
	return jwt.MapClaims{"aud": project, "iat": iat.Unix(), "exp": iat.Add(life).Unix()}
}

// sign makes a device JWT signed with k.
func sign(t testing.TB, k registrytest.Key, c jwt.MapClaims) string {
	t.Helper()
	var m jwt.SigningMethod
	switch k.Private.(type) {
	case *rsa.PrivateKey:
		m = jwt.SigningMethodRS256
	case *ecdsa.PrivateKey:
		m = jwt.SigningMethodES256
	}
	s, err := jwt.NewWithClaims(m, c).SignedString(k.Private)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func with(c jwt.MapClaims, k string, v any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for kk, vv := range c {
		out[kk] = vv
	}
	if v == nil {
		delete(out, k)
	} else {
		out[k] = v
	}
	return out
}

// unsigned builds a token with any header and claims and a junk signature.
func unsigned(header, payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(header)) + "." + enc([]byte(payload)) + "." + enc([]byte("signature"))
}

func TestAuthenticate(t *testing.T) {
	k := newKeys(t)
	s := setup(t, k)
	a := jwtauth.New(s, jwtauth.Config{Now: func() time.Time { return now }})
	good := claims(now, time.Hour)
	hs256, err := jwt.NewWithClaims(jwt.SigningMethodHS256, good).SignedString([]byte(k.es.PublicKey.Key))
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(sign(t, k.es, good), ".")
	altered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"aud":"proj","iat":1741064767,"exp":1741150000}`)) + "." + parts[2]

	tests := []struct {
		name   string
		device string
		token  string
		want   jwtauth.Reason // "" means accepted
	}{
		{"ES256", "es-dev", sign(t, k.es, good), ""},
		{"RS256", "rsa-dev", sign(t, k.rsa, good), ""},
		{"RS256 with an X.509 key", "cert-dev", sign(t, k.rsaCert, good), ""},
		{"ES256 with an X.509 key", "cert-dev", sign(t, k.esCert, good), ""},
		{"second credential", "rotated", sign(t, k.es2, good), ""},
		{"iat within the skew ahead", "es-dev", sign(t, k.es, claims(now.Add(9*time.Minute), time.Hour)), ""},
		{"exp within the skew behind", "es-dev", sign(t, k.es, claims(now.Add(-time.Hour), 55*time.Minute)), ""},
		{"lifetime of exactly 24 h", "es-dev", sign(t, k.es, claims(now, 24*time.Hour)), ""},

		{"wrong audience", "es-dev", sign(t, k.es, with(good, "aud", "other-proj")), jwtauth.ReasonWrongAudience},
		{"audience differing in case", "es-dev", sign(t, k.es, with(good, "aud", "PROJ")), jwtauth.ReasonWrongAudience},
		{"audience as an array", "es-dev", sign(t, k.es, with(good, "aud", []string{project})), jwtauth.ReasonWrongAudience},
		{"no audience", "es-dev", sign(t, k.es, with(good, "aud", nil)), jwtauth.ReasonBadToken},
		{"expired", "es-dev", sign(t, k.es, claims(now.Add(-2*time.Hour), 109*time.Minute)), jwtauth.ReasonExpired},
		{"iat in the future", "es-dev", sign(t, k.es, claims(now.Add(11*time.Minute), time.Hour)), jwtauth.ReasonIssuedInFuture},
		{"lifetime over 24 h", "es-dev", sign(t, k.es, claims(now, 24*time.Hour+time.Second)), jwtauth.ReasonLifetimeTooLong},
		{"no exp", "es-dev", sign(t, k.es, with(good, "exp", nil)), jwtauth.ReasonBadToken},
		{"no iat", "es-dev", sign(t, k.es, with(good, "iat", nil)), jwtauth.ReasonBadToken},
		{"exp as a string", "es-dev", sign(t, k.es, with(good, "exp", "tomorrow")), jwtauth.ReasonBadToken},
		{"exp before iat", "es-dev", sign(t, k.es, with(good, "exp", now.Add(-time.Minute).Unix())), jwtauth.ReasonBadToken},

		{"wrong key", "es-dev", sign(t, k.stranger, good), jwtauth.ReasonBadSignature},
		{"altered claims", "es-dev", altered, jwtauth.ReasonBadSignature},
		{"alg mismatch: RS256 token, ES256 key", "es-dev", sign(t, k.rsa, good), jwtauth.ReasonNoMatchingKey},
		{"alg mismatch: ES256 token, RSA key", "rsa-dev", sign(t, k.es, good), jwtauth.ReasonNoMatchingKey},
		{"expired credential", "expired-cred", sign(t, k.es, good), jwtauth.ReasonNoMatchingKey},
		{"token of the expired credential", "rotated", sign(t, k.es, good), jwtauth.ReasonBadSignature},
		{"device without keys", "no-keys", sign(t, k.es, good), jwtauth.ReasonNoMatchingKey},

		{"blocked", "blocked-dev", sign(t, k.es, good), jwtauth.ReasonBlocked},
		{"inactive", "inactive-dev", sign(t, k.es, good), jwtauth.ReasonInactive},
		{"quarantined", "quarantined-dev", sign(t, k.es, good), jwtauth.ReasonQuarantined},
		{"unknown device", "nobody", sign(t, k.es, good), jwtauth.ReasonUnknownDevice},

		{"empty password", "es-dev", "", jwtauth.ReasonBadToken},
		{"not a JWT", "es-dev", "not-a-jwt-yet", jwtauth.ReasonBadToken},
		{"alg none", "es-dev", unsigned(`{"alg":"none","typ":"JWT"}`, `{"aud":"proj","iat":1741064767,"exp":1741068367}`), jwtauth.ReasonBadToken},
		{"alg HS256 keyed with the public key", "es-dev", hs256, jwtauth.ReasonBadToken},
		{"alg PS256", "rsa-dev", unsigned(`{"alg":"PS256"}`, `{"aud":"proj"}`), jwtauth.ReasonBadToken},
		{"oversized", "es-dev", strings.Repeat("a", 9000), jwtauth.ReasonBadToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dp := reg.Device(tt.device)
			dev, err := a.Authenticate(t.Context(), dp, []byte(tt.token))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Authenticate: %v, want accepted", err)
				}
				want, _ := s.GetDevice(t.Context(), dp)
				claimsExp := int64(0)
				if tok, _, err := jwt.NewParser().ParseUnverified(tt.token, jwt.MapClaims{}); err == nil {
					e, _ := tok.Claims.GetExpirationTime()
					claimsExp = e.Unix()
				}
				if dev.Path != dp || dev.NumID != strconv.FormatUint(want.NumID, 10) || dev.Expiry.Unix() != claimsExp {
					t.Errorf("device = %+v, want path %s, numId %d, expiry at the token's exp %d", dev, dp, want.NumID, claimsExp)
				}
				return
			}
			if err == nil {
				t.Fatalf("Authenticate accepted the token, want %s", tt.want)
			}
			if got := jwtauth.ReasonOf(err); got != tt.want {
				t.Errorf("refused with %s (%v), want %s", got, err, tt.want)
			}
		})
	}
}

// A registry that cannot be read is not an unknown device: the device
// should retry, and an operator should look.
func TestLookupFailure(t *testing.T) {
	k := newKeys(t)
	s := setup(t, k)
	s.Close()
	a := jwtauth.New(s, jwtauth.Config{Now: func() time.Time { return now }})
	_, err := a.Authenticate(t.Context(), reg.Device("es-dev"), []byte(sign(t, k.es, claims(now, time.Hour))))
	if jwtauth.ReasonOf(err) != jwtauth.ReasonLookupFailed {
		t.Errorf("with the registry closed: %v, want %s", err, jwtauth.ReasonLookupFailed)
	}
}

// A device blocked through the Store is refused at its next connection,
// cache or not.
func TestBlockTakesEffect(t *testing.T) {
	k := newKeys(t)
	s := setup(t, k)
	a := jwtauth.New(s, jwtauth.Config{Now: func() time.Time { return now }})
	dp := reg.Device("es-dev")
	token := []byte(sign(t, k.es, claims(now, time.Hour)))
	if _, err := a.Authenticate(t.Context(), dp, token); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PatchDevice(t.Context(), dp, registry.Device{Blocked: true}, []string{"blocked"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(t.Context(), dp, token); jwtauth.ReasonOf(err) != jwtauth.ReasonBlocked {
		t.Errorf("after blocking: %v, want %s", err, jwtauth.ReasonBlocked)
	}
}

func FuzzAuthenticate(f *testing.F) {
	k := newKeys(f)
	s := setup(f, k)
	a := jwtauth.New(s, jwtauth.Config{Now: func() time.Time { return now }})
	good := claims(now, time.Hour)
	// Seeds: tokens that are nearly right, so mutations explore the parser
	// and every check. None of them is valid for es-dev.
	seeds := []string{
		sign(f, k.stranger, good),
		sign(f, k.es, claims(now.Add(-3*time.Hour), time.Hour)), // the right key, expired
		sign(f, k.es, with(good, "aud", "other")),
		sign(f, k.es, with(good, "aud", []string{project})),
		sign(f, k.es, claims(now, 25*time.Hour)),
		sign(f, k.rsa, good),
		unsigned(`{"alg":"none"}`, `{"aud":"proj","iat":1741064767,"exp":1741068367}`),
		unsigned(`{"alg":"ES256"}`, `{"aud":"proj","iat":1e300,"exp":-1e300}`),
		unsigned(`{"alg":"RS256","kid":"x"}`, `{"aud":"proj","iat":1741064767.5,"exp":"1741068367"}`),
		"", ".", "..", "a.b.c", "eyJ.eyJ.", strings.Repeat("A", 10000),
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	dp := reg.Device("es-dev")
	f.Fuzz(func(t *testing.T, password []byte) {
		dev, err := a.Authenticate(context.Background(), dp, password)
		if err == nil {
			t.Fatalf("accepted %q as %+v", password, dev)
		}
		if jwtauth.ReasonOf(err) == "" {
			t.Fatalf("refusal without a reason: %v", err)
		}
	})
}

// The bridges count refusals by the reason RefusalReason gives.
func TestRefusalReason(t *testing.T) {
	a := jwtauth.New(nil, jwtauth.Config{})
	if got := a.RefusalReason(fmt.Errorf("connect: %w", &jwtauth.Error{Reason: jwtauth.ReasonExpired, Err: errors.New("exp passed")})); got != "expired" {
		t.Errorf("RefusalReason(wrapped expired) = %q, want expired", got)
	}
	if got := a.RefusalReason(errors.New("other")); got != "" {
		t.Errorf("RefusalReason(other) = %q, want empty", got)
	}
}
