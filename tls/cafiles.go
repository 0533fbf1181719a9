package tls

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
)

// WriteCA writes ca into dir in the layout InitCA creates: ca.crt (PEM),
// ca.key (PEM PKCS#8, mode 0600) and ca.der. It lets a site keep the CA its
// clients already trust, such as one taken over from Squid, under the names
// snigate's configuration expects. Like InitCA it never overwrites a file.
func WriteCA(ca *CA, dir string) error {
	certPath := filepath.Join(dir, caCertFile)
	keyPath := filepath.Join(dir, caKeyFile)
	derPath := filepath.Join(dir, caDERFile)
	for _, path := range []string{certPath, keyPath, derPath} {
		if err := refuseExisting(path); err != nil {
			return err
		}
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return fmt.Errorf("encode ca key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create ca dir %s: %w", dir, err)
	}
	// The key goes first so that a failure never leaves a certificate
	// behind whose key is missing.
	return writeNewFiles([]newFile{
		{keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
		{certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}), 0o644},
		{derPath, ca.Cert.Raw, 0o644},
	})
}
