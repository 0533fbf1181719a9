package tls

import (
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestForgeVerifiesAgainstCA(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)

	cert, err := f.Certificate("WWW.Example.Test.", nil, KeyECDSA)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	opts := x509.VerifyOptions{
		Roots:     poolOf(ca.Cert),
		DNSName:   "www.example.test",
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if _, err := leaf.Verify(opts); err != nil {
		t.Fatalf("forged leaf does not verify: %v", err)
	}

	if leaf.Subject.CommonName != "www.example.test" || len(leaf.IPAddresses) != 0 {
		t.Errorf("CN %q, IP SANs %v", leaf.Subject.CommonName, leaf.IPAddresses)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature || leaf.IsCA {
		t.Errorf("key usage %b, IsCA %v", leaf.KeyUsage, leaf.IsCA)
	}
	if string(leaf.AuthorityKeyId) != string(ca.Cert.SubjectKeyId) {
		t.Error("authority key id does not match the CA's subject key id")
	}
	if leaf.SerialNumber.BitLen() < 64 || leaf.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %d bits, want a random 128-bit number", leaf.SerialNumber.BitLen())
	}
	if len(cert.Certificate) != 2 || string(cert.Certificate[1]) != string(ca.Cert.Raw) {
		t.Error("chain is not leaf + CA")
	}
	if !publicKeysEqual(leaf.PublicKey, cert.PrivateKey.(crypto.Signer).Public()) {
		t.Error("private key does not match the leaf")
	}
}

func TestForgeIPNames(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)

	tests := []struct{ name, want string }{
		{"198.18.1.2", "198.18.1.2"},
		{"2001:2:0:1::2", "2001:2:0:1::2"},
		{"::ffff:198.19.1.2", "198.19.1.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, err := f.Certificate(tt.name, nil, KeyECDSA)
			if err != nil {
				t.Fatal(err)
			}
			leaf := cert.Leaf
			if len(leaf.DNSNames) != 0 || len(leaf.IPAddresses) != 1 ||
				!leaf.IPAddresses[0].Equal(net.ParseIP(tt.want)) {
				t.Fatalf("DNS SANs %v, IP SANs %v, want only IP %s",
					leaf.DNSNames, leaf.IPAddresses, tt.want)
			}
			if leaf.Subject.CommonName != tt.want {
				t.Errorf("CN %q, want %q", leaf.Subject.CommonName, tt.want)
			}
			opts := x509.VerifyOptions{Roots: poolOf(ca.Cert), DNSName: tt.want}
			if _, err := leaf.Verify(opts); err != nil {
				t.Errorf("verify for %s: %v", tt.want, err)
			}
		})
	}
}

func TestForgeRejectsBadNames(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)
	bad := []string{
		"", "bad name.test", "a..b", "*.wild.test", "fe80::1%eth0", "caf\xc3\xa9.test",
		strings.Repeat("a", 64) + ".test",
	}
	for _, name := range bad {
		_, err := f.Certificate(name, nil, KeyECDSA)
		if err == nil {
			t.Errorf("Certificate(%q) succeeded", name)
			continue
		}
		if want := "server name " + quoteWire(name); !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if s := f.Stats(); s.Forged != 0 {
		t.Errorf("Forged %d after bad names", s.Forged)
	}
}

func TestForgeClampsToUpstream(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)
	root, rootKey := mustRoot(t, "lab root")
	upstream := mustServerCert(t, root, rootKey, "short.test").Leaf
	// Start of the upstream validity is later than the default backdate and
	// its end is well before the default 30 days.
	now := time.Now()
	upstream = reissue(t, upstream, root, rootKey, now.Add(-10*time.Minute), now.Add(3*time.Hour))

	cert, err := f.Certificate("short.test", upstream, KeyECDSA)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if leaf.NotBefore.Before(upstream.NotBefore) || leaf.NotAfter.After(upstream.NotAfter) {
		t.Errorf("forged %v..%v is not inside upstream %v..%v",
			leaf.NotBefore, leaf.NotAfter, upstream.NotBefore, upstream.NotAfter)
	}
	if leaf.NotBefore.Before(ca.Cert.NotBefore) || leaf.NotAfter.After(ca.Cert.NotAfter) {
		t.Errorf("forged %v..%v is not inside the CA's validity", leaf.NotBefore, leaf.NotAfter)
	}
}

func TestForgeDefaultValidity(t *testing.T) {
	ca, _ := mustInitCA(t)
	cert, err := mustForger(t, ca, 8).Certificate("default.test", nil, KeyECDSA)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if d := time.Until(leaf.NotBefore); d > -59*time.Minute || d < -61*time.Minute {
		t.Errorf("NotBefore %v is not an hour ago", leaf.NotBefore)
	}
	if d := time.Until(leaf.NotAfter); d < 30*24*time.Hour-time.Minute || d > 30*24*time.Hour {
		t.Errorf("NotAfter %v is not 30 days ahead", leaf.NotAfter)
	}
}

func TestForgeRefusesExpiredUpstream(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)
	root, rootKey := mustRoot(t, "lab root")
	old := mustServerCert(t, root, rootKey, "old.test").Leaf
	old = reissue(t, old, root, rootKey, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))

	_, err := f.Certificate("old.test", old, KeyECDSA)
	if err == nil || !strings.Contains(err.Error(), "no validity period") {
		t.Fatalf("error %v, want no validity period", err)
	}
}

// reissue signs a copy of cert with a new validity period.
func reissue(
	t testing.TB, cert, root *x509.Certificate, rootKey crypto.Signer,
	notBefore, notAfter time.Time,
) *x509.Certificate {
	t.Helper()
	tmpl := *cert
	tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
	return mustSign(t, &tmpl, root, cert.PublicKey, rootKey)
}

func TestForgeCache(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)
	root, rootKey := mustRoot(t, "lab root")
	upA := mustServerCert(t, root, rootKey, "cache.test").Leaf
	upB := mustServerCert(t, root, rootKey, "cache.test").Leaf

	first := mustCertificate(t, f, "cache.test", upA)
	again := mustCertificate(t, f, "cache.test", upA)
	if first != again {
		t.Error("second lookup with the same upstream forged again")
	}
	changed := mustCertificate(t, f, "cache.test", upB)
	if changed == first {
		t.Error("a changed upstream certificate got the old forgery")
	}
	noUpstream := mustCertificate(t, f, "cache.test", nil)
	if noUpstream == first || noUpstream == changed {
		t.Error("a lookup without upstream got an upstream-bound forgery")
	}

	got := f.Stats()
	if got.ForgeTime <= 0 {
		t.Errorf("ForgeTime %v after 3 forgings, want it positive", got.ForgeTime)
	}
	got.ForgeTime = 0
	want := ForgerStats{Hits: 1, Misses: 3, Forged: 3, Entries: 3}
	if got != want {
		t.Errorf("stats %+v, want %+v", got, want)
	}
}

// A forgery the upstream's end cut short is served until that end: a new
// one would end no later. One of full length is renewed an hour before.
func TestForgeRenewal(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)
	root, rootKey := mustRoot(t, "lab root")
	up := mustServerCert(t, root, rootKey, "ending.test").Leaf
	up = reissue(t, up, root, rootKey, time.Now().Add(-time.Hour), time.Now().Add(30*time.Minute))

	first := mustCertificate(t, f, "ending.test", up)
	if second := mustCertificate(t, f, "ending.test", up); second != first {
		t.Error("a forgery cut short by the upstream's end was forged again")
	}
	if s := f.Stats(); s.Forged != 1 || s.Hits != 1 {
		t.Errorf("stats %+v, want 1 forged, 1 hit", s)
	}

	full := mustCertificate(t, f, "full.test", nil)
	key := forgeKey{name: "full.test", keyType: KeyECDSA}
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := f.lookupLocked(key, full.Leaf.NotAfter.Add(-leafMinRemaining-time.Minute)); got != full {
		t.Error("a full-length forgery was not served up to an hour before its end")
	}
	if got := f.lookupLocked(key, full.Leaf.NotAfter.Add(-leafMinRemaining+time.Minute)); got != nil {
		t.Error("a full-length forgery was served within its last hour")
	}
	if got := f.lookupLocked(forgeKey{name: "ending.test", keyType: KeyECDSA,
		upstream: sha256.Sum256(up.Raw)}, up.NotAfter.Add(time.Second)); got != nil {
		t.Error("a forgery was served after its end")
	}
}

// The cache also evicts by memory: forgeries of an upstream with many long
// names are large.
func TestForgeEvictsByBytes(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 100)
	root, rootKey := mustRoot(t, "lab root")
	names := []string{"big.test"}
	for i := range 50 {
		names = append(names, fmt.Sprintf("name-%02d-%s.big.test", i, strings.Repeat("x", 40)))
	}
	names = append(names, "*.big.test")
	// No CN: one forgery per name.
	up := withSubjectCN(t, mustServerCert(t, root, rootKey, names...).Leaf, "", root, rootKey)

	one := mustCertificate(t, f, "a.big.test", up)
	size := 2*len(one.Leaf.Raw) + 1024
	f.mu.Lock()
	f.maxBytes = 3*size + 64 // signatures vary by a few bytes
	f.mu.Unlock()
	for _, name := range []string{"b.big.test", "c.big.test", "d.big.test"} {
		mustCertificate(t, f, name, up)
	}
	if s := f.Stats(); s.Entries != 3 {
		t.Errorf("%d entries of %d bytes each under a %d-byte bound, want 3", s.Entries, size, f.maxBytes)
	}
	if again := mustCertificate(t, f, "a.big.test", up); again == one {
		t.Error("the least recently used forgery was not the one evicted")
	}
}

func TestForgeEviction(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 2)

	a := mustCertificate(t, f, "a.test", nil)
	mustCertificate(t, f, "b.test", nil)
	if mustCertificate(t, f, "a.test", nil) != a { // a is now most recent
		t.Fatal("a.test was not cached")
	}
	mustCertificate(t, f, "c.test", nil) // evicts b, the least recent

	if s := f.Stats(); s.Entries != 2 || s.Forged != 3 {
		t.Fatalf("stats %+v, want 2 entries, 3 forged", s)
	}
	if mustCertificate(t, f, "a.test", nil) != a {
		t.Error("a.test was evicted although recently used")
	}
	mustCertificate(t, f, "b.test", nil)
	if s := f.Stats(); s.Forged != 4 || s.Entries != 2 {
		t.Errorf("stats %+v, want b.test forged again (4) and 2 entries", s)
	}
}

func TestForgeConcurrentMissesForgeOnce(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)

	const callers = 50
	certs := make([]*tls.Certificate, callers)
	errs := make([]error, callers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			<-start
			certs[i], errs[i] = f.Certificate("busy.test", nil, KeyECDSA)
		})
	}
	close(start)
	wg.Wait()

	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if certs[i] != certs[0] {
			t.Fatalf("caller %d got a different certificate", i)
		}
	}
	s := f.Stats()
	if s.Forged != 1 || s.Hits+s.Misses != callers {
		t.Errorf("stats %+v, want 1 forged and %d lookups", s, callers)
	}
}

func TestNewForgerErrors(t *testing.T) {
	ca, _ := mustInitCA(t)
	if _, err := NewForger(ca, 0); err == nil || !strings.Contains(err.Error(), "max entries 0") {
		t.Errorf("maxEntries 0: error %v", err)
	}
	if _, err := NewForger(nil, 10); err == nil {
		t.Error("nil CA accepted")
	}
}

// withSubjectCN reissues cert under root with only cn as its subject (none
// for ""), keeping its names and validity.
func withSubjectCN(
	t testing.TB, cert *x509.Certificate, cn string, root *x509.Certificate, rootKey crypto.Signer,
) *x509.Certificate {
	t.Helper()
	tmpl := *cert
	tmpl.RawSubject = nil // else it overrides Subject
	tmpl.Subject = pkix.Name{CommonName: cn}
	return reissue(t, &tmpl, root, rootKey, tmpl.NotBefore, tmpl.NotAfter)
}

func mustCertificate(
	t testing.TB, f *Forger, name string, upstream *x509.Certificate,
) *tls.Certificate {
	t.Helper()
	cert, err := f.Certificate(name, upstream, KeyECDSA)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func BenchmarkForgeNewName(b *testing.B) {
	ca, _ := mustInitCA(b)
	f := mustForger(b, ca, 1024)
	i := 0
	for b.Loop() {
		i++
		if _, err := f.Certificate(fmt.Sprintf("host%d.bench.test", i), nil, KeyECDSA); err != nil {
			b.Fatal(err)
		}
	}
}

func TestForgeMirrorsUpstreamNames(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)
	root, rootKey := mustRoot(t, "lab root")
	up := mustServerCert(t, root, rootKey, "up.test", "*.up.test", "198.19.1.2").Leaf
	withCN := withSubjectCN(t, up, "Up Test Frontend", root, rootKey)
	noCN := withSubjectCN(t, up, "", root, rootKey)

	tests := []struct {
		name     string
		upstream *x509.Certificate
		wantCN   string
	}{
		{"upstream common name", withCN, "Up Test Frontend"},
		{"no common name", noCN, "www.up.test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf := mustCertificate(t, f, "WWW.up.test", tt.upstream).Leaf
			if leaf.Subject.CommonName != tt.wantCN {
				t.Errorf("CN %q, want %q", leaf.Subject.CommonName, tt.wantCN)
			}
			if !slices.Equal(leaf.DNSNames, []string{"up.test", "*.up.test"}) ||
				len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("198.19.1.2")) {
				t.Errorf("SANs DNS %v, IP %v; want the upstream's", leaf.DNSNames, leaf.IPAddresses)
			}
			opts := x509.VerifyOptions{Roots: poolOf(ca.Cert), DNSName: "www.up.test"}
			if _, err := leaf.Verify(opts); err != nil {
				t.Errorf("verify for www.up.test: %v", err)
			}
		})
	}
}

// A forgery that copies all its names from the upstream certificate is
// made once for every name that certificate covers; one whose CN is the
// name asked for is made per name.
func TestForgeSharesForgeriesAcrossNames(t *testing.T) {
	ca, _ := mustInitCA(t)
	root, rootKey := mustRoot(t, "lab root")
	up := mustServerCert(t, root, rootKey, "up.test", "*.up.test").Leaf
	withCN := withSubjectCN(t, up, "up.test", root, rootKey)
	noCN := withSubjectCN(t, up, "", root, rootKey)

	tests := []struct {
		name       string
		upstream   *x509.Certificate
		wantForged uint64
	}{
		{"names all from upstream", withCN, 1},
		{"CN from the name", noCN, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := mustForger(t, ca, 8)
			var certs []*tls.Certificate
			for _, name := range []string{"a.up.test", "b.up.test", "up.test"} {
				cert := mustCertificate(t, f, name, tt.upstream)
				opts := x509.VerifyOptions{Roots: poolOf(ca.Cert), DNSName: name}
				if _, err := cert.Leaf.Verify(opts); err != nil {
					t.Errorf("forgery for %s: %v", name, err)
				}
				certs = append(certs, cert)
			}
			if got := f.Stats().Forged; got != tt.wantForged {
				t.Errorf("forged %d certificates for 3 names, want %d", got, tt.wantForged)
			}
			if tt.wantForged == 3 && certs[0].Leaf.Subject.CommonName != "a.up.test" {
				t.Errorf("CN %q, want the name asked for", certs[0].Leaf.Subject.CommonName)
			}
		})
	}
}

func TestForgeKeyTypes(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)

	ec := mustCertificateKey(t, f, "keys.test", KeyECDSA)
	rsa1 := mustCertificateKey(t, f, "keys.test", KeyRSA)
	rsa2 := mustCertificateKey(t, f, "other.test", KeyRSA)
	if ec == rsa1 {
		t.Fatal("ECDSA and RSA lookups share a cache entry")
	}
	if ec.Leaf.PublicKeyAlgorithm != x509.ECDSA || rsa1.Leaf.PublicKeyAlgorithm != x509.RSA {
		t.Errorf("key algorithms %v and %v, want ECDSA and RSA",
			ec.Leaf.PublicKeyAlgorithm, rsa1.Leaf.PublicKeyAlgorithm)
	}
	if rsa1.PrivateKey != rsa2.PrivateKey {
		t.Error("two RSA leaves got different keys; the key should be made once")
	}
	if rsa1.Leaf.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		t.Error("RSA leaf lacks key encipherment usage")
	}
	if _, err := f.Certificate("keys.test", nil, KeyType(7)); err == nil ||
		!strings.Contains(err.Error(), "unknown key type 7") {
		t.Errorf("key type 7: error %v", err)
	}
}

func TestForgeUntrusted(t *testing.T) {
	ca, _ := mustInitCA(t)
	f := mustForger(t, ca, 8)

	cert, err := f.UntrustedCertificate("bad.test", KeyECDSA)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if leaf.Issuer.CommonName != "snigate untrusted" {
		t.Errorf("issuer %q, want snigate untrusted", leaf.Issuer.CommonName)
	}
	opts := x509.VerifyOptions{Roots: poolOf(ca.Cert), DNSName: "bad.test"}
	if _, err := leaf.Verify(opts); err == nil {
		t.Error("untrusted leaf verifies against the gateway CA")
	}
	if trusted := mustCertificate(t, f, "bad.test", nil); trusted == cert {
		t.Error("trusted and untrusted lookups share a cache entry")
	}
	if s := f.Stats(); s.Untrusted != 1 || s.Forged != 1 {
		t.Errorf("stats %+v, want 1 untrusted and 1 forged", s)
	}
}

func mustCertificateKey(t testing.TB, f *Forger, name string, kt KeyType) *tls.Certificate {
	t.Helper()
	cert, err := f.Certificate(name, nil, kt)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}
