package tls

import (
	"container/list"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// leafBackdate starts a forged certificate's validity before now, so
	// clients whose clocks run a little slow still accept it.
	leafBackdate = time.Hour
	// leafLifetime is how long a forged certificate lasts when neither the
	// CA nor the upstream certificate ends sooner.
	leafLifetime = 30 * 24 * time.Hour
	// leafMinRemaining is the least validity a cached certificate must have
	// left to be served again; clients whose clocks run fast would refuse
	// one closer to its end. A forgery cut short by the upstream's or the
	// CA's end is served to its end: forging again would not extend it.
	leafMinRemaining = time.Hour
	// maxCacheBytes bounds the cache's memory besides its entry count. A
	// forgery copies the upstream's SANs, so an upstream with hundreds of
	// long names makes forgeries of tens of KiB, each name its own when
	// the upstream has no CN.
	maxCacheBytes = 64 << 20
)

// KeyType is the public key algorithm of a forged leaf certificate.
type KeyType int

const (
	// KeyECDSA is ECDSA on P-256: small and fast, and what every current
	// client accepts.
	KeyECDSA KeyType = iota
	// KeyRSA is RSA with a 2048-bit modulus, for clients that offer no
	// ECDSA signature scheme or cipher suite.
	KeyRSA
	numKeyTypes
)

// String returns the key type's name, as used in errors.
func (k KeyType) String() string {
	switch k {
	case KeyECDSA:
		return "ecdsa-p256"
	case KeyRSA:
		return "rsa-2048"
	}
	return fmt.Sprintf("KeyType(%d)", int(k))
}

// untrustedCAName is the subject of the in-memory CA behind
// Forger.UntrustedCertificate.
var untrustedCAName = pkix.Name{CommonName: "snigate untrusted", Organization: []string{"snigate"}}

// Forger forges leaf certificates signed by a CA and caches them. All
// leaves of one key type share one key, made on first use: a fresh key per
// name would cost more than the signature (an RSA key far more), and the
// keys never leave the process. A Forger is safe for concurrent use.
type Forger struct {
	ca *CA
	// untrusted is a CA made by NewForger and kept in memory only, which
	// no client trusts; see UntrustedCertificate.
	untrusted *CA
	keys      [numKeyTypes]func() (*leafKey, error)
	max       int
	maxBytes  int // maxCacheBytes but in tests

	mu       sync.Mutex
	entries  map[forgeKey]*list.Element // values are *cacheEntry
	order    *list.List                 // most recently used at the front
	inflight map[forgeKey]*forgeCall
	bytes    int // sum of the entries' sizes

	hits, misses, forged, untrustedForged atomic.Uint64
	forgeNanos                            atomic.Int64
}

// forgeKey identifies one cached certificate.
type forgeKey struct {
	name      string
	keyType   KeyType
	untrusted bool
	// upstream is the SHA-256 of the upstream certificate the forgery was
	// made for, all zero without one. A server that changes its certificate
	// thereby gets a new forgery with the new names and validity.
	upstream [sha256.Size]byte
}

type cacheEntry struct {
	key  forgeKey
	cert *tls.Certificate
	// renewAt is when a lookup stops serving cert and forges again.
	renewAt time.Time
	// size estimates the memory cert holds: its DER and the parsed
	// leaf's copies of the names, plus bookkeeping.
	size int
}

// forgeCall is one forging in progress; callers wanting the same key wait
// on done instead of forging again.
type forgeCall struct {
	done    chan struct{}
	cert    *tls.Certificate
	renewAt time.Time
	err     error
}

// ForgerStats are counters of a Forger since it was made. A lookup served
// from the cache is a hit; any other is a miss, including one that waited
// for another caller's forging. Forged counts certificates signed by the
// gateway CA, Untrusted those signed by the untrusted CA.
type ForgerStats struct {
	Hits, Misses, Forged, Untrusted uint64
	// ForgeTime is the total time spent forging the Forged and Untrusted
	// certificates, key generation included; divided by their sum it gives
	// the mean cost of one.
	ForgeTime time.Duration
	Entries   int
}

// NewForger returns a Forger signing with ca and caching at most
// maxEntries certificates, evicting the least recently used. It also makes
// the untrusted in-memory CA used by UntrustedCertificate.
func NewForger(ca *CA, maxEntries int) (*Forger, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("new forger: ca certificate and key are required")
	}
	if maxEntries < 1 {
		return nil, fmt.Errorf("new forger: max entries %d is not at least 1", maxEntries)
	}
	if _, err := caSigAlg(ca.Key); err != nil {
		return nil, fmt.Errorf("new forger: %w", err)
	}

	untrusted, err := newCA(time.Now(), untrustedCAName)
	if err != nil {
		return nil, fmt.Errorf("new forger: untrusted ca: %w", err)
	}
	return &Forger{
		ca:        ca,
		untrusted: untrusted,
		keys:      leafKeys(),
		max:       maxEntries,
		maxBytes:  maxCacheBytes,
		entries:   make(map[forgeKey]*list.Element),
		order:     list.New(),
		inflight:  make(map[forgeKey]*forgeCall),
	}, nil
}

// leafKey is the key pair shared by the leaves of one key type, with its
// public key encoded once as the SubjectPublicKeyInfo every leaf carries.
type leafKey struct {
	signer crypto.Signer
	spki   []byte
}

// leafKeys returns one generator per key type, each making its key once.
func leafKeys() [numKeyTypes]func() (*leafKey, error) {
	return [numKeyTypes]func() (*leafKey, error){
		KeyECDSA: onceLeafKey(func() (crypto.Signer, error) {
			return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		}),
		KeyRSA: onceLeafKey(func() (crypto.Signer, error) {
			return rsa.GenerateKey(rand.Reader, 2048)
		}),
	}
}

// onceLeafKey returns a function that makes a leafKey with generate on its
// first call and returns that key, or that error, on every call.
func onceLeafKey(generate func() (crypto.Signer, error)) func() (*leafKey, error) {
	return sync.OnceValues(func() (*leafKey, error) {
		key, err := generate()
		if err != nil {
			return nil, err
		}
		spki, err := x509.MarshalPKIXPublicKey(key.Public())
		if err != nil {
			return nil, fmt.Errorf("encode public key: %w", err)
		}
		return &leafKey{signer: key, spki: spki}, nil
	})
}

// Certificate returns a certificate for name, a DNS name or an IP literal,
// with a key of type kt, signed by the CA. The result holds the leaf and
// the CA certificate, the shared leaf key, and the parsed leaf; callers
// must not modify it, since it is shared through the cache.
//
// upstream, if not nil, is the real server's verified leaf. The forgery
// then mirrors it: the same DNS and IP SANs and subject common name (name
// when upstream has none), and a validity inside upstream's as well as the
// CA's. Without upstream the only SAN is name.
func (f *Forger) Certificate(
	name string, upstream *x509.Certificate, kt KeyType,
) (*tls.Certificate, error) {
	return f.lookup(name, upstream, kt, false)
}

// UntrustedCertificate returns a certificate for name with a key of type
// kt, signed by the Forger's untrusted in-memory CA rather than the
// gateway CA. It is what a client is shown when the real server failed
// verification and the client should see its own certificate error: it
// lends the gateway CA's trust to nobody.
func (f *Forger) UntrustedCertificate(name string, kt KeyType) (*tls.Certificate, error) {
	return f.lookup(name, nil, kt, true)
}

// lookup returns the cached certificate for its arguments, or forges it.
// Concurrent callers asking for the same certificate share one forging.
func (f *Forger) lookup(
	name string, upstream *x509.Certificate, kt KeyType, untrusted bool,
) (*tls.Certificate, error) {
	name, ip, err := canonicalName(name)
	if err != nil {
		return nil, fmt.Errorf("forge: %w", err)
	}
	if kt < 0 || kt >= numKeyTypes {
		return nil, fmt.Errorf("forge %q: unknown key type %d", name, int(kt))
	}
	key := forgeKey{name: name, keyType: kt, untrusted: untrusted}
	if upstream != nil {
		key.upstream = sha256.Sum256(upstream.Raw)
	}

	// The cache's key: a forgery that copies every name from upstream is
	// the same for each name upstream covers, so those share one, and a
	// wildcard or CDN certificate covering thousands of names is forged
	// once instead of once per name.
	cached := key
	if namesFromUpstream(upstream) {
		cached.name = ""
	}

	f.mu.Lock()
	if cert := f.lookupLocked(cached, time.Now()); cert != nil {
		f.mu.Unlock()
		f.hits.Add(1)
		return cert, nil
	}
	f.misses.Add(1)
	if call, ok := f.inflight[cached]; ok {
		f.mu.Unlock()
		<-call.done
		return call.cert, call.err
	}
	call := &forgeCall{done: make(chan struct{})}
	f.inflight[cached] = call
	f.mu.Unlock()

	call.cert, call.renewAt, call.err = f.forge(key, ip, upstream)

	f.mu.Lock()
	delete(f.inflight, cached)
	if call.err == nil {
		f.storeLocked(cached, call.cert, call.renewAt)
	}
	f.mu.Unlock()
	close(call.done)
	return call.cert, call.err
}

// Stats returns the Forger's counters. It is safe for concurrent use.
func (f *Forger) Stats() ForgerStats {
	f.mu.Lock()
	entries := len(f.entries)
	f.mu.Unlock()
	return ForgerStats{
		Hits:      f.hits.Load(),
		Misses:    f.misses.Load(),
		Forged:    f.forged.Load(),
		Untrusted: f.untrustedForged.Load(),
		ForgeTime: time.Duration(f.forgeNanos.Load()),
		Entries:   entries,
	}
}

// lookupLocked returns the cached certificate for key unless its renewal
// time has come, or nil. f.mu must be held.
func (f *Forger) lookupLocked(key forgeKey, now time.Time) *tls.Certificate {
	el, ok := f.entries[key]
	if !ok {
		return nil
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.renewAt) {
		f.removeLocked(el)
		return nil
	}
	f.order.MoveToFront(el)
	return e.cert
}

// storeLocked caches cert under key until renewAt, evicting the least
// recently used entries beyond f.max or f.maxBytes. f.mu must be held.
func (f *Forger) storeLocked(key forgeKey, cert *tls.Certificate, renewAt time.Time) {
	if el, ok := f.entries[key]; ok {
		f.removeLocked(el)
	}
	e := &cacheEntry{key: key, cert: cert, renewAt: renewAt, size: 2*len(cert.Leaf.Raw) + 1024}
	f.entries[key] = f.order.PushFront(e)
	f.bytes += e.size
	for f.order.Len() > 1 && (f.order.Len() > f.max || f.bytes > f.maxBytes) {
		f.removeLocked(f.order.Back())
	}
}

// removeLocked drops one cache entry. f.mu must be held.
func (f *Forger) removeLocked(el *list.Element) {
	e := el.Value.(*cacheEntry)
	f.order.Remove(el)
	delete(f.entries, e.key)
	f.bytes -= e.size
}

// forge signs a new leaf for key (ip is key.name's address, or nil) with
// the gateway CA or, for an untrusted key, the untrusted one.
//
// It also returns when the cache should renew the certificate: an hour
// before its end, or at its end when the upstream's or the CA's validity
// cut it short, since a new one would end no later.
func (f *Forger) forge(
	key forgeKey, ip net.IP, upstream *x509.Certificate,
) (*tls.Certificate, time.Time, error) {
	start := time.Now()
	ca, counter := f.ca, &f.forged
	if key.untrusted {
		ca, counter = f.untrusted, &f.untrustedForged
	}
	cert, err := f.sign(ca, key, ip, upstream, start)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("forge %q (%s): %w", key.name, key.keyType, err)
	}
	f.forgeNanos.Add(int64(time.Since(start)))
	counter.Add(1)
	end := cert.Leaf.NotAfter
	// A minute of slack: the encoding keeps whole seconds.
	if end.Before(start.Add(leafLifetime - time.Minute)) {
		return cert, end, nil
	}
	return cert, end.Add(-leafMinRemaining), nil
}

// sign makes the leaf for key under ca, valid at now.
func (f *Forger) sign(
	ca *CA, key forgeKey, ip net.IP, upstream *x509.Certificate, now time.Time,
) (*tls.Certificate, error) {
	notBefore, notAfter, err := validity(now, ca.Cert, upstream)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	leafKey, err := f.keys[key.keyType]()
	if err != nil {
		return nil, fmt.Errorf("generate leaf key: %w", err)
	}

	tmpl := leafTemplate(ca.Cert, key, ip, upstream)
	if err := tmpl.VerifyHostname(key.name); err != nil {
		// Only names setNames would not copy can cover name upstream.
		return nil, fmt.Errorf("the upstream names a forgery may carry (DNS %q, IP %v) do not cover it",
			tmpl.DNSNames, tmpl.IPAddresses)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
	leaf, err := createLeaf(tmpl, ca, leafKey)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{
		Certificate: [][]byte{leaf.Raw, ca.Cert.Raw},
		PrivateKey:  leafKey.signer,
		Leaf:        leaf,
	}, nil
}

// leafTemplate describes the leaf forged for key under ca, all but its
// serial number and validity, which the caller sets. createLeaf encodes
// only the fields set here; TestCreateLeafMatchesX509 fails when one is
// added that it does not know.
func leafTemplate(
	ca *x509.Certificate, key forgeKey, ip net.IP, upstream *x509.Certificate,
) *x509.Certificate {
	tmpl := &x509.Certificate{
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		AuthorityKeyId:        ca.SubjectKeyId,
	}
	if key.keyType == KeyRSA {
		// RFC 5246 RSA key exchange encrypts to the leaf key; clients that
		// still offer it check for this usage.
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	setNames(tmpl, key.name, ip, upstream)
	return tmpl
}

// setNames gives tmpl the names of upstream's leaf when there is one: the
// client then sees the same SANs and subject the real certificate vouches
// for, so nothing it shows or checks differs but the issuer. The upstream
// was verified for name, so its SANs cover name. Without upstream the
// only SAN is name (or ip).
//
// The forgery is signed by a CA without the name constraints that may bind
// the upstream's chain, so it must not claim more than verification
// checked:
//   - An IPv4-mapped IPv6 SAN (::ffff:a.b.c.d) is dropped: encoded again it
//     becomes the plain IPv4 address, while crypto/x509 checks IPv4
//     constraints against four-byte SANs only.
//   - The upstream's CN is copied only when the forgery has DNS SANs.
//     Verification ignores the CN, but clients that find no DNS SAN fall
//     back to it, and would trust a name no one checked.
func setNames(tmpl *x509.Certificate, name string, ip net.IP, upstream *x509.Certificate) {
	// namesFromUpstream must say whether name is used here.
	dns, ips := upstreamSANs(upstream)
	tmpl.Subject = pkix.Name{CommonName: name}
	if upstream != nil && upstream.Subject.CommonName != "" && len(dns) > 0 {
		tmpl.Subject.CommonName = upstream.Subject.CommonName
	}
	if upstream != nil {
		// sign refuses the forgery if what is left does not cover name.
		tmpl.DNSNames, tmpl.IPAddresses = dns, ips
		return
	}
	// Clients match only the SAN; an IP literal belongs in an IP SAN
	// (RFC 5280, Section 4.2.1.6), never in a DNS one.
	if ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{name}
	}
}

// upstreamSANs returns the SANs of upstream (nil for none) a forgery may
// copy: all DNS names, and the IP addresses that are not IPv4-mapped.
func upstreamSANs(upstream *x509.Certificate) ([]string, []net.IP) {
	if upstream == nil {
		return nil, nil
	}
	var ips []net.IP
	for _, ip := range upstream.IPAddresses {
		// crypto/x509 keeps a SAN's own length: 16 bytes that are an
		// IPv4 address are the mapped form.
		if len(ip) == net.IPv6len && ip.To4() != nil {
			continue
		}
		ips = append(ips, ip)
	}
	return slices.Clone(upstream.DNSNames), ips
}

// namesFromUpstream reports whether setNames takes the subject and every
// SAN from upstream, leaving nothing in the forgery that depends on the
// name asked for.
func namesFromUpstream(upstream *x509.Certificate) bool {
	dns, _ := upstreamSANs(upstream)
	return upstream != nil && upstream.Subject.CommonName != "" && len(dns) > 0
}

// validity returns the forged certificate's validity period at now: from
// leafBackdate ago to leafLifetime ahead, cut to lie inside the periods of
// ca and upstream (nil for none). A forgery must not be trusted at a time
// the real certificate is not, so the result must also contain now.
func validity(now time.Time, ca, upstream *x509.Certificate) (time.Time, time.Time, error) {
	notBefore := later(now.Add(-leafBackdate), ca.NotBefore)
	notAfter := earlier(now.Add(leafLifetime), ca.NotAfter)
	if upstream != nil {
		notBefore = later(notBefore, upstream.NotBefore)
		notAfter = earlier(notAfter, upstream.NotAfter)
	}

	if now.Before(notBefore) || !now.Before(notAfter) {
		return time.Time{}, time.Time{}, fmt.Errorf(
			"no validity period containing now %s: ca and upstream allow %s to %s",
			formatTime(now), formatTime(notBefore), formatTime(notAfter))
	}
	return notBefore, notAfter, nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// canonicalName normalises a server name for forging and caching: a DNS
// name is lowercased without a trailing dot, an IP literal is returned in
// its shortest form together with its address.
func canonicalName(name string) (string, net.IP, error) {
	host := strings.ToLower(strings.TrimSuffix(name, "."))
	if addr, err := netip.ParseAddr(host); err == nil {
		if addr.Zone() != "" {
			return "", nil, fmt.Errorf("server name %s: ip address has a zone", quoteWire(name))
		}
		addr = addr.Unmap()
		return addr.String(), net.IP(addr.AsSlice()), nil
	}

	if err := checkDNSName(host); err != nil {
		return "", nil, fmt.Errorf("server name %s: %w", quoteWire(name), err)
	}
	return host, nil, nil
}

// checkDNSName reports why the lowercase name s cannot be a certificate's
// DNS SAN. Underscores pass: they are not valid hostname characters, but
// real server names use them and browsers accept them.
func checkDNSName(s string) error {
	if len(s) == 0 || len(s) > 253 {
		return fmt.Errorf("name length %d is outside 1-253", len(s))
	}
	for label := range strings.SplitSeq(s, ".") {
		if len(label) == 0 || len(label) > 63 {
			return fmt.Errorf("label length %d is outside 1-63", len(label))
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("byte %#02x is not a letter, digit, '-' or '_'", c)
			}
		}
	}
	return nil
}

// maxQuoted bounds how much of a string from the wire goes into an error.
const maxQuoted = 64

// quoteWire quotes s for an error message, cut to maxQuoted bytes.
func quoteWire(s string) string {
	if len(s) > maxQuoted {
		return strconv.Quote(s[:maxQuoted]) + "..."
	}
	return strconv.Quote(s)
}
