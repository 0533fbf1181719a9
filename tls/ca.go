package tls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Names of the files InitCA writes into its directory.
const (
	caCertFile = "ca.crt"
	caKeyFile  = "ca.key"
	caDERFile  = "ca.der"
)

// CA is the gateway's signing authority: the certificate office clients
// trust and the key that signs forged leaf certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// InitCA creates a new CA in dir and writes ca.crt (PEM certificate), ca.key
// (PEM PKCS#8 key, mode 0600) and ca.der (DER certificate, the form Windows
// imports most easily). The key is ECDSA P-256 and the certificate is valid
// for ten years from one hour ago. dir is created with mode 0755 if missing.
//
// InitCA never overwrites: if any of the three files exists it returns an
// error naming it and writes nothing.
func InitCA(dir string) (*CA, error) {
	// Checked before the key is made, so a refusal costs nothing; WriteCA
	// checks again, exclusively, when it creates the files.
	for _, name := range []string{caCertFile, caKeyFile, caDERFile} {
		if err := refuseExisting(filepath.Join(dir, name)); err != nil {
			return nil, err
		}
	}
	ca, err := newCA(time.Now(), gatewayCAName)
	if err != nil {
		return nil, fmt.Errorf("init ca in %s: %w", dir, err)
	}
	if err := WriteCA(ca, dir); err != nil {
		return nil, err
	}
	return ca, nil
}

// refuseExisting returns an error if path exists or cannot be checked.
func refuseExisting(path string) error {
	_, err := os.Lstat(path)
	if err == nil {
		return fmt.Errorf("ca file %s already exists, refusing to overwrite it", path)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check ca file %s: %w", path, err)
	}
	return nil
}

// gatewayCAName is the subject of the CA that InitCA creates.
var gatewayCAName = pkix.Name{CommonName: "snigate gateway CA", Organization: []string{"snigate"}}

// newCA generates a CA key and its self-signed certificate named subject,
// valid from an hour before now.
func newCA(now time.Time, subject pkix.Name) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	keyID, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, err
	}

	notBefore := now.Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             notBefore,
		NotAfter:              notBefore.AddDate(10, 0, 0),
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true, // it signs leaves only, never another CA
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		SubjectKeyId:          keyID,
	}
	cert, err := signCert(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// signCert creates the certificate described by tmpl and parses it back,
// so callers get the exact encoding that will be sent to clients.
func signCert(
	tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer,
) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	return cert, nil
}

// serialLimit bounds serial numbers to 128 bits, well inside the 20 octets
// RFC 5280, Section 4.1.2.2 allows.
var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// randomSerial returns a random positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("generate serial number: %w", err)
		}
		// RFC 5280, Section 4.1.2.2: the serial number must be positive.
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectKeyID derives a key identifier from pub as RFC 7093, Section 2
// method 1 describes: the leftmost 160 bits of the SHA-256 hash of the
// subjectPublicKey bit string.
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	var info struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		return nil, fmt.Errorf("decode public key: %w", err)
	}
	sum := sha256.Sum256(info.PublicKey.Bytes)
	return sum[:20], nil
}

// newFile is one file for writeNewFiles.
type newFile struct {
	path string
	data []byte
	perm os.FileMode
}

// writeNewFiles creates each file exclusively, in order. On failure it
// removes the files it created, so a retry does not trip over a half-made CA.
func writeNewFiles(files []newFile) error {
	for i, f := range files {
		err := writeNewFile(f.path, f.data, f.perm)
		if err == nil {
			continue
		}
		for _, done := range files[:i] {
			os.Remove(done.path)
		}
		return err
	}
	return nil
}

// writeNewFile writes data to path, which must not exist yet. O_EXCL keeps
// the no-overwrite promise even if another process creates the file between
// the existence check and this call.
func writeNewFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("create ca file %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write ca file %s: %w", path, err)
	}
	return nil
}
