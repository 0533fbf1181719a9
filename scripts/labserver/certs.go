package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// File stems of the two roots. The lab root is the one clients and the
// gateway trust; the untrusted root exists only to sign a leaf that must fail
// verification.
const (
	labRootName       = "root"
	untrustedRootName = "untrusted-root"
)

// labHost is one server identity: a leaf certificate, the names and
// addresses it is valid for, and who signs it.
type labHost struct {
	// name is the primary DNS name and the file stem of NAME.crt / NAME.key.
	name string
	dns  []string
	// ips are put in the certificate and select this host when a client
	// sends no SNI to one of them.
	ips []netip.Addr
	// untrusted signs the leaf with the untrusted root instead of the lab root.
	untrusted bool
	// expired makes the leaf's validity end in the past.
	expired bool
	// selfSigned makes the leaf sign itself, as a device's default
	// certificate does.
	selfSigned bool
	// perName serves each name below the host (the one label its "*."
	// pattern covers) a leaf of its own, for that name only, as distinct
	// sites have; the wildcard leaf answers for the rest.
	perName bool
}

// labHosts lists every identity the lab serves. expired.example.test,
// selfsigned.example.test and bench.example.test have no address of their
// own: they are reached by SNI on bad.example.test's and www.example.test's
// addresses.
var labHosts = []labHost{
	{
		name: "tunnel.cloudproxy.app",
		dns:  []string{"tunnel.cloudproxy.app", "*.tunnel.cloudproxy.app"},
		ips:  addrs("198.19.1.2", "2001:2:0:2::2"),
	},
	{
		name: "www.example.test",
		dns:  []string{"www.example.test", "example.test"},
		ips:  addrs("198.19.1.3", "2001:2:0:2::3"),
	},
	{
		name:      "bad.example.test",
		dns:       []string{"bad.example.test"},
		ips:       addrs("198.19.1.4", "2001:2:0:2::4"),
		untrusted: true,
	},
	{
		name:    "expired.example.test",
		dns:     []string{"expired.example.test"},
		expired: true,
	},
	{
		name:       "selfsigned.example.test",
		dns:        []string{"selfsigned.example.test"},
		selfSigned: true,
	},
	{
		// The benchmark's never-seen names (n0001.bench.example.test, ...),
		// reached on www.example.test's addresses by SNI. Each has its own
		// leaf, so a gateway forges a certificate for each new one rather
		// than reusing the one it made for the wildcard.
		name:    "bench.example.test",
		dns:     []string{"*.bench.example.test"},
		perName: true,
	},
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

// issuer is a CA certificate with its key, ready to sign leaves.
type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// writeCerts writes both roots and every labHosts leaf into dir as NAME.crt
// and NAME.key, replacing what is there. now anchors every validity period.
func writeCerts(dir string, now time.Time) error {
	root, err := writeRoot(dir, labRootName, "snigate lab public root", now)
	if err != nil {
		return err
	}
	untrusted, err := writeRoot(dir, untrustedRootName, "snigate lab untrusted root", now)
	if err != nil {
		return err
	}

	for _, h := range labHosts {
		ca := root
		if h.untrusted {
			ca = untrusted
		}
		if err := writeLeaf(dir, h, ca, now); err != nil {
			return err
		}
	}
	return nil
}

func writeRoot(dir, stem, commonName string, now time.Time) (*issuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key for %s: %w", stem, err)
	}
	subject := pkix.Name{Organization: []string{"snigate lab"}, CommonName: commonName}
	tmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               subject,
		NotBefore:             now.Add(-90 * 24 * time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", stem, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", stem, err)
	}

	if err := writePair(dir, stem, der, key); err != nil {
		return nil, err
	}
	return &issuer{cert: cert, key: key}, nil
}

func writeLeaf(dir string, h labHost, ca *issuer, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key for %s: %w", h.name, err)
	}
	notBefore, notAfter := now.Add(-time.Hour), now.Add(365*24*time.Hour)
	if h.expired {
		notBefore, notAfter = now.Add(-60*24*time.Hour), now.Add(-30*24*time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: mustSerial(),
		Subject:      pkix.Name{Organization: []string{"snigate lab"}, CommonName: h.name},
		DNSNames:     h.dns,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, ip := range h.ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.AsSlice()))
	}

	parent, signer := ca.cert, ca.key
	if h.selfSigned {
		parent, signer = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return fmt.Errorf("sign %s: %w", h.name, err)
	}
	return writePair(dir, h.name, der, key)
}

// writePair writes STEM.crt (PEM certificate) and STEM.key (PEM PKCS #8,
// readable by the owner only).
func writePair(dir, stem string, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key for %s: %w", stem, err)
	}

	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(filepath.Join(dir, stem+".crt"), crt, 0o644); err != nil {
		return err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	keyPath := filepath.Join(dir, stem+".key")
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	// WriteFile keeps the mode of a file that already exists.
	return os.Chmod(keyPath, 0o600)
}

func mustSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n.Add(n, big.NewInt(1))
}

// loadIssuer reads the root STEM.crt and STEM.key from dir.
func loadIssuer(dir, stem string) (*issuer, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, stem+".crt"), filepath.Join(dir, stem+".key"))
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", stem, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load %s: key is %T, not ECDSA", stem, pair.PrivateKey)
	}
	return &issuer{cert: pair.Leaf, key: key}, nil
}

// nameLeaf signs a leaf for name alone with ca, certifying key, valid from
// an hour ago for a year.
func nameLeaf(name string, key *ecdsa.PrivateKey, ca *issuer) (*tls.Certificate, error) {
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: mustSerial(),
		Subject:      pkix.Name{Organization: []string{"snigate lab"}, CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("sign leaf for %s: %w", name, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
