package tls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Forged leaves are encoded here rather than by x509.CreateCertificate,
// which spends about half of a forging on work a leaf can do without:
// marshalling through reflection, and verifying the signature it has just
// made. The signed bytes are the same; TestCreateLeafMatchesX509 compares
// them with x509.CreateCertificate's for each kind of leaf and CA key.

// Object identifiers of a forged leaf: RFC 5280, Sections 4.1.2.4 and
// 4.2.1; signature algorithms from RFC 5758, Section 3.2 (ECDSA), RFC 4055,
// Section 5 (RSA) and RFC 8410, Section 3 (Ed25519).
var (
	oidCommonName       = asn1.ObjectIdentifier{2, 5, 4, 3}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSubjectAltName   = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidAuthorityKeyID   = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidServerAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}

	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidECDSAWithSHA512 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}
	oidSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidEd25519         = asn1.ObjectIdentifier{1, 3, 101, 112}
)

// sigAlg is how a CA key signs leaves: the algorithm x509.CreateCertificate
// picks for the key when the template names none.
type sigAlg struct {
	oid asn1.ObjectIdentifier
	// nullParams adds the NULL parameters RFC 4055 requires for RSA; the
	// ECDSA and Ed25519 identifiers have none.
	nullParams bool
	// hash digests the message before it is signed; zero for Ed25519,
	// which signs the message itself.
	hash crypto.Hash
}

// caSigAlg returns the signature algorithm of a CA key. It accepts the key
// types LoadCA and InitCA produce: ECDSA on the curves crypto/x509 knows,
// RSA, and Ed25519.
//
// LIMITATION: a CA key kept outside the process (a hardware token or a
// remote service behind crypto.Signer) is refused, because createLeaf does
// not check the signatures it gets back; checking each one, as
// x509.CreateCertificate does, would lift this at about the cost of
// a second signature.
func caSigAlg(key crypto.Signer) (sigAlg, error) {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P224(), elliptic.P256():
			return sigAlg{oid: oidECDSAWithSHA256, hash: crypto.SHA256}, nil
		case elliptic.P384():
			return sigAlg{oid: oidECDSAWithSHA384, hash: crypto.SHA384}, nil
		case elliptic.P521():
			return sigAlg{oid: oidECDSAWithSHA512, hash: crypto.SHA512}, nil
		}
		return sigAlg{}, fmt.Errorf("ca key is ECDSA on curve %s, not P-224, P-256, P-384 or P-521",
			k.Curve.Params().Name)
	case *rsa.PrivateKey:
		return sigAlg{oid: oidSHA256WithRSA, nullParams: true, hash: crypto.SHA256}, nil
	case ed25519.PrivateKey:
		return sigAlg{oid: oidEd25519}, nil
	}
	return sigAlg{}, fmt.Errorf(
		"ca key type %T is not supported: want an in-memory ECDSA, RSA or Ed25519 private key", key)
}

// createLeaf signs the leaf described by tmpl, certifying leaf's public
// key, with ca and returns it parsed. tmpl comes from leafTemplate with its
// serial number and validity set. The TBSCertificate, the part signed, is
// byte for byte the one x509.CreateCertificate makes of the same arguments.
func createLeaf(tmpl *x509.Certificate, ca *CA, leaf *leafKey) (*x509.Certificate, error) {
	cn := tmpl.Subject.CommonName
	alg, err := caSigAlg(ca.Key)
	if err != nil {
		return nil, err
	}
	tbs, err := leafTBS(tmpl, ca.Cert.RawSubject, alg, leaf.spki)
	if err != nil {
		return nil, fmt.Errorf("encode certificate for %q: %w", cn, err)
	}

	// x509.CreateCertificate verifies each signature it makes, to catch a
	// crypto.Signer that returns garbage, such as a faulty hardware token;
	// the check costs more than the signature. caSigAlg admits only keys
	// in process memory, which Go's own code signs with: crypto/rsa already
	// checks its CRT result, the fault that would leak an RSA key, and any
	// other bad signature makes clients reject the leaf, never trust it.
	// Parsing the result below still catches a malformed encoding.
	sig, err := crypto.SignMessage(ca.Key, rand.Reader, tbs, alg.hash)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %q: %w", cn, err)
	}

	b := cryptobyte.NewBuilder(make([]byte, 0, len(tbs)+len(sig)+32))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		addAlgorithm(b, alg)
		b.AddASN1BitString(sig)
	})
	der, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encode certificate for %q: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate for %q: %w", cn, err)
	}
	return cert, nil
}

// leafTBS encodes the TBSCertificate (RFC 5280, Section 4.1) of tmpl,
// issued by the encoded name issuer, signed with alg, for the encoded
// SubjectPublicKeyInfo spki.
func leafTBS(tmpl *x509.Certificate, issuer []byte, alg sigAlg, spki []byte) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, 512))
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1Int64(2) // v3
		})
		b.AddASN1BigInt(tmpl.SerialNumber)
		addAlgorithm(b, alg)
		b.AddBytes(issuer)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			addTime(b, tmpl.NotBefore)
			addTime(b, tmpl.NotAfter)
		})
		addCommonName(b, tmpl.Subject.CommonName)
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(3).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				addExtensions(b, tmpl)
			})
		})
	})
	return b.Bytes()
}

// addExtensions appends tmpl's extensions in the order and with the
// criticality x509.CreateCertificate gives them. It reads the key usage,
// authority key id and SANs from tmpl; the extended key usage (serverAuth)
// and basic constraints (not a CA) are the ones leafTemplate always sets.
func addExtensions(b *cryptobyte.Builder, tmpl *x509.Certificate) {
	if tmpl.KeyUsage != 0 {
		addExtension(b, oidKeyUsage, true, func(b *cryptobyte.Builder) {
			addKeyUsage(b, tmpl.KeyUsage)
		})
	}
	addExtension(b, oidExtKeyUsage, false, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidServerAuth)
		})
	})
	// Empty: cA is FALSE by default and DER leaves defaults out.
	addExtension(b, oidBasicConstraints, true, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(*cryptobyte.Builder) {})
	})
	if len(tmpl.AuthorityKeyId) > 0 {
		addExtension(b, oidAuthorityKeyID, false, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) {
					b.AddBytes(tmpl.AuthorityKeyId)
				})
			})
		})
	}
	if len(tmpl.DNSNames)+len(tmpl.IPAddresses) > 0 {
		// RFC 5280, Section 4.2.1.6: when the subject is empty, the SANs
		// carry the identity and the extension must be critical.
		critical := tmpl.Subject.CommonName == ""
		addExtension(b, oidSubjectAltName, critical, func(b *cryptobyte.Builder) {
			addSANs(b, tmpl.DNSNames, tmpl.IPAddresses)
		})
	}
}

// addExtension appends one Extension whose extnValue is what value writes.
func addExtension(
	b *cryptobyte.Builder, oid asn1.ObjectIdentifier, critical bool,
	value cryptobyte.BuilderContinuation,
) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oid)
		if critical { // DEFAULT FALSE, so DER omits a false one
			b.AddASN1Boolean(true)
		}
		b.AddASN1(cbasn1.OCTET_STRING, value)
	})
}

// addKeyUsage appends ku as the KeyUsage BIT STRING of RFC 5280, Section
// 4.2.1.3. Bit 0 of ku (digitalSignature) is the string's first bit, and
// DER ends the string at its last bit set.
func addKeyUsage(b *cryptobyte.Builder, ku x509.KeyUsage) {
	v := bits.Reverse16(uint16(ku))
	n := 16 - bits.TrailingZeros16(v) // bits up to the last one set
	b.AddASN1(cbasn1.BIT_STRING, func(b *cryptobyte.Builder) {
		b.AddUint8(uint8((8 - n%8) % 8)) // unused bits in the last byte
		b.AddUint8(uint8(v >> 8))
		if n > 8 {
			b.AddUint8(uint8(v))
		}
	})
}

// addSANs appends the GeneralNames of a subjectAltName: the DNS names,
// then the IP addresses, IPv4 in four bytes, as x509.CreateCertificate
// lists them.
func addSANs(b *cryptobyte.Builder, dnsNames []string, ips []net.IP) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, name := range dnsNames {
			if !isASCII(name) {
				b.SetError(fmt.Errorf("dns name %s is not an IA5String", quoteWire(name)))
				return
			}
			b.AddASN1(cbasn1.Tag(2).ContextSpecific(), func(b *cryptobyte.Builder) {
				b.AddBytes([]byte(name))
			})
		}
		for _, ip := range ips {
			if ip4 := ip.To4(); ip4 != nil {
				ip = ip4
			}
			b.AddASN1(cbasn1.Tag(7).ContextSpecific(), func(b *cryptobyte.Builder) {
				b.AddBytes(ip)
			})
		}
	})
}

// addCommonName appends a Name holding only the common name cn, or an
// empty Name when cn is empty. Like encoding/asn1 it writes cn as a
// PrintableString when cn fits one and as a UTF8String otherwise.
func addCommonName(b *cryptobyte.Builder, cn string) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		if cn == "" {
			return
		}
		if !utf8.ValidString(cn) {
			b.SetError(errors.New("common name is not valid UTF-8"))
			return
		}
		tag := cbasn1.UTF8String
		if isPrintable(cn) {
			tag = cbasn1.PrintableString
		}
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidCommonName)
				b.AddASN1(tag, func(b *cryptobyte.Builder) {
					b.AddBytes([]byte(cn))
				})
			})
		})
	})
}

// addTime appends t as RFC 5280, Section 4.1.2.5 wants it: in UTC, to the
// second, as a UTCTime for the years 1950 through 2049 and as a
// GeneralizedTime otherwise.
func addTime(b *cryptobyte.Builder, t time.Time) {
	t = t.UTC()
	if y := t.Year(); 1950 <= y && y < 2050 {
		b.AddASN1UTCTime(t)
	} else {
		b.AddASN1GeneralizedTime(t)
	}
}

// addAlgorithm appends alg's AlgorithmIdentifier.
func addAlgorithm(b *cryptobyte.Builder, alg sigAlg) {
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(alg.oid)
		if alg.nullParams {
			b.AddASN1NULL()
		}
	})
}

// isPrintable reports whether s holds only characters of an ASN.1
// PrintableString: letters, digits, space and '()+,-./:=? (X.680,
// Section 41.4). '*' and '&' are not among them.
func isPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte(" '()+,-./:=?", c) >= 0) {
			return false
		}
	}
	return true
}

// isASCII reports whether s holds only ASCII, the IA5String alphabet.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
