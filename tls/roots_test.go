package tls

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadRootsAddsExtraFiles(t *testing.T) {
	dir := t.TempDir()
	rootA, keyA := mustRoot(t, "lab root a")
	rootB, keyB := mustRoot(t, "lab root b")
	both := writePEM(t, dir, "both.pem", certBlock(rootA), certBlock(rootB))

	pool, err := LoadRoots([]string{both})
	if err != nil {
		t.Fatal(err)
	}
	leaves := []*x509.Certificate{
		mustServerCert(t, rootA, keyA, "a.test").Leaf,
		mustServerCert(t, rootB, keyB, "b.test").Leaf,
	}
	for i, leaf := range leaves {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
			t.Errorf("leaf %d does not verify against the loaded pool: %v", i, err)
		}
	}
}

func TestLoadRootsErrors(t *testing.T) {
	dir := t.TempDir()
	key := mustKey(t)
	noCert := writePEM(t, dir, "key-only.pem", pkcs8Block(t, key))
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct{ name, path, want string }{
		{"no certificate", noCert, "no CERTIFICATE PEM block"},
		{"empty file", empty, "no CERTIFICATE PEM block"},
		{"unreadable", missing, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadRoots([]string{tt.path})
			if err == nil {
				t.Fatal("LoadRoots succeeded")
			}
			if !strings.Contains(err.Error(), tt.path) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want one naming %s and saying %q", err, tt.path, tt.want)
			}
		})
	}
}
