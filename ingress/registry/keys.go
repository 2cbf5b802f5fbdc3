package registry

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
)

// KeyFormat is how a credential's key is encoded, and so which JWT alg it verifies.
type KeyFormat string

// Key formats IoT Core accepted.
const (
	// RSAPEM is an RSA public key in a PEM "PUBLIC KEY" block (PKIX); verifies RS256.
	RSAPEM KeyFormat = "RSA_PEM"
	// RSAX509PEM is an X.509 certificate with an RSA key in a PEM "CERTIFICATE" block; verifies RS256.
	RSAX509PEM KeyFormat = "RSA_X509_PEM"
	// ES256PEM is a P-256 public key in a PEM "PUBLIC KEY" block (PKIX); verifies ES256.
	ES256PEM KeyFormat = "ES256_PEM"
	// ES256X509PEM is an X.509 certificate with a P-256 key; verifies ES256.
	ES256X509PEM KeyFormat = "ES256_X509_PEM"
)

// minRSABits is the smallest RSA key accepted, as IoT Core required.
const minRSABits = 2048

// PublicKey is a credential's key as the device's owner registered it.
type PublicKey struct {
	Format KeyFormat `json:"format"`
	Key    string    `json:"key"`
}

// Alg returns the JWT alg the key verifies ("RS256" or "ES256"), or "" for an unknown format.
func (k PublicKey) Alg() string {
	switch k.Format {
	case RSAPEM, RSAX509PEM:
		return "RS256"
	case ES256PEM, ES256X509PEM:
		return "ES256"
	}
	return ""
}

// Parse decodes the key: an *rsa.PublicKey of at least 2048 bits for the RSA
// formats, an *ecdsa.PublicKey on P-256 for the ES256 formats. The PEM must
// hold exactly one block of the format's type. A certificate's validity
// period is not checked: IoT Core ignored it too, and openssl's default
// self-signed device certificate lasts 30 days.
func (k PublicKey) Parse() (crypto.PublicKey, error) {
	wantType := "PUBLIC KEY"
	switch k.Format {
	case RSAPEM, ES256PEM:
	case RSAX509PEM, ES256X509PEM:
		wantType = "CERTIFICATE"
	default:
		return nil, fmt.Errorf("key format %q: want RSA_PEM, RSA_X509_PEM, ES256_PEM or ES256_X509_PEM", clip(string(k.Format)))
	}
	block, rest := pem.Decode([]byte(k.Key))
	if block == nil {
		return nil, fmt.Errorf("%s key: no PEM block", k.Format)
	}
	if block.Type != wantType {
		return nil, fmt.Errorf("%s key: PEM block %q, want %q", k.Format, clip(block.Type), wantType)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("%s key: data after the PEM block", k.Format)
	}

	var pub any
	if wantType == "CERTIFICATE" {
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s key: %w", k.Format, err)
		}
		pub = cert.PublicKey
	} else {
		var err error
		if pub, err = x509.ParsePKIXPublicKey(block.Bytes); err != nil {
			return nil, fmt.Errorf("%s key: %w", k.Format, err)
		}
	}

	switch k.Alg() {
	case "RS256":
		rk, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%s key: holds a %T, want an RSA key", k.Format, pub)
		}
		if rk.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("%s key: %d-bit RSA key, want at least %d bits", k.Format, rk.N.BitLen(), minRSABits)
		}
		return rk, nil
	default: // ES256
		ek, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%s key: holds a %T, want an ECDSA P-256 key", k.Format, pub)
		}
		if ek.Curve != elliptic.P256() {
			return nil, fmt.Errorf("%s key: curve %s, want P-256", k.Format, ek.Curve.Params().Name)
		}
		return ek, nil
	}
}
