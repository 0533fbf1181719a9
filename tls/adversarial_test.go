package tls

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Upstream certificates and clients that try to get more out of the
// gateway than verification granted.

// rawSANExt encodes a subjectAltName value verbatim, so a test can give
// an upstream leaf SANs x509.CreateCertificate would normalise.
func rawSANExt(dns []string, ips [][]byte) pkix.Extension {
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, d := range dns {
			b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes([]byte(d)) })
		}
		for _, ip := range ips {
			b.AddASN1(cbasn1.Tag(7).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(ip) })
		}
	})
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: b.BytesOrPanic()}
}

// constrainedUpstream serves, on loopback, a leaf from a
// name-constrained intermediate under the lab root, and returns the
// address and the leaf.
func constrainedUpstream(
	t *testing.T, lab *bumpLab, constrain func(*x509.Certificate), cn string, san pkix.Extension,
) (string, *x509.Certificate) {
	t.Helper()
	ikey := mustKey(t)
	itmpl := caTemplate("constrained intermediate")
	constrain(itmpl)
	inter := mustSign(t, itmpl, lab.root, ikey.Public(), lab.rootKey)
	key := mustKey(t)
	leaf := mustSign(t, &x509.Certificate{
		Subject:         pkix.Name{CommonName: cn},
		NotBefore:       time.Now().Add(-time.Hour),
		NotAfter:        time.Now().Add(24 * time.Hour),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		ExtraExtensions: []pkix.Extension{san},
	}, inter, key.Public(), ikey)
	addr, _ := startEchoServer(t, tls.Certificate{
		Certificate: [][]byte{leaf.Raw, inter.Raw}, PrivateKey: key, Leaf: leaf})
	return addr, leaf
}

// bumpNoSNI bumps one client connection without SNI (so the upstream is
// verified for 127.0.0.1) and returns the leaf the client was served, or
// nil when its handshake failed.
func bumpNoSNI(t *testing.T, lab *bumpLab, upAddr string) *x509.Certificate {
	t.Helper()
	addr, out := startBump(t, context.Background(), lab, upAddr, "", nil)
	var sawCert bool
	conn, err := dialClient(addr, clientConfig(lab, "127.0.0.1", nil, &sawCert))
	if err != nil {
		waitBump(t, out)
		return nil
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// crypto/x509 ignores the CN, so name constraints never reach it. An
// upstream leaf with only IP SANs and CN "bank.example", from an
// intermediate permitted only corp.example and 127.0.0.0/8, verifies for
// 127.0.0.1; a forgery copying that CN without any DNS SAN would be
// accepted for bank.example by verifiers that fall back to the CN (OpenSSL
// X509_check_host, Python's ssl defaults), although nothing was verified
// for that name, while the original chain fails there (permitted subtree
// violation).
func TestForgeCNNeedsDNSSANs(t *testing.T) {
	lab := newBumpLab(t)
	_, lo, _ := net.ParseCIDR("127.0.0.0/8")
	upAddr, _ := constrainedUpstream(t, lab, func(c *x509.Certificate) {
		c.PermittedDNSDomains = []string{"corp.example"}
		c.PermittedIPRanges = []*net.IPNet{lo}
	}, "bank.example", rawSANExt(nil, [][]byte{net.IPv4(127, 0, 0, 1).To4()}))

	leaf := bumpNoSNI(t, lab, upAddr)
	if leaf == nil {
		t.Fatal("client handshake failed; want a forgery for 127.0.0.1")
	}
	// Clients fall back to the CN only when a leaf has no DNS SAN; a
	// display-name CN beside DNS SANs (as TestForgeMirrorsUpstreamNames
	// wants) is harmless.
	cn := leaf.Subject.CommonName
	if len(leaf.DNSNames) == 0 && cn != "" && leaf.VerifyHostname(cn) != nil {
		t.Errorf("forged leaf has no DNS SAN and CN %q, which its IP SANs %v do not cover; "+
			"CN-fallback clients trust it for that unverified name", cn, leaf.IPAddresses)
	}
}

// crypto/x509 checks an IPv4 name constraint only against 4-byte IP SANs,
// so a leaf whose SAN is the IPv4-mapped ::ffff:127.0.0.1 passes an
// intermediate that excludes 127.0.0.0/8 and still matches 127.0.0.1. A
// forgery for it would carry the 4-byte 127.0.0.1 under the unconstrained
// gateway CA, trusted by every client; the gateway forges none.
func TestForgeMappedIPv4SANDoesNotEscapeConstraints(t *testing.T) {
	lab := newBumpLab(t)
	_, lo, _ := net.ParseCIDR("127.0.0.0/8")
	upAddr, up := constrainedUpstream(t, lab, func(c *x509.Certificate) {
		c.ExcludedIPRanges = []*net.IPNet{lo}
	}, "mapped", rawSANExt(nil, [][]byte{net.ParseIP("::ffff:127.0.0.1").To16()}))
	t.Logf("upstream SAN %x (%d bytes)", []byte(up.IPAddresses[0]), len(up.IPAddresses[0]))

	if leaf := bumpNoSNI(t, lab, upAddr); leaf != nil {
		t.Errorf("client accepted a gateway-CA forgery with IP SANs %v for 127.0.0.1, "+
			"an address the upstream's issuer is excluded from", leaf.IPAddresses)
	}
}

// A ticket key decrypts for at most ticketKeyRotation × ticketKeysKept,
// also when no handshake asked for keys in between: a TLS 1.2 ticket
// carries the master secret, so a key kept for days would expose days of
// recorded sessions to whoever reads the gateway's memory.
func TestTicketKeysExpireAfterIdle(t *testing.T) {
	var k ticketKeys
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	first, err := k.at(t0)
	if err != nil {
		t.Fatal(err)
	}
	limit := ticketKeyRotation * ticketKeysKept
	later := t0.Add(limit + ticketKeyRotation) // a quiet day and a bit
	keys, _ := k.at(later)
	for _, key := range keys {
		if key == first[0] {
			t.Errorf("a key that encrypted tickets at %s still decrypts at %s (> %s)",
				t0.Format(time.Kitchen), later.Format(time.RFC3339), limit)
		}
	}
}

// TLS 1.2 clients resume with the shared keys, and a TLS 1.2 ticket does
// not let a client skip the untrusted certificate of a mimicked connection.
func TestBumpTLS12ResumptionAndMimic(t *testing.T) {
	lab := newBumpLab(t)
	lab.bumper.cfg.VerifyFailure = VerifyMimic
	good, _ := startEchoServer(t, mustServerCert(t, lab.root, lab.rootKey, "up.test", "other.up.test"))
	bad, _ := startEchoServer(t, mustSelfSigned(t, "up.test"))
	sessions := tls.NewLRUClientSessionCache(4)
	connect := func(upstream, name string) (*tls.Conn, error) {
		addr, _ := startBump(t, context.Background(), lab, upstream, name, nil)
		var sawCert bool
		cfg := clientConfig(lab, name, nil, &sawCert)
		cfg.ClientSessionCache = sessions
		cfg.MaxVersion = tls.VersionTLS12
		return dialClient(addr, cfg)
	}
	for i, want := range []bool{false, true} {
		conn, err := connect(good, "up.test")
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if got := conn.ConnectionState(); got.Version != tls.VersionTLS12 || got.DidResume != want {
			t.Errorf("connection %d: version %x resumed %v, want TLS 1.2 resumed %v",
				i, got.Version, got.DidResume, want)
		}
		conn.Close()
	}
	conn, err := connect(bad, "up.test")
	if err == nil {
		conn.Close()
		t.Fatalf("TLS 1.2 client got past a mimicked certificate (resumed %v)",
			conn.ConnectionState().DidResume)
	}
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("client error %v, want the untrusted certificate", err)
	}
}

// createLeaf matches x509.CreateCertificate for parsed upstream leaves of
// shapes real servers present: thousands of SANs, DNS SANs with case,
// trailing dots, empty or odd names, IPv4-mapped IPv6, CNs with control
// characters, '&', '*', 70k bytes, and T61/BMP/IA5 encodings, URI and
// email SANs.
func TestCreateLeafMatchesX509OnUpstreamShapes(t *testing.T) {
	root, rootKey := mustRoot(t, "r")
	ca, _ := mustInitCA(t)
	cnName := func(tag cbasn1.Tag, v []byte) []byte {
		b := cryptobyte.NewBuilder(nil)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(asn1.ObjectIdentifier{2, 5, 4, 3})
					b.AddASN1(tag, func(b *cryptobyte.Builder) { b.AddBytes(v) })
				})
			})
		})
		return b.BytesOrPanic()
	}
	many := make([]string, 3000)
	for i := range many {
		many[i] = "h" + strconv.Itoa(i) + ".many.test"
	}
	one := []string{"up.test"}
	cases := []struct {
		name, cn     string
		rawSubject   []byte
		dns          []string
		san          *pkix.Extension
		uris, emails bool
	}{
		{name: "3000 sans", cn: "x", dns: many},
		{name: "odd dns", cn: "Odd", san: ptr(rawSANExt([]string{"UP.TEST", "up.test.", "", "*.*.up.test", "a b", "*"}, nil))},
		{name: "mapped ip", cn: "m", san: ptr(rawSANExt(nil, [][]byte{net.ParseIP("::ffff:198.19.1.2").To16(), net.ParseIP("2001:db8::1")}))},
		{name: "control cn", cn: "a\x00b\x07\x7f", dns: one},
		{name: "amp star cn", cn: "A&B*", dns: one},
		{name: "long cn", cn: strings.Repeat("L", 70000), dns: one},
		{name: "t61 latin1 cn", rawSubject: cnName(cbasn1.T61String, []byte("Universit\xe4t")), dns: one},
		{name: "bmp cn", rawSubject: cnName(cbasn1.Tag(30), []byte{0, 'B', 0, 0xfc}), dns: one},
		{name: "ia5 cn", rawSubject: cnName(cbasn1.IA5String, []byte("ia5 *&")), dns: one},
		{name: "uri email", cn: "u", dns: one, uris: true, emails: true},
	}
	keys := leafKeys()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmpl := &x509.Certificate{
				Subject: pkix.Name{CommonName: c.cn}, RawSubject: c.rawSubject,
				NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
				DNSNames: c.dns,
			}
			if c.san != nil {
				tmpl.ExtraExtensions = []pkix.Extension{*c.san}
			}
			if c.uris {
				tmpl.URIs = []*url.URL{{Scheme: "spiffe", Host: "x", Path: "/y"}}
			}
			if c.emails {
				tmpl.EmailAddresses = []string{"a@b.test"}
			}
			up := mustSign(t, tmpl, root, mustKey(t).Public(), rootKey)
			for _, kt := range []KeyType{KeyECDSA, KeyRSA} {
				lk, err := keys[kt]()
				if err != nil {
					t.Fatal(err)
				}
				lt := leafTemplate(ca.Cert, forgeKey{name: "up.test", keyType: kt}, nil, up)
				lt.SerialNumber = big.NewInt(0x7fffffff)
				lt.NotBefore, lt.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
				got, err := createLeaf(lt, ca, lk)
				if err != nil {
					t.Fatalf("createLeaf (%s): %v", kt, err)
				}
				want := mustCreate(t, lt, ca.Cert, lk.signer.Public(), ca.Key)
				if !bytes.Equal(got.RawTBSCertificate, want.RawTBSCertificate) {
					t.Errorf("%s: TBSCertificate differs from x509.CreateCertificate's", kt)
				}
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
