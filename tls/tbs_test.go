package tls

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

// TestCreateLeafMatchesX509 checks that createLeaf signs the very bytes
// x509.CreateCertificate would for the same template, and that the result
// verifies.
func TestCreateLeafMatchesX509(t *testing.T) {
	cas := map[string]*CA{
		"p256":    mustCAWithKey(t, mustECDSAKey(t, elliptic.P256())),
		"p224":    mustCAWithKey(t, mustECDSAKey(t, elliptic.P224())),
		"p384":    mustCAWithKey(t, mustECDSAKey(t, elliptic.P384())),
		"p521":    mustCAWithKey(t, mustECDSAKey(t, elliptic.P521())),
		"rsa":     mustCAWithKey(t, mustRSAKey(t)),
		"ed25519": mustCAWithKey(t, mustEd25519Key(t)),
	}
	noKeyID := *cas["p256"].Cert
	noKeyID.SubjectKeyId = nil
	cas["p256 without key id"] = &CA{Cert: &noKeyID, Key: cas["p256"].Key}

	// setNames reads only these fields of the upstream certificate.
	upstream := &x509.Certificate{
		Subject:  pkix.Name{CommonName: "Up Test Frontend"},
		DNSNames: []string{"up.test", "*.up.test", "other.test"},
		// net.ParseIP returns IPv4 in 16 bytes; the SAN must hold 4.
		IPAddresses: []net.IP{net.ParseIP("198.19.1.2"), net.ParseIP("2001:db8::5")},
	}
	noCN := *upstream
	noCN.Subject = pkix.Name{}
	wildcardCN := *upstream
	wildcardCN.Subject.CommonName = "*.up.test" // '*' is not in PrintableString
	unicodeCN := *upstream
	unicodeCN.Subject.CommonName = "Bücher Frontend"

	now := time.Now()
	day := func(y int, m time.Month, d, h int) time.Time {
		return time.Date(y, m, d, h, 0, 0, 500, time.UTC)
	}
	tests := []struct {
		name     string
		ca       string
		kt       KeyType
		host     string
		upstream *x509.Certificate
		// emptySubject clears the common name, which forging never does.
		emptySubject bool
		// notBefore and notAfter default to an hour ago and 30 days ahead.
		notBefore, notAfter time.Time
	}{
		{name: "dns name", ca: "p256", host: "www.example.test"},
		{name: "ipv4", ca: "p256", host: "198.18.1.2"},
		{name: "ipv6", ca: "p256", host: "2001:db8::1"},
		{name: "upstream sans", ca: "p256", host: "www.up.test", upstream: upstream},
		{name: "upstream without cn", ca: "p256", host: "www.up.test", upstream: &noCN},
		{name: "wildcard cn", ca: "p256", host: "www.up.test", upstream: &wildcardCN},
		{name: "non-ascii cn", ca: "p256", host: "www.up.test", upstream: &unicodeCN},
		{
			name: "empty subject", ca: "p256", host: "www.up.test", upstream: upstream,
			emptySubject: true,
		},
		{name: "rsa leaf", ca: "p256", kt: KeyRSA, host: "rsa.example.test"},
		{name: "p224 ca", ca: "p224", host: "www.example.test"},
		{name: "p384 ca", ca: "p384", host: "www.example.test"},
		{name: "p521 ca", ca: "p521", host: "www.example.test"},
		{name: "rsa ca", ca: "rsa", host: "www.up.test", upstream: upstream},
		{name: "rsa ca rsa leaf", ca: "rsa", kt: KeyRSA, host: "198.18.1.2"},
		{name: "ed25519 ca", ca: "ed25519", host: "www.up.test", upstream: upstream},
		{name: "ca without key id", ca: "p256 without key id", host: "www.example.test"},
		{
			name: "validity crossing 2050", ca: "p256", host: "www.example.test",
			notBefore: day(2049, 12, 31, 23), notAfter: day(2050, 1, 1, 1),
		},
		{
			name: "validity after 2050", ca: "rsa", host: "www.example.test",
			notBefore: day(2051, 3, 1, 0), notAfter: day(2051, 4, 1, 0),
		},
	}
	keys := leafKeys()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := cas[tt.ca]
			leafKey, err := keys[tt.kt]()
			if err != nil {
				t.Fatal(err)
			}
			name, ip, err := canonicalName(tt.host)
			if err != nil {
				t.Fatal(err)
			}
			tmpl := leafTemplate(ca.Cert, forgeKey{name: name, keyType: tt.kt}, ip, tt.upstream)
			// The top bit set makes the serial's INTEGER need a leading zero.
			tmpl.SerialNumber = new(big.Int).SetBytes(bytes.Repeat([]byte{0xa5}, 16))
			tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(leafLifetime)
			if !tt.notBefore.IsZero() {
				tmpl.NotBefore, tmpl.NotAfter = tt.notBefore, tt.notAfter
			}
			if tt.emptySubject {
				tmpl.Subject = pkix.Name{}
			}

			want := mustCreate(t, tmpl, ca.Cert, leafKey.signer.Public(), ca.Key)
			got, err := createLeaf(tmpl, ca, leafKey)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.RawTBSCertificate, want.RawTBSCertificate) {
				t.Fatalf("TBSCertificate differs from x509.CreateCertificate's\n got %x\nwant %x",
					got.RawTBSCertificate, want.RawTBSCertificate)
			}
			// RSA PKCS #1 v1.5 and Ed25519 signatures are deterministic, so
			// the whole certificate must match; ECDSA's are random.
			if _, ok := ca.Key.(*ecdsa.PrivateKey); !ok && !bytes.Equal(got.Raw, want.Raw) {
				t.Errorf("certificate differs from x509.CreateCertificate's\n got %x\nwant %x",
					got.Raw, want.Raw)
			}
			if got.SignatureAlgorithm != want.SignatureAlgorithm {
				t.Errorf("signature algorithm %v, want %v",
					got.SignatureAlgorithm, want.SignatureAlgorithm)
			}

			if err := got.CheckSignatureFrom(ca.Cert); err != nil {
				t.Errorf("signature does not verify: %v", err)
			}
			opts := x509.VerifyOptions{
				Roots:       poolOf(ca.Cert),
				DNSName:     name,
				CurrentTime: tmpl.NotBefore.Add(time.Minute),
				KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}
			if _, err := got.Verify(opts); err != nil {
				t.Errorf("verify for %s: %v", name, err)
			}
		})
	}
}

func TestNewForgerCAKeys(t *testing.T) {
	tests := []struct {
		name    string
		key     crypto.Signer
		wantErr string // empty when the key is accepted
	}{
		{name: "ecdsa", key: mustECDSAKey(t, elliptic.P384())},
		{name: "rsa", key: mustRSAKey(t)},
		{name: "ed25519", key: mustEd25519Key(t)},
		{
			name: "external signer", key: externalSigner{mustKey(t)},
			wantErr: "ca key type tls.externalSigner is not supported",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := mustCAWithKey(t, tt.key)
			f, err := NewForger(ca, 8)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewForger error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cert, err := f.Certificate("www.example.test", nil, KeyECDSA)
			if err != nil {
				t.Fatal(err)
			}
			opts := x509.VerifyOptions{Roots: poolOf(ca.Cert), DNSName: "www.example.test"}
			if _, err := cert.Leaf.Verify(opts); err != nil {
				t.Errorf("forged leaf does not verify: %v", err)
			}
		})
	}
}

// externalSigner stands for a CA key held outside the process, such as a
// hardware token: it hides the key's type.
type externalSigner struct{ crypto.Signer }

// mustCAWithKey makes a self-signed CA for key, valid until 2060 so that
// leaves dated after 2050 chain to it.
func mustCAWithKey(t testing.TB, key crypto.Signer) *CA {
	t.Helper()
	tmpl := caTemplate("tbs test CA")
	tmpl.NotAfter = time.Date(2060, 1, 1, 0, 0, 0, 0, time.UTC)
	return &CA{Cert: mustSign(t, tmpl, nil, key.Public(), key), Key: key}
}

func mustECDSAKey(t testing.TB, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func mustRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func mustEd25519Key(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}
