package tlscert_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"testing"

	"github.com/iotpipe/iotpipe/ingress/tlscert"
)

// handshake serves one TLS 1.2+ connection with f's certificate and dials it
// as a device that trusts f.CA and expects serverName.
func handshake(t *testing.T, f tlscert.Files, serverName string) error {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(io.Discard, c) // drives the handshake
	}()
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s: no certificate", f.CA)
	}
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: serverName})
	if err != nil {
		return err
	}
	return c.Close()
}

func TestGenerate(t *testing.T) {
	f, err := tlscert.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		serverName string
		ok         bool
	}{
		{"localhost", true},
		{"127.0.0.1", true},
		{"::1", true},
		{"example.com", false},
		{"10.0.0.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.serverName, func(t *testing.T) {
			if err := handshake(t, f, tt.serverName); (err == nil) != tt.ok {
				t.Errorf("handshake as %s: %v, want ok=%v", tt.serverName, err, tt.ok)
			}
		})
	}

	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := pair.Leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("server key is %T, want ECDSA P-256", pair.Leaf.PublicKey)
	}
	if len(pair.Certificate) != 2 {
		t.Errorf("certificate file holds %d certificates, want the server's and the CA's", len(pair.Certificate))
	}
	st, err := os.Stat(f.Key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
}

func TestGenerateOtherHosts(t *testing.T) {
	f, err := tlscert.Generate(t.TempDir(), "bridge.internal", "10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	for name, ok := range map[string]bool{"bridge.internal": true, "10.1.2.3": true, "localhost": false} {
		if err := handshake(t, f, name); (err == nil) != ok {
			t.Errorf("handshake as %s: %v, want ok=%v", name, err, ok)
		}
	}
}

// Ensure keeps a CA that devices were given, and replaces one that cannot
// serve the hosts asked for.
func TestEnsure(t *testing.T) {
	dir := t.TempDir()
	first, err := tlscert.Ensure(dir)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name  string
		prep  func(t *testing.T)
		hosts []string
		same  bool
	}{
		{name: "valid set is reused", same: true},
		{name: "subset of hosts is reused", hosts: []string{"localhost"}, same: true},
		{name: "other host regenerates", hosts: []string{"bridge.internal"}},
		{name: "damaged key regenerates", prep: func(t *testing.T) {
			if err := os.WriteFile(first.Key, []byte("not a key"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := os.ReadFile(first.CA)
			if tt.prep != nil {
				tt.prep(t)
			}
			f, err := tlscert.Ensure(dir, tt.hosts...)
			if err != nil {
				t.Fatal(err)
			}
			after, _ := os.ReadFile(f.CA)
			if same := bytes.Equal(before, after); same != tt.same {
				t.Errorf("CA kept = %v, want %v", same, tt.same)
			}
			name := "localhost"
			if len(tt.hosts) > 0 {
				name = tt.hosts[0]
			}
			if err := handshake(t, f, name); err != nil {
				t.Errorf("handshake as %s with the ensured set: %v", name, err)
			}
		})
	}
}

func TestHandshakeNeedsTheCA(t *testing.T) {
	f, err := tlscert.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other, err := tlscert.Generate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f.CA = other.CA
	if err := handshake(t, f, "localhost"); err == nil {
		t.Error("a device trusting another sandbox's CA completed the handshake")
	}
}
