// Package tlscert makes the sandbox's TLS certificates: a private CA and a
// server certificate it signs, as PEM files that devices and tools can trust.
//
// IoT Core devices connect with TLS on 8883 and verify the server against a
// CA file they were given. In the sandbox there is no public CA, so the bridge
// uses a certificate from here and devices (or `mosquitto_pub --cafile`) are
// given CAFile. The CA signs the server certificate rather than the server
// certificate signing itself, because OpenSSL-based clients refuse a
// self-signed leaf that is not marked as a CA, and a certificate that is both
// a CA and a server certificate trips other verifiers.
package tlscert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// File names Generate writes in its directory.
const (
	CAFileName   = "ca.pem"         // the CA certificate devices trust
	CertFileName = "server.pem"     // the server certificate, then the CA's
	KeyFileName  = "server-key.pem" // the server's private key (PKCS #8), mode 0600
)

// DefaultHosts are the names a sandbox certificate is valid for when none
// are given: what a device on the same machine dials.
var DefaultHosts = []string{"localhost", "127.0.0.1", "::1"}

// Validity is how long a generated certificate is valid.
const Validity = 365 * 24 * time.Hour

// renewBefore: Ensure makes new files when the old ones expire sooner than
// this, so that a long-running sandbox does not hit the expiry mid-run.
const renewBefore = 7 * 24 * time.Hour

// Files are the paths of one generated set.
type Files struct {
	CA   string // give this to devices: mosquitto_pub --cafile, paho's RootCAs
	Cert string // the bridge's certificate chain (mqttbridge.Config.TLSCertFile)
	Key  string // the bridge's private key (mqttbridge.Config.TLSKeyFile)
}

// FilesIn returns the paths Generate writes in dir.
func FilesIn(dir string) Files {
	return Files{
		CA:   filepath.Join(dir, CAFileName),
		Cert: filepath.Join(dir, CertFileName),
		Key:  filepath.Join(dir, KeyFileName),
	}
}

// Generate makes a new CA and a server certificate for hosts (DNS names or
// IP addresses; DefaultHosts if none), both ECDSA P-256, and writes them to
// dir, which it creates if needed. Existing files are replaced.
func Generate(dir string, hosts ...string) (Files, error) {
	if len(hosts) == 0 {
		hosts = DefaultHosts
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, fmt.Errorf("tlscert: CA key: %w", err)
	}
	ca := &x509.Certificate{
		Subject:               pkix.Name{Organization: []string{"iotpipe sandbox"}, CommonName: "iotpipe sandbox CA"},
		NotBefore:             now.Add(-time.Hour), // device clocks run behind
		NotAfter:              now.Add(Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if ca.SerialNumber, err = serial(); err != nil {
		return Files{}, err
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return Files{}, fmt.Errorf("tlscert: sign CA certificate: %w", err)
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return Files{}, fmt.Errorf("tlscert: read back CA certificate: %w", err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, fmt.Errorf("tlscert: server key: %w", err)
	}
	leaf := &x509.Certificate{
		Subject:     pkix.Name{Organization: []string{"iotpipe sandbox"}, CommonName: hosts[0]},
		NotBefore:   ca.NotBefore,
		NotAfter:    ca.NotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if leaf.SerialNumber, err = serial(); err != nil {
		return Files{}, err
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			leaf.IPAddresses = append(leaf.IPAddresses, ip)
		} else {
			leaf.DNSNames = append(leaf.DNSNames, h)
		}
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return Files{}, fmt.Errorf("tlscert: sign server certificate for %v: %w", hosts, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Files{}, fmt.Errorf("tlscert: encode server key: %w", err)
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Files{}, fmt.Errorf("tlscert: %w", err)
	}
	f := FilesIn(dir)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	for _, w := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		// The key first: a reader that finds a new certificate must not
		// pair it with the old key.
		{f.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{f.Cert, append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), caPEM...), 0o644},
		{f.CA, caPEM, 0o644},
	} {
		if err := writeFile(w.path, w.data, w.mode); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

// Ensure returns the set in dir if it is there, loads, is valid for every
// one of hosts (DefaultHosts if none) and does not expire within a week;
// otherwise it generates a new one. Reusing the set keeps the CA that
// devices were given valid across sandbox restarts.
func Ensure(dir string, hosts ...string) (Files, error) {
	if len(hosts) == 0 {
		hosts = DefaultHosts
	}
	f := FilesIn(dir)
	if err := check(f, hosts, time.Now()); err == nil {
		return f, nil
	}
	return Generate(dir, hosts...)
}

// check reports why the set f cannot serve hosts at now.
func check(f Files, hosts []string, now time.Time) error {
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return fmt.Errorf("tlscert: %w", err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return fmt.Errorf("tlscert: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("tlscert: %s holds no certificate", f.CA)
	}
	leaf := pair.Leaf
	for _, h := range hosts {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: roots, CurrentTime: now.Add(renewBefore)}); err != nil {
			return fmt.Errorf("tlscert: %s for %s: %w", f.Cert, h, err)
		}
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		return errors.New("tlscert: not a server certificate")
	}
	return nil
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("tlscert: serial number: %w", err)
	}
	return n, nil
}

// writeFile replaces path atomically, so that a bridge or device reading it
// meanwhile sees the old file or the new one, never half of one.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("tlscert: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing to remove
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("tlscert: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("tlscert: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("tlscert: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("tlscert: %w", err)
	}
	return nil
}
