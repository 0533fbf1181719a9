package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteCertsChains(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	if err := writeCerts(dir, now); err != nil {
		t.Fatal(err)
	}
	lab := mustPool(t, filepath.Join(dir, labRootName+".crt"))
	untrusted := mustPool(t, filepath.Join(dir, untrustedRootName+".crt"))
	const tunnel, www = "tunnel.cloudproxy.app", "www.example.test"

	tests := []struct {
		name    string
		leaf    string
		as      string // the name or IP a client checks
		roots   *x509.CertPool
		wantErr func(error) bool // nil: must verify
	}{
		{name: "tunnel by name", leaf: tunnel, as: tunnel, roots: lab},
		{name: "tunnel wildcard", leaf: tunnel, as: "abc.tunnel.cloudproxy.app", roots: lab},
		{name: "tunnel by IPv4", leaf: tunnel, as: "198.19.1.2", roots: lab},
		{name: "tunnel by IPv6", leaf: tunnel, as: "2001:2:0:2::2", roots: lab},
		{name: "www by apex", leaf: www, as: "example.test", roots: lab},
		{name: "www by IPv4", leaf: www, as: "198.19.1.3", roots: lab},
		{
			name: "www wrong name", leaf: www, as: "bad.example.test",
			roots: lab, wantErr: isErr[x509.HostnameError],
		},
		{
			name: "bad untrusted", leaf: "bad.example.test", as: "bad.example.test",
			roots: lab, wantErr: isErr[x509.UnknownAuthorityError],
		},
		{name: "bad own root", leaf: "bad.example.test", as: "198.19.1.4", roots: untrusted},
		{
			name: "expired", leaf: "expired.example.test", as: "expired.example.test",
			roots: lab, wantErr: isErr[x509.CertificateInvalidError],
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf := mustLeaf(t, dir, tt.leaf)
			_, err := leaf.Verify(x509.VerifyOptions{
				DNSName:     tt.as,
				Roots:       tt.roots,
				CurrentTime: now,
			})
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("verify %s as %s: %v", tt.leaf, tt.as, err)
			case tt.wantErr != nil && (err == nil || !tt.wantErr(err)):
				t.Fatalf("verify %s as %s: got error %v, want a different failure",
					tt.leaf, tt.as, err)
			}
		})
	}
}

func TestWriteCertsOverwrites(t *testing.T) {
	dir := t.TempDir()
	for range 2 {
		if err := writeCerts(dir, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, labRootName+".key"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("root.key mode = %v, want 0600", fi.Mode().Perm())
	}
}

func isErr[E error](err error) bool {
	var target E
	return errors.As(err, &target)
}

func mustPool(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s: no certificate", path)
	}
	return pool
}

// mustLeaf loads STEM.crt and STEM.key and checks they belong together.
func mustLeaf(t *testing.T, dir, stem string) *x509.Certificate {
	t.Helper()
	base := filepath.Join(dir, stem)
	pair, err := tls.LoadX509KeyPair(base+".crt", base+".key")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}
