package tls

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
)

// LoadRoots returns the pool used to verify upstream servers: the system
// roots plus every certificate in each of extraFiles (PEM). A file that
// cannot be read, holds a malformed certificate or holds none is an error
// naming it.
func LoadRoots(extraFiles []string) (*x509.CertPool, error) {
	// SystemCertPool returns a copy, so adding to it leaves the
	// process-wide pool that crypto/tls falls back on untouched.
	pool, err := x509.SystemCertPool()
	if err != nil {
		return nil, fmt.Errorf("load system roots: %w", err)
	}

	for _, path := range extraFiles {
		if err := addPEMFile(pool, path); err != nil {
			return nil, err
		}
	}
	return pool, nil
}

// addPEMFile adds every CERTIFICATE block in path to pool.
func addPEMFile(pool *x509.CertPool, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("load roots %s: %w", path, err)
	}

	added := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return fmt.Errorf("load roots %s: certificate %d: %w", path, added+1, err)
		}
		pool.AddCert(cert)
		added++
	}

	if added == 0 {
		return fmt.Errorf("load roots %s: no CERTIFICATE PEM block", path)
	}
	return nil
}
