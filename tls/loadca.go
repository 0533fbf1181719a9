package tls

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// LoadCA reads the CA certificate from certFile and its private key from
// keyFile. certFile and keyFile may name the same file holding both blocks,
// as Squid installations keep them. The key may be PKCS#8, PKCS#1 (RSA) or
// SEC1 (EC), unencrypted.
//
// The certificate must be a CA (basic constraints CA:TRUE and, if the key
// usage extension is present, keyCertSign), valid now, and match the key.
// Each error names the file and what is wrong with it.
func LoadCA(certFile, keyFile string) (*CA, error) {
	cert, err := loadCACert(certFile, time.Now())
	if err != nil {
		return nil, err
	}

	key, err := loadKey(keyFile)
	if err != nil {
		return nil, err
	}

	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("load ca key %s: key does not match certificate %s",
			keyFile, certFile)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// loadCACert reads the first certificate in path and checks that it can act
// as the gateway CA at time now.
func loadCACert(path string, now time.Time) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load ca cert %s: %w", path, err)
	}

	block := firstPEMBlock(data, "CERTIFICATE")
	if block == nil {
		return nil, fmt.Errorf("load ca cert %s: no CERTIFICATE PEM block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load ca cert %s: %w", path, err)
	}

	if err := checkCA(cert, now); err != nil {
		return nil, fmt.Errorf("load ca cert %s: %w", path, err)
	}
	return cert, nil
}

// checkCA reports why cert cannot sign leaf certificates at time now, or
// returns nil if it can.
func checkCA(cert *x509.Certificate, now time.Time) error {
	subject := cert.Subject.String()
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return fmt.Errorf("%q is not a CA: basic constraints CA:TRUE missing", subject)
	}
	// An absent key usage extension allows every use, and CAs made with
	// openssl's stock v3_ca section lack it, so only a present extension
	// without keyCertSign is refused; verifiers such as OpenSSL reject
	// leaves issued by such a certificate.
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("%q is not a CA: key usage lacks keyCertSign", subject)
	}

	if now.Before(cert.NotBefore) {
		return fmt.Errorf("%q is not valid before %s (now %s)",
			subject, formatTime(cert.NotBefore), formatTime(now))
	}
	if now.After(cert.NotAfter) {
		return fmt.Errorf("%q expired at %s (now %s)",
			subject, formatTime(cert.NotAfter), formatTime(now))
	}
	return nil
}

// errEncryptedKey explains that LoadCA cannot use a passphrase-protected
// key: the gateway starts unattended, with nobody to type the passphrase.
var errEncryptedKey = errors.New("key is encrypted; store it unencrypted with mode 0600")

// loadKey reads the first private key block in path. Other blocks, such as
// the certificate of a combined file or openssl's EC PARAMETERS, are skipped.
func loadKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load ca key %s: %w", path, err)
	}

	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch block.Type {
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY":
			key, err := parseKeyBlock(block)
			if err != nil {
				return nil, fmt.Errorf("load ca key %s: %w", path, err)
			}
			return key, nil
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("load ca key %s: %w", path, errEncryptedKey)
		}
	}
	return nil, fmt.Errorf("load ca key %s: no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY "+
		"PEM block (a key kept in a file of its own is given with --key)", path)
}

// parseKeyBlock decodes a PKCS#8, PKCS#1 or SEC1 private key block.
func parseKeyBlock(block *pem.Block) (crypto.Signer, error) {
	// RFC 1421 encryption marks the block with a Proc-Type header; without
	// this check the parsers below report a confusing ASN.1 error.
	if _, ok := block.Headers["Proc-Type"]; ok {
		return nil, errEncryptedKey
	}

	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}

	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s holds a %T, which cannot sign certificates", block.Type, key)
	}
	return signer, nil
}

// firstPEMBlock returns the first block of type typ in data, or nil.
func firstPEMBlock(data []byte, typ string) *pem.Block {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil || block.Type == typ {
			return block
		}
	}
}

// publicKeysEqual reports whether a and b are the same public key.
func publicKeysEqual(a, b crypto.PublicKey) bool {
	// Every public key type in the standard library has this method.
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// formatTime renders t for error messages: UTC, to the second.
func formatTime(t time.Time) string {
	return t.UTC().Format(time.RFC3339)
}
