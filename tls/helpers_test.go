package tls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

var testSerial atomic.Int64

// mustSign signs tmpl with signer under parent (tmpl itself when nil).
func mustSign(
	t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer,
) *x509.Certificate {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(testSerial.Add(1))
	if parent == nil {
		parent = tmpl
	}
	return mustCreate(t, tmpl, parent, pub, signer)
}

// mustCreate is x509.CreateCertificate for tmpl as it is, parsed.
func mustCreate(
	t testing.TB, tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer,
) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// caTemplate is a valid CA template; tests change fields to break it.
func caTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
}

// mustRoot makes a self-signed CA, like the lab's "public" root.
func mustRoot(t testing.TB, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := mustKey(t)
	return mustSign(t, caTemplate(cn), nil, key.Public(), key), key
}

// mustServerCert issues a server certificate from root for the given names
// (IP literals become IP SANs).
func mustServerCert(
	t testing.TB, root *x509.Certificate, rootKey crypto.Signer, names ...string,
) tls.Certificate {
	t.Helper()
	key := mustKey(t)
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: names[0]},
		NotBefore:   time.Now().Add(-time.Hour),
		NotAfter:    time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	leaf := mustSign(t, tmpl, root, key.Public(), rootKey)
	return tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
}

// mustInitCA creates a CA in a fresh temporary directory.
func mustInitCA(t testing.TB) (*CA, string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := InitCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ca, dir
}

func mustForger(t testing.TB, ca *CA, max int) *Forger {
	t.Helper()
	f, err := NewForger(ca, max)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// writePEM writes blocks to a new file in dir and returns its path.
func writePEM(t testing.TB, dir, name string, blocks ...*pem.Block) string {
	t.Helper()
	var data []byte
	for _, b := range blocks {
		data = append(data, pem.EncodeToMemory(b)...)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func certBlock(c *x509.Certificate) *pem.Block {
	return &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}
}

func pkcs8Block(t testing.TB, key crypto.Signer) *pem.Block {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &pem.Block{Type: "PRIVATE KEY", Bytes: der}
}

func poolOf(certs ...*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}
