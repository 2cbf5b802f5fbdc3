package registrytest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/iotpipe/iotpipe/ingress/registry"
)

// Key is a generated device key pair.
type Key struct {
	// Private signs the device's JWTs: an *rsa.PrivateKey or *ecdsa.PrivateKey.
	Private crypto.Signer
	// PublicKey registers it, in the format NewKey was asked for.
	PublicKey registry.PublicKey
}

// NewKey generates a key pair whose public half is encoded in format: a
// 2048-bit RSA key for the RSA formats, a P-256 key for the ES256 ones, as
// a PKIX public key or a self-signed X.509 certificate (the two ways IoT
// Core's documentation made them with openssl).
func NewKey(t testing.TB, format registry.KeyFormat) Key {
	t.Helper()
	var priv crypto.Signer
	var err error
	switch format {
	case registry.RSAPEM, registry.RSAX509PEM:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case registry.ES256PEM, registry.ES256X509PEM:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		t.Fatalf("registrytest: NewKey: unknown format %q", format)
	}
	if err != nil {
		t.Fatalf("registrytest: generate %s key: %v", format, err)
	}
	return Key{Private: priv, PublicKey: Encode(t, priv.Public(), priv, format)}
}

// Encode encodes pub in format. For the X.509 formats, signer self-signs
// the certificate.
func Encode(t testing.TB, pub crypto.PublicKey, signer crypto.Signer, format registry.KeyFormat) registry.PublicKey {
	t.Helper()
	var block *pem.Block
	switch format {
	case registry.RSAX509PEM, registry.ES256X509PEM:
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1),
			Subject:      pkix.Name{CommonName: "unused"},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, signer)
		if err != nil {
			t.Fatalf("registrytest: self-signed certificate: %v", err)
		}
		block = &pem.Block{Type: "CERTIFICATE", Bytes: der}
	default:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatalf("registrytest: marshal public key: %v", err)
		}
		block = &pem.Block{Type: "PUBLIC KEY", Bytes: der}
	}
	return registry.PublicKey{Format: format, Key: string(pem.EncodeToMemory(block))}
}
