package tls

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestInitCAWritesFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new", "ca")
	ca, err := InitCA(dir)
	if err != nil {
		t.Fatal(err)
	}

	st, err := os.Stat(filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if mode := st.Mode().Perm(); mode != 0o600 {
		t.Errorf("ca.key mode %#o, want 0600", mode)
	}
	der, err := os.ReadFile(filepath.Join(dir, "ca.der"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(der, ca.Cert.Raw) {
		t.Error("ca.der differs from the returned certificate")
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("ca.key does not start with a PKCS#8 PRIVATE KEY block")
	}
}

func TestInitCACertificateProfile(t *testing.T) {
	ca, _ := mustInitCA(t)
	c := ca.Cert

	if c.Subject.CommonName != "snigate gateway CA" || len(c.Subject.Organization) != 1 ||
		c.Subject.Organization[0] != "snigate" {
		t.Errorf("subject %q", c.Subject)
	}
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("basic constraints: IsCA %v, MaxPathLen %d, zero %v",
			c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("key usage %b", c.KeyUsage)
	}
	if len(c.SubjectKeyId) == 0 {
		t.Error("no subject key id")
	}
	pub, ok := c.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if d := time.Until(c.NotBefore); d > -59*time.Minute || d < -61*time.Minute {
		t.Errorf("NotBefore %v is not an hour ago", c.NotBefore)
	}
	if got := c.NotBefore.AddDate(10, 0, 0); !got.Equal(c.NotAfter) {
		t.Errorf("NotAfter %v, want %v", c.NotAfter, got)
	}
	// Both extensions must be critical (OIDs from RFC 5280, Section 4.2.1).
	for _, oid := range []asn1.ObjectIdentifier{{2, 5, 29, 19}, {2, 5, 29, 15}} {
		if !extensionCritical(c, oid) {
			t.Errorf("extension %v is not critical", oid)
		}
	}
}

func extensionCritical(c *x509.Certificate, oid asn1.ObjectIdentifier) bool {
	for _, ext := range c.Extensions {
		if ext.Id.Equal(oid) {
			return ext.Critical
		}
	}
	return false
}

func TestInitCARefusesExisting(t *testing.T) {
	for _, name := range []string{"ca.crt", "ca.key", "ca.der"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, name)
			if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
				t.Fatal(err)
			}

			_, err := InitCA(dir)
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Fatalf("InitCA error %v, want one naming %s", err, path)
			}
			if data, _ := os.ReadFile(path); string(data) != "keep me" {
				t.Errorf("%s was overwritten", name)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Errorf("dir holds %d files after refusal, want 1", len(entries))
			}
		})
	}
}

func TestInitCASecondInitRefused(t *testing.T) {
	_, dir := mustInitCA(t)
	if _, err := InitCA(dir); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second InitCA error %v, want already exists", err)
	}
}

func TestLoadCARoundTrip(t *testing.T) {
	ca, dir := mustInitCA(t)
	got, err := LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cert.Equal(ca.Cert) {
		t.Error("loaded certificate differs")
	}
	if !publicKeysEqual(got.Key.Public(), ca.Key.Public()) {
		t.Error("loaded key differs")
	}
}

func TestLoadCAKeyFormats(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey := mustKey(t)
	sec1, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaCA := mustSign(t, caTemplate("rsa ca"), nil, rsaKey.Public(), rsaKey)
	pkcs1 := &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}
	// The OID of P-256, as openssl ecparam writes it before the key.
	params := &pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}
	ecCA := mustSign(t, caTemplate("ec ca"), nil, ecKey.Public(), ecKey)

	tests := []struct {
		name   string
		blocks []*pem.Block
	}{
		{"pkcs1 key then cert", []*pem.Block{pkcs1, certBlock(rsaCA)}},
		{"cert then sec1 key with ec parameters", []*pem.Block{
			certBlock(ecCA), params, {Type: "EC PRIVATE KEY", Bytes: sec1}}},
		{"pkcs8 key then cert", []*pem.Block{pkcs8Block(t, ecKey), certBlock(ecCA)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Key and certificate in one file, as Squid keeps them.
			path := writePEM(t, t.TempDir(), "squid.pem", tt.blocks...)
			ca, err := LoadCA(path, path)
			if err != nil {
				t.Fatal(err)
			}
			if !publicKeysEqual(ca.Cert.PublicKey, ca.Key.Public()) {
				t.Error("key does not match certificate")
			}
			f := mustForger(t, ca, 4)
			if _, err := f.Certificate("signed.test", nil, KeyECDSA); err != nil {
				t.Errorf("forge with loaded CA: %v", err)
			}
		})
	}
}

func TestLoadCAErrors(t *testing.T) {
	dir := t.TempDir()
	key := mustKey(t)
	keyFile := writePEM(t, dir, "good.key", pkcs8Block(t, key))
	withCert := func(name string, mod func(*x509.Certificate)) string {
		tmpl := caTemplate(name)
		mod(tmpl)
		return writePEM(t, dir, name+".crt", certBlock(mustSign(t, tmpl, nil, key.Public(), key)))
	}
	good := withCert("good", func(*x509.Certificate) {})
	otherKey := writePEM(t, dir, "other.key", pkcs8Block(t, mustKey(t)))
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not pem at all\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name, certFile, keyFile, want string
	}{
		{"not a ca", withCert("leaf", func(c *x509.Certificate) {
			c.IsCA = false
		}), keyFile, "not a CA"},
		{"no certsign", withCert("nosign", func(c *x509.Certificate) {
			c.KeyUsage = x509.KeyUsageDigitalSignature
		}), keyFile, "keyCertSign"},
		{"expired", withCert("expired", func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().AddDate(-2, 0, 0), time.Now().AddDate(-1, 0, 0)
		}), keyFile, "expired at"},
		{"not yet valid", withCert("future", func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(time.Hour), time.Now().AddDate(1, 0, 0)
		}), keyFile, "not valid before"},
		{"mismatched key", good, otherKey, "does not match"},
		{"garbage cert", garbage, keyFile, "no CERTIFICATE PEM block"},
		{"garbage key", good, garbage, "no PRIVATE KEY"},
		{"cert as key", good, good, "no PRIVATE KEY"},
		{"missing cert", filepath.Join(dir, "missing.crt"), keyFile, "no such file"},
		{"encrypted key", good, writePEM(t, dir, "enc.key",
			&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}}), "encrypted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadCA(tt.certFile, tt.keyFile)
			if err == nil {
				t.Fatal("LoadCA succeeded")
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("error %q does not say %q", msg, tt.want)
			}
			if !strings.Contains(msg, tt.certFile) && !strings.Contains(msg, tt.keyFile) {
				t.Errorf("error %q names neither file", msg)
			}
		})
	}
}
